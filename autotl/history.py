"""Warm starts: remember what won in earlier searches, and start new searches from the closest ones.

Each finished search appends one line to a local history file (``AUTOTL_HISTORY``, by default
``~/.cache/autotl/history.jsonl``): the dataset's meta-features (task, train images, classes, image
size, channels, and the ranking's LogME score per backbone) and its best trials' params. A new search
with ``--warm-start auto`` finds the most similar earlier search of the same task and queues its best
setups whose backbones are still registered and in the space; ``--warm-start STUDY`` takes that study;
``off`` turns it off. Like Quick-Tune's meta-learning, this is a prior for the search, not a filter.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import optuna

DEFAULT_PATH = "~/.cache/autotl/history.jsonl"
TOP_TRIALS = 3
#: ``auto`` takes an earlier search only this close (about a 2.7x difference in size, or rankings that
#: disagree): in benchmarks/RESULTS.md, warm starts from clearly different tasks lowered accuracy.
MAX_DISTANCE = 1.0


def history_path() -> Path:
    return Path(os.environ.get("AUTOTL_HISTORY") or DEFAULT_PATH).expanduser()


def meta_features(dataset: Any, ranking: Any = None) -> Dict[str, Any]:
    """What describes a target for similarity: its task, size, classes, image size, and LogME per source."""
    import numpy as np

    from .modality import IMAGE, UNREADABLE

    sides = []
    for item in (dataset.train.items[:500] if getattr(dataset, "modality", "image") == "image" else ()):
        try:
            w, h = IMAGE.size(item)
            sides.append(math.sqrt(w * h))
        except UNREADABLE:
            continue
    return {"task": dataset.task, "n_train": len(dataset.train), "n_classes": len(dataset.classes),
            "image_side": float(np.median(sides)) if sides else 0.0, "channels": 3,
            "logme": {name: s["logme"] for name, s in (ranking.scores.items() if ranking else [])}}


def read_history(path: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Every readable entry; a damaged line is skipped, never fatal."""
    path = path or history_path()
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("trials"):
            entries.append(entry)
    return entries


def record_search(study: optuna.Study, meta: Dict[str, Any], metric: str, path: Optional[Path] = None) -> bool:
    """Append this study's meta-features and its best trials to the history (atomic line append)."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None]
    if not done:
        return False
    done.sort(key=lambda t: (-t.value if maximize else t.value, t.number))
    entry = {"study": study.study_name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "metric": metric, "meta": meta,
             "trials": [{"params": dict(t.params), "value": t.value} for t in done[:TOP_TRIALS]]}
    path = path or history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:  # one write of one line: appends from several processes do not interleave
        fh.write(json.dumps(entry, default=str) + "\n")
    return True


def distance(a: Dict[str, Any], b: Dict[str, Any]) -> float:
    """How unlike two targets are: sizes on a log scale, plus disagreement of their source rankings."""
    def logs(m: Dict[str, Any]) -> List[float]:
        return [math.log1p(float(m.get("n_train", 0))), math.log1p(float(m.get("n_classes", 0))),
                math.log1p(float(m.get("image_side", 0)))]

    d = math.sqrt(sum((x - y) ** 2 for x, y in zip(logs(a), logs(b))))
    common = sorted(set(a.get("logme", {})) & set(b.get("logme", {})))
    if len(common) >= 2:
        from .scores import kendall_tau

        tau = kendall_tau([a["logme"][n] for n in common], [b["logme"][n] for n in common])
        d += (1.0 - tau) / 2.0
    return d


def choose(entries: List[Dict[str, Any]], meta: Dict[str, Any], mode: str) -> Optional[Dict[str, Any]]:
    """The earlier search to start from: a named study, or the most similar one of the same task."""
    if mode == "off" or not entries:
        return None
    if mode != "auto":
        named = [e for e in entries if e.get("study") == mode]
        return named[-1] if named else None
    same = [e for e in entries if e.get("meta", {}).get("task") == meta.get("task")
            and distance(e["meta"], meta) <= MAX_DISTANCE]
    return min(same, key=lambda e: distance(e["meta"], meta)) if same else None


def enqueue_warm_start(study: optuna.Study, space: Any, plugins: Any, mode: str, meta: Dict[str, Any],
                       path: Optional[Path] = None) -> List[Dict[str, Any]]:
    """Queue the chosen earlier search's best setups (registered backbones in this space only)."""
    from .defaults import project_params
    from .errors import ConfigError

    if mode == "off" or study.trials and any(t.user_attrs.get("origin", "").startswith("warm start")
                                             for t in study.trials):
        return []
    entries = [e for e in read_history(path) if e.get("study") != study.study_name]
    entry = choose(entries, meta, mode)
    if entry is None:
        if mode not in ("auto", "off"):
            raise ConfigError(f"--warm-start {mode}: no such study in {path or history_path()}",
                              "use auto, off, or the name of a finished search")
        return []
    queued = []
    for trial in entry["trials"]:
        backbone = trial["params"].get("backbone")
        if backbone not in plugins.sources or backbone not in space.backbones:
            continue  # no longer registered, or not in this search's space
        params = project_params(space, backbone, trial["params"])
        study.enqueue_trial(params, user_attrs={"origin": f"warm start: {entry['study']}"}, skip_if_exists=True)
        queued.append(params)
    return queued
