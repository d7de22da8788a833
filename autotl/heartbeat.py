"""Which process owns a running trial, whether it still lives, and what happens to its trial when not.

Every trial records its owner: host, boot id, PID namespace, PID and the process's start time.
Before each trial a worker fails and queues again (Optuna's ``RetryHeartbeatStaleTrialCallback``):

- at once, the RUNNING trials of a dead process on this very machine: same host, boot and PID
  namespace, and no live process with that PID and start time. A rerun after ``kill -9`` picks its
  trial up immediately, and a PID reused by another process is not mistaken for the owner.
- elsewhere, only a heartbeat that stopped. On an RDB storage, Optuna's own heartbeats do this
  (see :mod:`autotl.storage`): beats and the check both use the database's clock. On a journal
  file, autotl beats (:class:`Heartbeat`) and judges a trial stale once this worker has watched
  its last beat stand still for ``GRACE_BEATS`` of the trial's own recorded intervals. No clock of
  one machine is compared with another's, and no worker judges a trial by an interval of its own.

Two workers may both try to fail a trial; the storage lets only one change its state, and only that
one queues the retry.
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

import optuna

from .storage import (GRACE_BEATS, HEARTBEAT_ATTR, INTERVAL_ATTR, MAX_RETRIES, OWNER_ATTR, RetryStale,
                      uses_optuna_heartbeats)

STALE_REASON = "stale: its worker stopped responding"


def _read(path: str) -> Optional[str]:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (``/proc/PID/stat`` field 22), or None."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _pid_namespace() -> Optional[str]:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


_OWNER: Dict[int, Dict[str, Any]] = {}


def process_owner() -> Dict[str, Any]:
    """This process as a trial's owner: enough to tell, on the same machine, whether it still runs."""
    pid = os.getpid()
    if pid not in _OWNER:
        _OWNER[pid] = {"host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"),
                       "pidns": _pid_namespace(), "pid": pid, "start": _start_ticks(pid)}
    return _OWNER[pid]


def owner_of(pid: int) -> Dict[str, Any]:
    """A child process of this one (a ``--workers`` process) as a trial's owner."""
    return {**process_owner(), "pid": pid, "start": _start_ticks(pid)}


def _same_machine(owner: Any) -> bool:
    me = process_owner()
    return (isinstance(owner, dict) and me["boot"] is not None and me["pidns"] is not None
            and all(owner.get(k) == me[k] for k in ("host", "boot", "pidns")))


def owner_is_dead_here(owner: Any) -> bool:
    """Whether ``owner`` ran on this machine (same host, boot and PID namespace) and is gone: no
    process with its PID, or one started at another time (the PID was reused)."""
    if not _same_machine(owner) or not isinstance(owner.get("pid"), int):
        return False
    start = _start_ticks(owner["pid"])
    return start is None or (owner.get("start") is not None and start != owner["start"])


class Heartbeat:
    """Stamps one running trial every ``every`` seconds from a daemon thread, until stopped
    (journal storages; Optuna beats an RDB storage's trials itself)."""

    def __init__(self, study: optuna.Study, trial_id: int, every: float) -> None:
        self.storage, self.trial_id, self.every = study._storage, trial_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"autotl-heartbeat-{trial_id}", daemon=True)

    def start(self) -> "Heartbeat":
        """Start beating; the trial stores its first beat itself, with its other attributes."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (a no-op if never started)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.storage.set_trial_user_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
            except Exception:  # the trial finished meanwhile, or the storage hiccupped: the next beat retries
                pass


def retries_left(trial: optuna.trial.FrozenTrial) -> bool:
    return len(trial.system_attrs.get("retry_history", [])) < MAX_RETRIES


def fail_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Fail a RUNNING trial with ``reason``; False when another worker finished or failed it first."""
    try:  # the reason first: a finished trial's attributes can no longer change
        study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        return bool(study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL))
    except Exception:
        return False


class Reaper:
    """Fails and requeues the trials of dead workers; one per worker, kept for the whole search (it
    remembers how long it has watched each journal trial's heartbeat stand still)."""

    def __init__(self, study: optuna.Study, interval: float) -> None:
        self.study, self.interval = study, interval
        self.optuna_beats = uses_optuna_heartbeats(study._storage)
        self._watch: Dict[int, Tuple[Any, float]] = {}  # trial id -> (last beat seen, monotonic time first seen)

    def reap(self) -> List[int]:
        """Fail this machine's dead owners' trials, and (journal) those silent too long; requeue them.
        Returns the numbers of the trials this call failed."""
        reaped = []
        running = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        now = time.monotonic()
        self._watch = {t._trial_id: self._watch.get(t._trial_id, (None, now)) for t in running}
        for t in running:
            owner = t.user_attrs.get(OWNER_ATTR)
            if owner_is_dead_here(owner):
                why = f"its process (pid {owner['pid']} on {owner['host']}) is gone"
            elif not self.optuna_beats and self._silent(t, now):
                why = f"no heartbeat for {GRACE_BEATS} of its {self._interval(t):g} s intervals"
            else:
                continue
            reason = f"{STALE_REASON} ({why}); " + ("retried" if retries_left(t) else "not retried: retry cap reached")
            if not fail_trial(self.study, t, reason):
                continue
            reaped.append(t.number)
            self._watch.pop(t._trial_id, None)
            RetryStale()(self.study, self.study._storage.get_trial(t._trial_id))  # as Optuna does on RDB
        return reaped

    def _interval(self, trial: optuna.trial.FrozenTrial) -> float:
        recorded = trial.user_attrs.get(INTERVAL_ATTR)
        return float(recorded) if isinstance(recorded, (int, float)) and recorded > 0 else self.interval

    def _silent(self, trial: optuna.trial.FrozenTrial, now: float) -> bool:
        beat = trial.user_attrs.get(HEARTBEAT_ATTR)
        seen, since = self._watch[trial._trial_id]
        if beat != seen:
            self._watch[trial._trial_id] = (beat, now)
            return False
        return now - since > GRACE_BEATS * self._interval(trial)


def mark_interrupted(study: optuna.Study, owners: Iterable[Dict[str, Any]] = ()) -> List[int]:
    """After Ctrl-C: fail, with the reason ``interrupted``, the RUNNING trials of this very process, and
    of ``owners`` (this command's worker processes, stopped with it). Nobody else's trials."""
    mine = [process_owner(), *owners]
    marked = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get(OWNER_ATTR) in mine and fail_trial(study, t, "interrupted (Ctrl-C)"):
            marked.append(t.number)
    return marked
