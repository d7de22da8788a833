"""The Optuna study: storage, sampler, pruner, and running trials end to end.

Each trial samples params from the space, builds source + adapter, fine-tunes with a report
to Optuna every epoch, and records what it did in the trial's user attrs (JSON only, so any
storage accepts them). A trial that fails is stored as failed with its reason; the search goes
on. The best trial's own weights are written to ``best/`` as soon as it finishes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import optuna

from . import __version__
from .config import RunConfig
from .data import Dataset
from .errors import AutotlError, BuildError, ConfigError, TrialError, warn
from .heartbeat import HEARTBEAT_ATTR, INTERVAL_ATTR, OWNER_ATTR, Heartbeat, process_owner
from .progress import Progress
from .selection import Selection
from .space import Space, TrialParams
from .tasks import Task, direction
from .types import TrialRecord

def make_sampler(space: Space, seed: int, offset: int) -> optuna.samplers.BaseSampler:
    """TPE (default) or random, seeded; ``offset`` (trials already in the study) keeps a resumed
    search from replaying the first run's random startup points."""
    cfg = dict(space.file.sampler)
    name = cfg.pop("name")
    cfg.pop("cover_backbones", None)  # autotl's own: see autotl.defaults.enqueue_backbone_cover
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed + offset)
    return optuna.samplers.TPESampler(seed=seed + offset, **cfg)


def make_pruner(space: Space) -> optuna.pruners.BasePruner:
    """Hyperband over epochs (default), median, or none."""
    cfg = dict(space.file.pruner)
    name = cfg.pop("name")
    if name in ("none", "asha-promotion"):  # asha-promotion pauses trials itself (autotl.promotion)
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(**cfg)
    return optuna.pruners.HyperbandPruner(min_resource=min(space.file.min_epochs, space.epochs),
                                          max_resource=space.epochs, reduction_factor=cfg.get("reduction_factor", 3))


def resolve_metric(config: RunConfig, name: str, storage: Any, task: str) -> str:
    """``--metric``, else a resumed study's own metric, else the task's default; it must fit the task
    and, on resume, the study."""
    from .config import TASK_METRICS

    existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    stored = optuna.load_study(study_name=name, storage=storage).user_attrs.get("metric") if name in existing else None
    metric = config.metric or stored or TASK_METRICS[task][0]
    if metric not in TASK_METRICS[task]:
        raise ConfigError(f"metric {metric!r} does not apply to this {task} data",
                          f"use one of {', '.join(TASK_METRICS[task])}")
    if stored and metric != stored:
        raise ConfigError(f"study {name!r} optimises {stored}, not {metric}", f"pass --metric {stored} or start a new study")
    return metric


#: Environment variables that number the tasks of an array job (Slurm, Kubernetes indexed Jobs, PBS, LSF):
#: separate commands on one study then sample from separate streams, as ``--workers`` processes do.
WORKER_INDEX_VARS = ("AUTOTL_WORKER_INDEX", "SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "PBS_ARRAY_INDEX",
                     "LSB_JOBINDEX")
#: A prime stride between workers' sampler seeds, far from the offsets trial counts add.
WORKER_SEED_STRIDE = 100_003


def worker_index(index: Optional[int] = None) -> int:
    """This worker's number: its ``--workers`` index, else the array-job task index, else 0."""
    if index is not None:
        return index
    for var in WORKER_INDEX_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return 0


