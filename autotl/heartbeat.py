"""Heartbeats for running trials, and a reaper that fails and retries the trials of dead workers.

Optuna's own heartbeats exist only for RDB storages and only inside ``study.optimize``; autotl's
default storage is a journal file, and a worker killed with ``kill -9`` would leave its trial
RUNNING forever. So autotl uses one mechanism for every storage: while a trial runs, a background
thread stamps its ``heartbeat`` user attribute every ``interval`` seconds. Before each trial, a
worker looks for RUNNING trials whose last stamp (or start, if none) is older than ``grace``
seconds, fails them with a one-line reason, and queues the same params again, up to ``max_retries``
times per original trial. Two workers may both try to reap a trial; the storage lets only one
change its state, and only that one queues the retry.
"""
from __future__ import annotations

import datetime as _dt
import os
import threading
import time
from typing import Any, List, Optional

import optuna

HEARTBEAT_ATTR = "heartbeat"
#: Seconds between heartbeats; ``AUTOTL_HEARTBEAT_S`` overrides it (tests use 1).
DEFAULT_INTERVAL = 20.0
MAX_RETRIES = 2


def interval() -> float:
    try:
        return max(0.2, float(os.environ.get("AUTOTL_HEARTBEAT_S", DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


class Heartbeat:
    """Stamps one running trial every ``every`` seconds from a daemon thread, until stopped."""

    def __init__(self, study: optuna.Study, trial_id: int, every: Optional[float] = None) -> None:
        self.storage, self.trial_id = study._storage, trial_id
        self.every = every or interval()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"autotl-heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self, beat_now: bool = True) -> "Heartbeat":
        """Start beating; ``beat_now=False`` when the caller has just stored a beat itself (autotl's
        trials store the first one with their other attributes, in one write)."""
        if beat_now:
            self._beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating (a no-op if never started)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _beat(self) -> None:
        try:
            self.storage.set_trial_user_attr(self.trial_id, HEARTBEAT_ATTR, time.time())
        except Exception:  # the trial finished meanwhile, or the storage hiccupped: the next beat retries
            pass

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self._beat()


def _last_sign_of_life(trial: optuna.trial.FrozenTrial) -> float:
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if isinstance(beat, (int, float)):
        return float(beat)
    start = trial.datetime_start or _dt.datetime.now()
    return start.timestamp()


def reap_stale_trials(study: optuna.Study, grace: Optional[float] = None,
                      max_retries: int = MAX_RETRIES) -> List[int]:
    """Fail the RUNNING trials nobody has heard from for ``grace`` seconds; queue their retries.

    Returns the numbers of the trials this call failed.
    """
    grace = grace if grace is not None else 3 * interval()
    now = time.time()
    reaped = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        silent = now - _last_sign_of_life(t)
        if silent < grace:
            continue
        reason = (f"stale: its worker stopped responding (no heartbeat for {silent:.0f} s); "
                  f"{'retried' if t.user_attrs.get('retries', 0) < max_retries else 'not retried: retry cap reached'}")
        try:  # the reason first: a finished trial's attributes can no longer change
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", reason)
            if not study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except Exception:  # another worker got there first
            continue
        reaped.append(t.number)
        retries = int(t.user_attrs.get("retries", 0))
        if retries < max_retries and t.params:
            attrs = {"retry_of": t.user_attrs.get("retry_of", t.number), "retries": retries + 1}
            if t.user_attrs.get("origin"):
                attrs["origin"] = t.user_attrs["origin"]
            study.enqueue_trial(dict(t.params), user_attrs=attrs)
    return reaped
