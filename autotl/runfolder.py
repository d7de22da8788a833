"""The run folder: ``summary.json``, ``trials.csv``, and the best trial's test score.

Everything here is read back from the study, so the folder can be rebuilt from the storage at
any time and always agrees with it.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import optuna

from . import __version__
from .bestmodel import best_model_config, best_model_trial
from .export import BEST_DIR
from .types import TrialRecord

SUMMARY_NAME = "summary.json"
TRIALS_NAME = "trials.csv"
TEST_ATTR = "test_scores"


def model_key(trial: Any, soup: Optional[Dict[str, Any]] = None) -> str:
    """Which model a cached test score belongs to: a trial's own weights, or a kept soup led by it."""
    kept = bool(soup) and soup.get("kept", True) and int(soup["trials"][0]) == int(trial)
    return f"{trial}" + (f"+soup:{','.join(map(str, soup['trials']))}" if kept else "")


def score_test_split(study: optuna.Study, out_dir: Path, dataset: Any, device: Any, plugins: Any,
                     task: Any = None, tensors: Any = None) -> Optional[Dict[str, Any]]:
    """Score the best trial on the test split, once: the result is kept in the study's user attrs.
    ``tensors`` is the search's data path (the test split is then held like the others)."""
    if dataset.test is None:
        return None
    try:
        best = study.best_trial
    except ValueError:
        return None
    config = best_model_config(out_dir, study.study_name)
    if best_model_trial(out_dir, study.study_name) != best.number:
        return None
    key = model_key(config["trial"], config.get("soup"))
    cached = study.user_attrs.get(TEST_ATTR, {})
    if key in cached:
        return cached[key]
    from .export import load_model
    from .tensors import TensorCache
    from .trainer import evaluate

    module, config = load_model(str(out_dir / BEST_DIR), plugins)
    tensors = tensors if tensors is not None else TensorCache(task)
    scores = evaluate(module, tensors.get(dataset.test, config["data_config"]), device,
                      task, list(dataset.classes))
    study.set_user_attr(TEST_ATTR, {**cached, key: scores})
    return scores


def summarize(study: optuna.Study, records: List[TrialRecord], *, out_dir: Path, metric: str, elapsed_s: float,
              test: Optional[Dict[str, Any]], extra: Dict[str, Any]) -> Dict[str, Any]:
    """The ``summary.json`` document."""
    counts = {"complete": 0, "pruned": 0, "fail": 0}
    for r in records:
        if r.state in counts:
            counts[r.state] += 1
    best_entry = None
    complete = [r for r in records if r.state == "complete" and r.value is not None]
    if complete:
        best = study.best_trial
        rec = next(r for r in complete if r.number == best.number)
        has_model = best_model_trial(out_dir, study.study_name) == best.number
        model_config = best_model_config(out_dir, study.study_name) if has_model else None
        best_entry = {
            "trial": best.number, "value": best.value, "params": dict(rec.params), "backbone": rec.backbone,
            "adapter": rec.adapter, "epochs_run": rec.epochs_run,
            "test": {k: v for k, v in test.items() if k not in ("confusion_matrix", "details")} if test else None,
            "test_confusion_matrix": test.get("confusion_matrix") if test else None,
            "model_dir": str(out_dir / BEST_DIR) if has_model else None,
            "selected_epoch": best.user_attrs.get("selected_epoch"),
            "soup": (model_config or {}).get("soup"),
            "val_test_gap": _gap(best.value, (model_config or {}).get("soup"), test, metric),
        }
    from .refit import stored_refit

    return {
        "study": study.study_name, "metric": metric, "direction": study.direction.name.lower(),
        "selection": study.user_attrs.get("selection"), "best": best_entry,
        "refit": stored_refit(study, out_dir),
        "trials": counts, "elapsed_s": round(elapsed_s, 3),
        "epochs_total": int(sum(r.epochs_run for r in records)),
        "autotl_version": __version__, **extra,
    }


def _gap(value: Optional[float], soup: Optional[Dict[str, Any]], test: Optional[Dict[str, Any]],
         metric: str) -> Optional[float]:
    """Validation minus test score of the exported model (the soup's own validation score when it is one)."""
    val = soup["val"] if soup else value
    if val is None or not test or not isinstance(test.get(metric), (int, float)):
        return None
    return float(val) - float(test[metric])


def write_trials_csv(path: Path, records: List[TrialRecord]) -> None:
    """One row per trial: state, value, every param, epochs run, seconds, failure reason."""
    keys: List[str] = []
    for r in records:
        keys += [k for k in r.params if k not in keys]
    header = ["number", "state", "value", "backbone", "adapter", *[k for k in keys if k not in ("backbone", "adapter")],
              "epochs_run", "seconds", "fail_reason", "lineage"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        for r in records:
            writer.writerow({"number": r.number, "state": r.state, "value": r.value, "backbone": r.backbone,
                             "adapter": r.adapter, **{k: v for k, v in r.params.items() if k in header},
                             "epochs_run": r.epochs_run, "seconds": round(r.seconds, 3),
                             "fail_reason": r.fail_reason or "",
                             "lineage": ">".join(map(str, r.lineage))})


def write_summary(out_dir: Path, summary: Dict[str, Any]) -> None:
    """``summary.json``, replaced in one step (a reader never sees half of it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{SUMMARY_NAME}.tmp"
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    tmp.replace(out_dir / SUMMARY_NAME)


def write_run_folder(out_dir: Path, summary: Dict[str, Any], records: List[TrialRecord]) -> None:
    write_summary(out_dir, summary)
    write_trials_csv(out_dir / TRIALS_NAME, records)