def open_study(name: str, storage: Any, space: Space, metric: str, seed: int, worker: int = 0) -> optuna.Study:
    """Create the study (its direction follows the metric), or load it to add trials.

    Workers on several machines may start at once: a creation race (two creators, or PostgreSQL's
    schema race) is retried a few times, after which the study simply exists and is loaded. Each
    ``worker`` samples from its own seed (``seed`` + a stride per worker), so workers that open the
    study at the same moment never draw the same parameters, and a run stays reproducible for a
    given ``--seed`` and worker count.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(5):
        try:
            existing = {s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
            resumed = name in existing
            offset = len(optuna.load_study(study_name=name, storage=storage).trials) if resumed else 0
            study = optuna.create_study(study_name=name, storage=storage, direction=direction(metric),
                                        load_if_exists=True,
                                        sampler=make_sampler(space, seed + WORKER_SEED_STRIDE * worker, offset),
                                        pruner=make_pruner(space))
            break
        except Exception as exc:  # e.g. IntegrityError from two creators at once
            if attempt == 4 or "Integrity" not in type(exc).__name__ and "duplicate" not in str(exc).lower():
                raise
            time.sleep(0.2 + random.random())
    if not resumed:
        study.set_user_attr("autotl_version", __version__)
        study.set_user_attr("metric", metric)
    if study.direction.name.lower() != direction(metric):
        raise ConfigError(f"study {name!r} is a {study.direction.name.lower()} study, but {metric} is "
                          f"{direction(metric)}d", "pass the study's own --metric or start a new study")
    return study


def space_fingerprint(space: Space) -> Dict[str, Any]:
    """What makes two spaces the same search: the file's knobs, the adapters and backbones, the epochs."""
    import hashlib

    knobs = [(p.name, p.kind, p.value, p.low, p.high, p.log, p.step, list(p.choices), sorted(p.when.items()),
              p.optuna_name) for p in space.file.params]
    text = json.dumps([knobs, sorted(space.backbones), list(space.adapters), space.epochs, space.task,
                       dict(space.file.selection)], default=str)
    return {"path": space.file.path, "sha": hashlib.sha256(text.encode()).hexdigest()[:16]}


def check_space(study: optuna.Study, space: Space) -> None:
    """A study is searched with one space: resuming it with another is refused with the way out."""
    mine = space_fingerprint(space)
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", mine)
        study.set_user_attr("selection", Selection.from_section(space.file.selection).as_dict())
    elif stored.get("sha") != mine["sha"]:
        raise ConfigError(f"study {study.study_name!r} was searched with another space ({stored.get('path')}, "
                          f"{stored.get('sha')}); this one is {mine['path']} ({mine['sha']})",
                          "pass the same --space, --backbones and --epochs, or start a new --study")


def _split_identity(split: Any) -> List[str]:
    """Each sample of a split as location-free text: a file by its name within the data folder and its
    size (the same data copied to another node's scratch disk matches), an in-memory sample or a text
    by the split's content digest; with its label."""
    if split is None:
        return []
    items = [str(i) for i in split.items]
    files = getattr(split, "modality", "image") == "image" and all(isinstance(i, (str, Path)) for i in split.items)
    root = os.path.commonpath(items) if files and len(items) > 1 else ""
    out = []
    for item, label in zip(split.items, np.asarray(split.labels).tolist()):
        if files:
            try:
                size = os.path.getsize(item)
            except OSError:
                size = -1
            out.append(f"{os.path.relpath(str(item), root) if root else os.path.basename(str(item))}|{size}|{label}")
        else:
            out.append(f"{split.digest}|{label}")
    return out


def _hash(lines: List[str]) -> str:
    import hashlib

    return hashlib.blake2b("\n".join(lines).encode(), digest_size=8).hexdigest()


def data_fingerprint(dataset: Dataset, seed: int) -> Dict[str, Any]:
    """What makes a resumed study's trials comparable besides the space: the data (every sample and
    label, whatever the split), the validation split, and the seed."""
    splits = [_split_identity(s) for s in (dataset.train, dataset.val, dataset.test)]
    return {"data": _hash(sorted(sum(splits, []))), "val_split": _hash(sorted(splits[1])), "seed": seed}


def check_fingerprint(study: optuna.Study, dataset: Dataset, seed: int) -> None:
    """Resuming a study with other data, another validation split or another seed is refused: its
    trials would not be comparable with those already in it."""
    mine = data_fingerprint(dataset, seed)
    stored = study.user_attrs.get("fingerprint")
    if not isinstance(stored, dict):
        study.set_user_attr("fingerprint", mine)
        return
    name = study.study_name
    if stored.get("data") != mine["data"]:
        raise ConfigError(f"study {name!r} was searched on other data (digest {stored.get('data')}; this data is "
                          f"{mine['data']})", "pass the same data, or start a new --study")
    if stored.get("val_split") != mine["val_split"]:
        raise ConfigError(f"study {name!r} was validated on another split of this data", "pass the same --seed and "
                          "--val-fraction it was started with, or start a new --study")
    if stored.get("seed") != mine["seed"]:
        raise ConfigError(f"study {name!r} was started with --seed {stored.get('seed')}, not {seed}",
                          f"pass --seed {stored.get('seed')}, or start a new --study")


