"""CLI flags and API options -> a validated :class:`RunConfig` (no torch import)."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Optional, Tuple

from .errors import ConfigError

#: Every metric and its direction.
METRICS = {"accuracy": "maximize", "balanced_accuracy": "maximize", "macro_f1": "maximize", "micro_f1": "maximize",
           "map": "maximize", "mae": "minimize", "rmse": "minimize", "r2": "maximize"}
#: The metrics of each task; the first is its default.
TASK_METRICS = {"multiclass": ("accuracy", "balanced_accuracy", "macro_f1"),
                "multilabel": ("map", "macro_f1", "micro_f1"),
                "regression": ("rmse", "mae", "r2")}
TASKS = ("auto", *TASK_METRICS)
#: How a search holds its splits: see autotl.tensors.TensorCache.
DATA_PATHS = ("auto", "resident", "cache", "stream")
DEFAULT_TRIALS = 20


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``autotl search`` needs, checked once up front.

    ``trials`` and ``timeout`` bound the search (whichever comes first; ``trials`` defaults to
    20 when neither is given). ``epochs`` overrides the space's max epochs per trial.
    """

    data: str
    space: str = "default"
    backbones: Optional[Tuple[str, ...]] = None
    trials: Optional[int] = None  # trials this command runs (as Optuna's n_trials), across its workers
    max_trials: Optional[int] = None  # a cap on the whole study's trials, for array jobs
    timeout: Optional[float] = None
    epochs: Optional[int] = None
    metric: Optional[str] = None  # None: the task's default (or a resumed study's own metric)
    task: str = "auto"
    device: str = "auto"
    out: Optional[str] = None
    seed: int = 0
    study: Optional[str] = None
    storage: Optional[str] = None
    plugins: Tuple[str, ...] = ()
    plugins_dir: Optional[str] = None
    zoo: Optional[str] = None
    blocked_plugins: Tuple[str, ...] = ()
    val_fraction: float = 0.2
    quiet: bool = False
    report: bool = True
    feature_cache: bool = True  # reuse frozen layers' outputs across epochs and trials
    feature_cache_mb: int = 2048  # in-memory bound of the feature cache; the rest spills to the run folder
    data_path: str = "auto"  # auto, resident, cache or stream: how splits are held (autotl.tensors.TensorCache)
    resident_mb: int = 512  # auto keeps a split resident when its float32 tensors fit this many megabytes
    data_cache: Optional[str] = None  # where stored forms are written (default: the run folder's data_cache/)
    compile: bool = False  # torch.compile each trial's network
    default_trials: Optional[int] = None  # the first trials: the default recipe on this many leading backbones
    #                                       (None: the space file's default_trials, else 3)
    workers: int = 1  # worker processes on this machine
    devices: Optional[str] = None  # comma-separated devices, one per worker in turn (cuda:0,cuda:1)
    artifacts: Optional[str] = None  # where best/ is written (default: the run folder); shared by workers
    checkpoint_mb: float = 2048  # disk bound of paused trials' checkpoints (promotion-based search)
    keep_top: int = 1  # models kept in the artifact folder: best/, plus top/trial-N/ for the next best ones
    soup: int = 5  # greedy soup over the best this many trials of the winning backbone and adapter; 0: off
    refit: bool = True  # after the search, train the best setup again on train + validation (refit/);
    #                     on by default: +7 to +8 test points on the benchmark's few-shot tasks
    rank: bool = True  # rank the backbones by transferability first (multiclass), as a prior
    preselect: Optional[int] = None  # search only the K best-ranked backbones
    warm_start: str = "auto"  # auto, off, or an earlier study's name in the history

    def __post_init__(self) -> None:
        _check(isinstance(self.data, str) and self.data.strip() != "", "data", "a folder, a .csv file or builtin:NAME",
               self.data)
        for name in ("trials", "max_trials", "epochs"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                   name, "an int >= 1", value)
        _check(isinstance(self.feature_cache_mb, int) and self.feature_cache_mb >= 0, "feature_cache_mb",
               "an int >= 0 (megabytes)", self.feature_cache_mb)
        _check(self.data_path in DATA_PATHS, "data_path", f"one of {', '.join(DATA_PATHS)}", self.data_path)
        _check(isinstance(self.resident_mb, int) and not isinstance(self.resident_mb, bool) and self.resident_mb >= 0,
               "resident_mb", "an int >= 0 (megabytes; 0 streams every split)", self.resident_mb)
        _check(self.default_trials is None or (isinstance(self.default_trials, int)
               and not isinstance(self.default_trials, bool) and self.default_trials >= 0),
               "default_trials", "an int >= 0, or None for the space's own", self.default_trials)
        _check(isinstance(self.checkpoint_mb, (int, float)) and not isinstance(self.checkpoint_mb, bool)
               and self.checkpoint_mb >= 0, "checkpoint_mb", "a number >= 0 (megabytes)", self.checkpoint_mb)
        _check(isinstance(self.keep_top, int) and not isinstance(self.keep_top, bool) and self.keep_top >= 1,
               "keep_top", "an int >= 1", self.keep_top)
        _check(isinstance(self.soup, int) and not isinstance(self.soup, bool) and self.soup >= 0, "soup",
               "an int >= 0 (0 turns the soup off)", self.soup)
        _check(self.preselect is None or (isinstance(self.preselect, int) and not isinstance(self.preselect, bool)
                                          and self.preselect >= 1), "preselect", "an int >= 1", self.preselect)
        _check(isinstance(self.warm_start, str) and self.warm_start.strip() != "", "warm_start",
               "auto, off, or a study name", self.warm_start)
        _check(isinstance(self.workers, int) and not isinstance(self.workers, bool) and 1 <= self.workers <= 256,
               "workers", "an int from 1 to 256", self.workers)
        _check(self.timeout is None or (isinstance(self.timeout, (int, float)) and self.timeout > 0),
               "timeout", "a number of seconds > 0", self.timeout)
        _check(self.metric is None or self.metric in METRICS, "metric", f"one of {', '.join(METRICS)}", self.metric)
        _check(self.task in TASKS, "task", f"one of {', '.join(TASKS)}", self.task)
        if self.metric is not None and self.task != "auto" and self.metric not in TASK_METRICS[self.task]:
            raise ConfigError(f"metric {self.metric!r} does not apply to a {self.task} task",
                              f"use one of {', '.join(TASK_METRICS[self.task])}")
        _check(isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0, "seed",
               "an int >= 0", self.seed)
        _check(isinstance(self.val_fraction, float) and 0.0 < self.val_fraction < 1.0, "val_fraction",
               "a float in (0, 1)", self.val_fraction)
        _check(self.study is None or bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", self.study)), "study",
               "a name of letters, digits, '.', '_' or '-'", self.study)
        if self.backbones is not None:
            object.__setattr__(self, "backbones", tuple(b.strip() for b in self.backbones if b.strip()) or None)
        object.__setattr__(self, "plugins", tuple(self.plugins))
        object.__setattr__(self, "blocked_plugins", tuple(self.blocked_plugins))

    @property
    def n_trials(self) -> Optional[int]:
        return self.trials if (self.trials is not None or self.timeout is not None) else DEFAULT_TRIALS

    def study_name(self) -> str:
        """``--study``, or the dataset's name with a timestamp so each plain search starts fresh."""
        if self.study:
            return self.study
        stem = dataset_label(self.data)
        return f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"

    def out_dir(self, study: str) -> Path:
        return Path(self.out) if self.out else Path("runs") / study

    @classmethod
    def from_options(cls, data: str, **options: Any) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown option {unknown[0]!r}", f"known options: {', '.join(sorted(known - {'data'}))}")
        if isinstance(options.get("backbones"), str):
            options["backbones"] = tuple(options["backbones"].split(","))
        if isinstance(options.get("plugins"), str):
            options["plugins"] = (options["plugins"],)
        return cls(data=data, **options)


def dataset_label(spec: str) -> str:
    """A short, file-safe name for a data spec."""
    if spec.startswith("builtin:"):
        stem = spec.split(":", 1)[1]
    else:
        path = Path(spec)
        stem = path.stem if spec.lower().endswith(".csv") else (path.resolve().name or "data")
    return re.sub(r"[^A-Za-z0-9_.\-]+", "-", stem).strip("-") or "data"


def _check(ok: bool, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"the {name!r} option must be {expected}; got {got!r} instead",
                          f"pass a valid --{name.replace('_', '-')}")
