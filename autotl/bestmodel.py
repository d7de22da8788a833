"""The artifact folder's models, decided in one place: ``best/`` and ``top/trial-N/``.

A trial's weights are offered here only after Optuna has stored the trial as COMPLETE, so a crash
can never leave ``best/`` holding a trial the study does not count. Workers that share the folder
decide one at a time under ``.best.lock``; each model folder is swapped in by renaming under its
folder's ``.swap.lock``, which readers (:func:`autotl.export.load_model`) take too, so a reader gets one whole
model even while another worker replaces it. A ``best/`` or ``top/`` model whose trial is not
COMPLETE in the study (left by an older autotl, or by a trial failed afterwards) counts as absent:
the next finished trial replaces it, and the search's end removes it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import optuna

from .export import BEST_DIR, CONFIG_NAME, merged_for_export, model_lock, save_model
from .locks import file_lock, read_lock

TOP_DIR = "top"  # <artifacts>/top/trial-N/: the next best models, with --keep-top K > 1
DECISION_LOCK = ".best.lock"


def decision_lock(artifacts: Path):
    """Held by the worker that decides and writes the folder's models (and by the soup)."""
    return file_lock(Path(artifacts) / DECISION_LOCK)


def stored_config(folder: Path, study: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """A model folder's ``config.json`` (read under its lock), if there is one and it belongs to ``study``."""
    try:
        with read_lock(model_lock(folder)):
            config = json.loads((folder / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or (study is not None and config.get("study") not in (None, study)):
        return None
    return config


def best_model_config(artifacts: Path, study: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """``best/config.json``, if there is one (and if it belongs to ``study``, when given)."""
    return stored_config(Path(artifacts) / BEST_DIR, study)


def best_model_trial(artifacts: Path, study: Optional[str] = None) -> Optional[int]:
    """The trial whose weights ``best/`` holds, if any (and if it belongs to ``study``, when given)."""
    config = best_model_config(artifacts, study)
    try:
        return int(config.get("trial")) if config is not None else None
    except (ValueError, TypeError):
        return None


def complete_values(study: optuna.Study) -> Dict[int, float]:
    """Each COMPLETE trial's number and value."""
    return {t.number: float(t.value) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None}


def _held_value(folder: Path, study: str, complete: Mapping[int, float]) -> Optional[float]:
    """The value of the model ``folder`` holds, when it is a COMPLETE trial of ``study``; else None."""
    config = stored_config(folder, study)
    try:
        number = int(config["trial"]) if config and config.get("study") == study else None
    except (KeyError, TypeError, ValueError):
        number = None
    return complete.get(number) if number is not None else None


def offer(ctx: Any, number: int, value: float, params: Any, model: Any, state: Mapping[str, Any]) -> bool:
    """Trial ``number``, just stored as COMPLETE: write it to ``best/`` when it beats the model there (or
    that model is not a COMPLETE trial of the study), and to ``top/`` when it ranks among the
    ``kept_models`` best. Returns whether it went to ``best/``."""
    from .tasks import better

    target = ctx.artifacts / BEST_DIR
    keep = kept_models(ctx.config)
    with decision_lock(ctx.artifacts):
        complete = complete_values(ctx.study)
        if complete.get(number) is None:
            return False  # only trials the study holds as COMPLETE
        current = _held_value(target, ctx.name, complete)
        is_best = current is None or better(ctx.metric, value, current)
        in_top = keep > 1 and sum(better(ctx.metric, v, value) for n, v in complete.items() if n != number) < keep
        if not (is_best or in_top):
            return False
        state, adapter, adapter_params = merged_for_export(model.module, state, ctx.plugins.adapters.get(params.adapter),
                                                           ctx.plugins, params.adapter_params)
        write = model_write_args(ctx, params, model, adapter, adapter_params, number=number, value=value)
        if in_top:
            save_model(str(ctx.artifacts / TOP_DIR / f"trial-{number}"), state, **write)
            _trim_top(ctx.artifacts, ctx.name, ctx.metric, keep, complete)
        if is_best:
            save_model(str(target), state, **write)
    return is_best


def model_write_args(ctx: Any, params: Any, model: Any, adapter: Any, adapter_params: Mapping[str, Any], *,
                     number: int, value: Optional[float], extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """:func:`autotl.export.save_model`'s arguments for trial ``number``'s trained ``model`` (``adapter``
    and its params as :func:`autotl.export.merged_for_export` returned them): ``best/``, ``top/`` and
    ``refit/`` describe their models alike."""
    return dict(source=ctx.plugins.sources.get(params.backbone), adapter=adapter, adapter_params=adapter_params,
                classes=ctx.dataset.classes, data_config=model.data_config,
                architecture=getattr(model, "architecture", None), plugins=ctx.plugins,
                extra={"study": ctx.name, "trial": number, "value": value, "metric": ctx.metric,
                       "params": params.as_dict(), **ctx.task.export(), **dict(extra or {})})


def kept_models(config: Any) -> int:
    """Models kept in the artifact folder while the search runs: ``--keep-top``, or more for ``--soup``."""
    return max(int(getattr(config, "keep_top", 1)), int(getattr(config, "soup", 0)))


def _remove(folder: Path) -> None:
    with file_lock(model_lock(folder)):
        shutil.rmtree(folder, ignore_errors=True)


def _trim_top(artifacts: Path, study: str, metric: str, keep: int, complete: Mapping[int, float]) -> None:
    from .tasks import METRICS

    folder = artifacts / TOP_DIR
    if keep <= 1:
        shutil.rmtree(folder, ignore_errors=True)
        return
    entries = [(_held_value(d, study, complete), d) for d in folder.glob("trial-*") if d.is_dir()]
    for _, d in [e for e in entries if e[0] is None and stored_config(e[1], study) is not None]:
        _remove(d)  # this study's model of a trial that is not COMPLETE
    entries = sorted([(v, d) for v, d in entries if v is not None], key=lambda e: e[0],
                     reverse=METRICS[metric] == "maximize")
    for _, d in entries[keep:]:
        _remove(d)


def trim_top(artifacts: Path, study: optuna.Study, metric: str, keep: int) -> None:
    """Keep the ``keep`` best models of ``study`` under ``top/`` (none when ``keep`` is 1 or less).
    The caller holds :func:`decision_lock`."""
    _trim_top(Path(artifacts), study.study_name, metric, keep, complete_values(study))


def drop_stale_best(artifacts: Path, study: optuna.Study) -> bool:
    """Remove a ``best/`` of this study whose trial is not COMPLETE (it would be scored and exported as
    the search's model). Returns whether one was removed."""
    target = Path(artifacts) / BEST_DIR
    with decision_lock(artifacts):
        config = stored_config(target, study.study_name)
        if config is None or config.get("study") != study.study_name:
            return False
        if _held_value(target, study.study_name, complete_values(study)) is not None:
            return False
        _remove(target)
        return True