def set_trial_attrs(trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
    """Store several user attributes of a running trial, each under its own key exactly as
    ``trial.set_user_attr`` would, in as few storage writes as the storage allows.

    On a journal file (the default storage) every ``set_user_attr`` is one locked, fsync'ed append,
    about a millisecond each; here all of them are one append. Other storages get one write per key.
    """
    if not attrs:
        return
    if not _append_journal_attrs(trial.storage, trial._trial_id, attrs):
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        return
    cached = getattr(trial, "_cached_frozen_trial", None)  # what trial.user_attrs reads
    if cached is not None:
        cached.user_attrs.update(attrs)


def _append_journal_attrs(storage: Any, trial_id: int, attrs: Mapping[str, Any]) -> bool:
    """The log lines ``JournalStorage.set_trial_user_attr`` writes, one per key, in one append; False
    when ``storage`` is not a plain journal storage of the layout this was written against."""
    from optuna.storages import JournalStorage

    if type(storage) is not JournalStorage:
        return False
    try:
        from optuna.storages.journal._storage import JournalOperation

        op, lock, backend, replay = (JournalOperation.SET_TRIAL_USER_ATTR, storage._thread_lock, storage._backend,
                                     storage._replay_result)
        sync = storage._sync_with_backend
    except (ImportError, AttributeError):
        return False
    with lock:
        worker = replay.worker_id
        backend.append_logs([{"op_code": op, "worker_id": worker, "trial_id": trial_id, "user_attr": {key: value}}
                             for key, value in attrs.items()])
        sync()
    return True


def _json(value: Any) -> Any:
    """JSON-safe user-attr values: persistent storages reject numpy scalars."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, AutotlError):
        return str(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def stale_reasons(trials: List[optuna.trial.FrozenTrial]) -> Dict[int, str]:
    """The failure reason of trials Optuna's heartbeat check failed (an RDB storage's stale trials,
    which carry no reason of their own): each names its retry, if it got one."""
    from .heartbeat import STALE_REASON

    retried_as = {t.system_attrs["retry_history"][-1]: t.number for t in trials if t.system_attrs.get("retry_history")}
    return {t.number: f"{STALE_REASON} (no heartbeat within the grace period); " + (
        f"retried as trial {retried_as[t.number]}" if t.number in retried_as else "not retried: retry cap reached")
        for t in trials if t.state == optuna.trial.TrialState.FAIL and not t.user_attrs.get("fail_reason")
        and OWNER_ATTR in t.user_attrs}


def trial_record(study_name: str, t: optuna.trial.FrozenTrial, maximize: bool = True,
                 fail_reason: Optional[str] = None) -> TrialRecord:
    """A :class:`TrialRecord` from a stored trial; a pruned trial's value is its best epoch's."""
    ua = t.user_attrs
    state = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "pruned",
             optuna.trial.TrialState.FAIL: "fail"}.get(t.state, t.state.name.lower())
    curve = list(ua.get("curve") or [t.intermediate_values[k] for k in sorted(t.intermediate_values)])
    value = t.value if t.state == optuna.trial.TrialState.COMPLETE else (
        (max(curve) if maximize else min(curve)) if curve else None)
    return TrialRecord(study=study_name, number=t.number, state=state, value=value,
                       params=dict(ua.get("params", t.params)), backbone=ua.get("backbone", t.params.get("backbone")),
                       adapter=ua.get("adapter", t.params.get("adapter")), curve=curve,
                       epochs_run=int(ua.get("epochs_run", len(t.intermediate_values))), seconds=float(ua.get("seconds", 0.0)),
                       fail_reason=ua.get("fail_reason") or fail_reason)


@dataclass
class TrialRunner:
    """The objective: one trial from sampled params to a stored result and, if best, ``best/``."""

    config: RunConfig
    space: Space
    dataset: Dataset
    task: Task
    metric: str
    plugins: Any
    device: Any
    tensors: Any
    on_best: Callable[[int, float, TrialParams, Any, Dict[str, Any]], None]
    progress: Progress = field(default_factory=Progress)
    features: Any = None  # a FeatureCache shared by the search's trials, or None
    heartbeat_s: float = 20.0  # the study's heartbeat interval (autotl.storage.study_heartbeat)
    artifacts: Optional[Path] = None  # the artifact folder (paused trials' checkpoints live there)
    broken: Dict[str, str] = field(default_factory=dict)  # source -> why its build failed in this search
    # The trial that just returned its value: offered to best/ once Optuna has stored it as COMPLETE.
    finished: Optional[tuple] = None
    # May this trial start? Asked before anything is sampled; a worker's budget decides (driver.run_here).
    admit: Optional[Callable[[optuna.Trial], bool]] = None

    def _fit(self, trial: optuna.Trial, model: Any, params: TrialParams) -> Any:
        from .tensors import Augmentation
        from .trainer import fit

        train = self.tensors.train(self.dataset.train, model.data_config, Augmentation.from_params(params),
                                   pin_memory=self.device.type == "cuda")
        val = self.tensors.get(self.dataset.val, model.data_config)
        epochs = self.space.epochs
        reporter = _Unprunable(trial) if trial.user_attrs.get("never_pruned") else trial
        resume, pause_at = self._pausing(trial)
        try:
            result = fit(model, train, val, params, epochs=epochs, metric=self.metric, task=self.task,
                         labels=list(self.dataset.classes), device=self.device, seed=self.fit_seed(trial),
                         reporter=reporter, feature_cache=self.features, compile=self.config.compile,
                         selection=Selection.from_section(self.space.file.selection),
                         on_epoch=lambda epoch, value, _loss: self.progress.epoch_finished(trial.number, epoch + 1,
                                                                                           epochs, value),
                         pause_at=pause_at, resume=resume)
        finally:
            for split in (train, val):
                if hasattr(split, "close"):
                    split.close()  # stop loader workers now, not whenever the set is collected
        result.data = _json(data_facts(self.tensors, model.data_config, self.dataset, train, val, result))
        return result

    def fit_seed(self, trial: optuna.Trial) -> int:
        """The seed a trial trains (and initialises) with: ``--seed`` plus the number of its lineage's
        first trial, so a continuation draws exactly what its never-paused self would have."""
        from .promotion import lineage

        return self.config.seed + lineage(trial)

    def _pausing(self, trial: optuna.Trial) -> tuple:
        """Promotion-based search: the checkpoint a continuation resumes (its inherited epochs reported
        to Optuna first), and the rung this trial pauses at (none for the default recipe's trials)."""
        from .promotion import RESUME_ATTR, load_checkpoint, rungs_for

        rungs = rungs_for(self.space)
        if rungs is None or self.artifacts is None:
            return None, None
        resume = None
        if trial.user_attrs.get(RESUME_ATTR):
            resume = load_checkpoint(trial.user_attrs[RESUME_ATTR], self.artifacts)
            for epoch, value in enumerate(resume.history["curve"][:resume.epoch]):
                trial.report(value, epoch + 1)
        done = resume.epoch if resume is not None else 0
        return resume, None if trial.user_attrs.get("never_pruned") else rungs.next_pause(done)

    def __call__(self, trial: optuna.Trial) -> float:
        import torch

        from .model import build_model

        start = time.perf_counter()
        model = result = oom = None
        # The user attributes go to the storage in two batches (see set_trial_attrs): what the trial is,
        # once it is sampled, and what it did, when it ends.
        # Who runs it (a rerun on this machine requeues a dead owner's trial at once), and its heartbeat:
        # autotl's own on a journal file; Optuna's on an RDB storage (autotl.storage).
        attrs: Dict[str, Any] = {"pid": os.getpid(), OWNER_ATTR: process_owner(), INTERVAL_ATTR: self.heartbeat_s,
                                 "seed": self.fit_seed(trial)}
        from .storage import uses_optuna_heartbeats

        beat = None if uses_optuna_heartbeats(trial.storage) else Heartbeat(trial.study, trial._trial_id,
                                                                            self.heartbeat_s)
        try:
            if self.admit is not None and not self.admit(trial):
                from .promotion import NOT_RUN_ATTR

                attrs[NOT_RUN_ATTR] = True
                raise TrialError("not run: this command's --trials were spent when Optuna handed this worker a "
                                 "new trial (another worker had taken the continuation it queued)",
                                 "nothing to do: the trial sampled nothing and is left out of every count")
            params = self.space.suggest(trial)
            attrs.update(backbone=params.backbone, adapter=params.adapter, params=_json(params.as_dict()),
                         max_epochs=self.space.epochs, device=str(self.device))
            if beat is not None:
                attrs[HEARTBEAT_ATTR] = time.time()  # the first beat rides with them
            set_trial_attrs(trial, attrs)
            attrs = {}
            if beat is not None:
                beat.start()
            self.progress.trial_started(trial.number, params.backbone, self.space.epochs)
            source = self.plugins.sources.get(params.backbone)
            adapter = self.plugins.adapters.get(params.adapter)
            torch.manual_seed(self.fit_seed(trial))
            if params.backbone in self.broken:  # fail fast: e.g. no network would cost a minute per trial
                raise TrialError(f"skipped: {self.broken[params.backbone]}",
                                 "fix it, or exclude it with --backbones")
            try:
                model = build_model(source, adapter, self.task.num_outputs(self.dataset.classes), params.adapter_params,
                                    data_knobs=params.data_knobs())
            except BuildError as exc:
                self.broken[params.backbone] = f"{exc.what} (trial {trial.number})"
                raise
            try:
                result = self._fit(trial, model, params)
            except Exception as exc:
                if not _is_oom(exc) or params.batch_size < 2:
                    raise
                oom = {"batch_size": params.batch_size, "retried_at": params.batch_size // 2}
            if oom is not None:
                # Out of memory: retry once at half the batch size, from freshly built weights. Only now, outside
                # the except block: the exception, its traceback and the frames it holds (the failed attempt's
                # activations, optimizer and batch) are gone, and so is the model once dropped here.
                model = None
                _free(self.device)
                set_trial_attrs(trial, {"oom_retry": oom})
                params = dataclasses.replace(params, batch_size=oom["retried_at"])
                torch.manual_seed(self.fit_seed(trial))
                model = build_model(source, adapter, self.task.num_outputs(self.dataset.classes), params.adapter_params,
                                    data_knobs=params.data_knobs())
                result = self._fit(trial, model, params)
            attrs.update(feature_cache=result.feature_cache, curve=_json(result.curve),
                         val_details=_json(result.val_details), data=result.data)
            if result.lp_epochs:
                attrs["lp_epochs"] = result.lp_epochs
            if params.drop_path > 0:
                attrs["drop_path_blocks"] = result.drop_path_slots
            attrs.update(train_loss=_json(result.train_loss), epochs_run=result.epochs_run,
                         best_epoch=result.best_epoch + 1, val_loss=_json(result.val_loss),
                         selected_epoch=result.selected_epoch + 1)
            if result.pruned:
                raise optuna.TrialPruned(f"pruned after epoch {result.epochs_run}")
            if result.paused:
                from .promotion import CHECKPOINT_ATTR, PAUSED_ATTR, save_checkpoint

                attrs.update({PAUSED_ATTR: result.epochs_run,
                              CHECKPOINT_ATTR: save_checkpoint(trial, result.checkpoint, self.artifacts)})
                raise optuna.TrialPruned(f"paused after epoch {result.epochs_run}")
            value = float(result.score)
            if not math.isfinite(value):
                raise AutotlError(f"the validation {self.metric} is {value}", "check the validation data")
            self.finished = (trial.number, value, params, model, result.state_dict)
            return value
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            attrs["fail_reason"] = "interrupted (Ctrl-C)"
            raise
        except Exception as exc:
            if _is_oom(exc):
                tried = f" at batch_size {oom['batch_size']} and {oom['retried_at']}" if oom else ""
                reason = f"out of memory on {self.device}{tried}: {_one_line(exc)} (narrow batch_size in the space)"
            else:
                reason = _one_line(exc)
            attrs["fail_reason"] = reason[:2000]
            raise
        finally:
            if beat is not None:
                beat.stop()
            attrs["seconds"] = round(time.perf_counter() - start, 3)
            set_trial_attrs(trial, attrs)
            # The model goes here; a garbage collection after the trial (run_one_trial) frees what cycles hold.
            del model, result

    def publish(self, frozen: optuna.trial.FrozenTrial) -> None:
        """Offer the trial Optuna has just stored to ``best/`` (only a COMPLETE one, never before)."""
        finished, self.finished = self.finished, None
        if finished is None or finished[0] != frozen.number or frozen.state != optuna.trial.TrialState.COMPLETE:
            return
        try:
            self.on_best(*finished)
        except Exception as exc:  # a finished trial is never failed by its export
            warn(f"trial {frozen.number}: could not write best/: {_one_line(exc)}",
                 "free space or fix the permissions of the artifact folder (--artifacts); the trial is kept, "
                 "and best/ still holds the previous best")


def data_facts(tensors: Any, data_config: Any, dataset: Any, train: Any, val: Any, result: Any) -> Dict[str, Any]:
    """How a trial's data was held and read: the path, the training throughput, and the samples
    found unreadable after loading (while decoding or streaming)."""
    seconds = sum(result.epoch_train_seconds)
    late = sorted(set(tensors.skipped) | set(getattr(train, "failed", {}).values())
                  | set(getattr(val, "failed", {}).values()))
    return {"path": tensors.mode(dataset.train, data_config), "val_path": tensors.mode(dataset.val, data_config),
            "train_images_per_s": round(result.train_samples / seconds, 2) if seconds > 0 else None,
            "epoch_train_seconds": [round(s, 4) for s in result.epoch_train_seconds],
            "skipped": len(late), "skipped_examples": late[:100]}


class _Unprunable:
    """Reports every epoch to the trial but never stops it (the first default-recipe trial)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)

    def should_prune(self) -> bool:
        return False


def _is_oom(exc: BaseException) -> bool:
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()[:200]


def _free(device: Any) -> None:
    """Free what a finished (or failed) attempt left: cycles through the garbage collector, then
    CUDA's cached blocks. Cheap during a search, whose long-lived objects are frozen (steady_heap)."""
    gc.collect()
    if getattr(device, "type", "") == "cuda":
        import torch

        torch.cuda.empty_cache()


def best_other_value(study: optuna.Study, number: int) -> Optional[float]:
    """The best complete value among the study's other trials (in the study's direction), or None."""
    values = [t.value for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
              if t.number != number and t.value is not None]
    if not values:
        return None
    return max(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(values)


def run_one_trial(study: optuna.Study, runner: "TrialRunner", on_trial: Callable[[TrialRecord], None],
                  deadline: Optional[float] = None) -> None:
    """One trial through ``study.optimize``; a failed trial is recorded and the search goes on."""

    def callback(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        from .promotion import NOT_RUN_ATTR

        if NOT_RUN_ATTR in frozen.user_attrs:
            return  # never ran: no record, no progress line
        runner.publish(frozen)  # Optuna has stored the trial's state: only now may it become best/
        on_trial(trial_record(study.study_name, frozen, study.direction == optuna.study.StudyDirection.MAXIMIZE))

    timeout = max(0.0, deadline - time.time()) if deadline is not None else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        try:
            study.optimize(runner, n_trials=1, timeout=timeout, catch=(Exception,), callbacks=[callback],
                           gc_after_trial=False)
        finally:
            runner.finished = None
    # Here, not inside the trial: a failed trial's exception (with the frames of its model and batches)
    # is only released once study.optimize has recorded it.
    _free(runner.device)


@contextlib.contextmanager
def steady_heap():
    """Freeze the objects that live for the whole search (imported modules, plugins, data) so that the
    garbage collection after each trial looks only at what trials create: ~0.4 s per trial down to a
    few milliseconds. They are unfrozen at the end; a process that froze its own heap is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def records(study: optuna.Study) -> List[TrialRecord]:
    """A record per finished trial; a paused trial whose lineage went on is left out (its continuation
    holds the whole curve)."""
    from .promotion import lineages, visible

    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    everything = study.get_trials(deepcopy=False)
    trials, chains = visible(everything), lineages(everything)
    stale = stale_reasons(trials)
    return [dataclasses.replace(trial_record(study.study_name, t, maximize, stale.get(t.number)),
                                lineage=tuple(chains.get(t.number, ()))) for t in trials
            if t.state != optuna.trial.TrialState.RUNNING and t.state != optuna.trial.TrialState.WAITING]
