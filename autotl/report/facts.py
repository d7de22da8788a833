"""A study -> the report's facts, as plain JSON-able data (what ``report.json`` holds).

Everything is read from the Optuna storage: the trials, their intermediate values and autotl's
user attrs. So a report can be built for any autotl study in any storage, from any machine,
while workers are still adding trials, and it always agrees with the storage.
"""
from __future__ import annotations

import datetime as _dt
import statistics
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import optuna

from .. import __version__
from ..bestmodel import best_model_trial
from ..export import BEST_DIR
from ..runfolder import TEST_ATTR, model_key
from ..storage import mask_url
from ..promotion import visible
from ..study import stale_reasons, trial_record
from ..types import TrialRecord

#: Columns of the leaderboard besides the params listed under "other".
LEADING_PARAMS = ("backbone", "adapter", "freeze_depth", "head_lr")
#: Params that describe how the backbone's learning rate is set; shown as one column.
BACKBONE_LR_PARAMS = ("backbone_lr", "backbone_lr_mult", "layer_decay")
#: Optuna's importance evaluators the report runs, by the name the report shows.
IMPORTANCE_EVALUATORS = ("PED-ANOVA", "fANOVA")


def _iso(value: Optional[_dt.datetime]) -> Optional[str]:
    return value.isoformat(timespec="seconds") if value else None


def backbone_lr_text(params: Dict[str, Any]) -> str:
    """How the backbone's learning rate was set, in a few characters: ``x0.1`` or ``decay 0.75``."""
    mode = params.get("backbone_lr")
    if mode == "layer_decay" and params.get("layer_decay") is not None:
        return f"decay {params['layer_decay']:.3g}"
    if params.get("backbone_lr_mult") is not None:
        return f"x{params['backbone_lr_mult']:.3g}"
    return "—"


def leaderboard_rows(records: List[TrialRecord], maximize: bool) -> List[Dict[str, Any]]:
    """Every completed trial, best first (ties: the earlier trial first)."""
    done = [r for r in records if r.state == "complete" and r.value is not None]
    done.sort(key=lambda r: ((-r.value if maximize else r.value), r.number))
    rows = []
    for rank, r in enumerate(done, 1):
        params = dict(r.params)
        other = {k: v for k, v in params.items() if k not in LEADING_PARAMS + BACKBONE_LR_PARAMS and v is not None}
        rows.append({"rank": rank, "trial": r.number, "backbone": r.backbone, "adapter": r.adapter,
                     "freeze_depth": params.get("freeze_depth"), "head_lr": params.get("head_lr"),
                     "backbone_lr": backbone_lr_text(params), "other": other, "value": r.value,
                     "epochs_run": r.epochs_run, "seconds": round(r.seconds, 3), "params": params})
    return rows


def row_params(row: Dict[str, Any]) -> Dict[str, Any]:
    """A leaderboard row's params with its backbone and adapter, which a plain Optuna study may lack."""
    return {"backbone": row["backbone"], "adapter": row["adapter"], **row["params"]}


def leaderboard_split(rows: List[Dict[str, Any]]) -> Tuple[List[str], Dict[str, Any]]:
    """The params that vary between ``rows`` (the table's columns) and those every row shares.

    A table that repeats the same value in every row hides what the search actually tried, so the
    report shows the shared params once, above the table. A param that is None (or absent) in some
    rows and set in others varies; one that is None everywhere is in neither. Columns come in the
    order: leading params, backbone learning-rate params, then the rest as the trials first set them.
    """
    names: List[str] = list(LEADING_PARAMS + BACKBONE_LR_PARAMS)
    for row in rows:
        names += [k for k in row["params"] if k not in names]
    columns: List[str] = []
    fixed: Dict[str, Any] = {}
    for name in names:
        values = [row_params(row).get(name) for row in rows]
        if all(v is None for v in values):
            continue
        if all(v == values[0] for v in values):
            fixed[name] = values[0]
        else:
            columns.append(name)
    return columns, fixed


def _importances(study: optuna.Study, n_complete: int) -> Dict[str, Any]:
    """Each evaluator's importances, or why it could not run."""
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    out: Dict[str, Any] = {}
    makers = {"PED-ANOVA": PedAnovaImportanceEvaluator, "fANOVA": lambda: FanovaImportanceEvaluator(seed=0)}
    for name in IMPORTANCE_EVALUATORS:
        if n_complete < 2:
            out[name] = {"error": f"needs at least 2 completed trials, the study has {n_complete}"}
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values = optuna.importance.get_param_importances(study, evaluator=makers[name]())
            out[name] = {"values": {k: float(v) for k, v in values.items()}}
            if not values:
                out[name]["error"] = "no parameter varied across the completed trials"
        except Exception as exc:  # an evaluator that cannot run on this study is reported, not fatal
            out[name] = {"error": " ".join(f"{type(exc).__name__}: {exc}".split())[:300]}
    return out


def _selection(attrs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The rule that turned each trial's curve into its value (study attr ``selection``), or None.

    Older studies do not record it; the report then says nothing rather than guess.
    """
    sel = attrs.get("selection")
    if not isinstance(sel, dict) or not sel.get("rule"):
        return None
    return dict(sel)


def _val_test_gap(metric: str, val: Optional[float], test: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The best trial's val value beside its test score: a large gap means val picked a lucky trial."""
    score = test.get(metric) if test else None
    gap = round(val - score, 6) if val is not None and isinstance(score, (int, float)) else None
    return {"metric": metric, "val": val, "test": score if gap is not None else None, "gap": gap}


def _best(study: optuna.Study, rows: List[Dict[str, Any]], run_dir: Optional[Path],
          classes: List[str]) -> Optional[Dict[str, Any]]:
    if not rows:
        return None
    top = rows[0]
    metric = study.user_attrs.get("metric", "value")
    trial = next(t for t in study.get_trials(deepcopy=False) if t.number == top["trial"])
    soup = study.user_attrs.get("soup")
    soup = soup if isinstance(soup, dict) and soup.get("trials") and int(soup["trials"][0]) == trial.number else None
    test = study.user_attrs.get(TEST_ATTR, {}).get(model_key(trial.number, soup))
    if test and test.get("details"):
        details = {"split": "test", **test["details"]}
    elif test and test.get("confusion_matrix") is not None:
        details = {"split": "test", "kind": "confusion", "labels": classes, "matrix": test["confusion_matrix"]}
    elif trial.user_attrs.get("val_details"):
        details = {"split": "val", **trial.user_attrs["val_details"]}
    else:
        details = None
    matrix = details.get("matrix") if details and details.get("kind") == "confusion" else None
    model_dir = None
    if run_dir is not None and best_model_trial(run_dir, study.study_name) == trial.number:
        model_dir = str((run_dir / BEST_DIR).resolve())
    scores = {k: v for k, v in test.items() if k not in ("confusion_matrix", "details")} if test else None
    return {"trial": trial.number, "backbone": top["backbone"], "adapter": top["adapter"], "params": top["params"],
            "val": {metric: top["value"]},
            "best_epoch": trial.user_attrs.get("best_epoch"), "epochs_run": top["epochs_run"],
            "test": scores, "selection": _selection(study.user_attrs),
            "val_test_gap": _val_test_gap(metric, soup["val"] if soup and soup.get("kept") else top["value"], scores),
            "soup": soup,
            "details": details,
            "confusion_matrix": {"split": details["split"], "labels": details.get("labels") or classes,
                                 "matrix": matrix} if matrix else None,
            "model_dir": model_dir,
            "refit": _refit(study, run_dir)}


def _refit(study: optuna.Study, run_dir: Optional[Path]) -> Optional[Dict[str, Any]]:
    """The refit of the best trial on train + validation (``--refit``), when it is still current."""
    from ..refit import REFIT_ATTR, stored_refit

    if run_dir is not None:
        return stored_refit(study, run_dir)
    info = study.user_attrs.get(REFIT_ATTR)  # a stored study seen without its folder: what it recorded
    return dict(info) if info else None


def _by_backbone(records: List[TrialRecord], maximize: bool = True) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for r in records:
        entry = out.setdefault(r.backbone or "?", {"trials": 0, "complete": 0, "pruned": 0, "fail": 0, "values": []})
        entry["trials"] += 1
        if r.state in ("complete", "pruned", "fail"):
            entry[r.state] += 1
        if r.state == "complete" and r.value is not None:
            entry["values"].append(r.value)
    for entry in out.values():
        vals = entry["values"]
        entry.update(best=(max(vals) if maximize else min(vals)) if vals else None,
                     median=statistics.median(vals) if vals else None, mean=statistics.fmean(vals) if vals else None)
    sign = 1 if maximize else -1
    return dict(sorted(out.items(), key=lambda kv: (kv[1]["best"] is None, -sign * (kv[1]["best"] or 0.0))))


def _with_ranking(by: Dict[str, Any], ranking: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """Each backbone's predicted rank (from the transferability ranking) beside what it achieved."""
    ranks = (ranking or {}).get("rank", {})
    for name, entry in by.items():
        entry["predicted_rank"] = ranks.get(name)
    return by


def _ranking_agreement(by: Dict[str, Any], ranking: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """Kendall's tau between the predicted order and the achieved best metric, over ranked backbones."""
    if not ranking:
        return None
    from ..scores import kendall_tau

    ranks = ranking.get("rank", {})
    pairs = [(ranks[n], e["best"]) for n, e in by.items() if n in ranks and e["best"] is not None]
    tau = kendall_tau([-r for r, _ in pairs], [b for _, b in pairs]) if len(pairs) >= 2 else None
    return {"order": ranking.get("order"), "scores": ranking.get("scores"), "tau": tau, "backbones": len(pairs)}


def _cost(study: optuna.Study, records: List[TrialRecord], best_trial: Optional[int]) -> Dict[str, Any]:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trained = [r for r in records if r.state in ("complete", "pruned")]
    full = sum(int(trials[r.number].user_attrs.get("max_epochs", r.epochs_run)) for r in trained)
    epochs = sum(r.epochs_run for r in trained)
    starts = [t.datetime_start for t in trials.values() if t.datetime_start]
    t0 = min(starts) if starts else None
    to_best = None
    if best_trial is not None and t0 and trials[best_trial].datetime_complete:
        to_best = (trials[best_trial].datetime_complete - t0).total_seconds()
    return {
        "per_trial": [{"trial": r.number, "state": r.state, "backbone": r.backbone, "seconds": round(r.seconds, 3),
                       "epochs_run": r.epochs_run} for r in records],
        "trial_seconds_total": round(sum(r.seconds for r in records), 3),
        "epochs_trained": int(epochs), "epochs_without_pruning": int(full),
        "epochs_saved_fraction": round(1 - epochs / full, 4) if full else None,
        "time_to_best_s": round(to_best, 3) if to_best is not None else None,
        "trials_to_best": (sorted(trials).index(best_trial) + 1) if best_trial is not None else None,
    }


def _elapsed(study: optuna.Study) -> Optional[float]:
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    if not starts:
        return None
    ends = [t.datetime_complete or _dt.datetime.now() for t in trials if t.datetime_start]
    return round((max(ends) - min(starts)).total_seconds(), 3)


def collect_facts(study: optuna.Study, *, run_dir: Optional[Path] = None, storage: Optional[str] = None) -> Dict[str, Any]:
    """The report's facts for ``study``; ``run_dir`` (default: the study's own) locates ``best/``."""
    attrs = study.user_attrs
    if run_dir is None:  # best/ lives in the artifact folder, which defaults to the run folder
        for key in ("artifacts", "run_dir"):
            if attrs.get(key) and Path(attrs[key]).is_dir():
                run_dir = Path(attrs[key])
                break
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    all_trials = visible(study.get_trials(deepcopy=False))  # a paused-and-resumed lineage is one trial
    stale = stale_reasons(all_trials)
    records = [trial_record(study.study_name, t, maximize, stale.get(t.number)) for t in all_trials]
    finished = [r for r in records if r.state in ("complete", "pruned", "fail")]
    rows = leaderboard_rows(finished, maximize)
    dataset = attrs.get("dataset") or {}
    classes = list(dataset.get("classes") or [])
    best = _best(study, rows, run_dir, classes)
    columns, fixed = leaderboard_split(rows)
    counts = {s: sum(r.state == s for r in records) for s in ("complete", "pruned", "fail", "running", "waiting")}
    devices = sorted({str(t.user_attrs["device"]) for t in all_trials if t.user_attrs.get("device")})
    return {
        "header": {
            "study": study.study_name, "metric": attrs.get("metric", "value"),
            "direction": "maximize" if maximize else "minimize", "dataset": dataset, "budget": attrs.get("budget"),
            "elapsed_s": _elapsed(study), "devices": devices, "autotl_version": __version__,
            "study_autotl_version": attrs.get("autotl_version"), "storage": mask_url(storage),
            "generated_at": _iso(_dt.datetime.now()), "trials": counts,
            "started_at": _iso(min((t.datetime_start for t in all_trials if t.datetime_start), default=None)),
            "autotl_study": "metric" in attrs,
        },
        "leaderboard": rows,
        "leaderboard_columns": columns,
        "leaderboard_fixed": fixed,
        "best": best,
        "curves": {str(t.number): {"state": r.state, "backbone": r.backbone,
                                   "steps": sorted(t.intermediate_values),
                                   "values": [t.intermediate_values[k] for k in sorted(t.intermediate_values)]}
                   for t, r in zip(all_trials, records) if t.intermediate_values},
        "importance": _importances(study, counts["complete"]),
        "by_backbone": _with_ranking(_by_backbone(finished, maximize), attrs.get("ranking")),
        "ranking": _ranking_agreement(_by_backbone(finished, maximize), attrs.get("ranking")),
        "freeze_depth": [{"trial": r.number, "backbone": r.backbone, "freeze_depth": r.params.get("freeze_depth"),
                          "value": r.value, "state": r.state}
                         for r in finished if r.state in ("complete", "pruned") and r.value is not None],
        "cost": _cost(study, finished, best["trial"] if best else None),
        "pruned": [{"trial": r.number, "backbone": r.backbone, "stopped_at_epoch": r.epochs_run, "best_value": r.value}
                   for r in finished if r.state == "pruned"],
        "failed": [{"trial": r.number, "backbone": r.backbone, "reason": r.fail_reason or "(no reason recorded)"}
                   for r in finished if r.state == "fail"],
        "running": [{"trial": r.number, "backbone": r.backbone, "epochs_so_far": len(r.curve)}
                    for r in records if r.state in ("running", "waiting")],
    }
