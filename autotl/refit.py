"""Refit: train the best trial's setup again on train + validation, the way the search trained it.

A search holds back the validation split to choose; once the choice is made, those images can train
the model too (AutoGluon's ``refit_full``). The refit uses the best trial's params, seed and learning-
rate schedule (which spans the space's epochs), and stops at the epoch the search selected, so it is
the chosen trial with more data, not a new recipe. It cannot be validated any more (the validation
images are in its training set): its test score, next to the best trial's, says whether it helped.
The model goes to ``<artifacts>/refit/`` in the same formats as ``best/``; the facts go to the
study's ``refit`` user attribute and to ``summary.json``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import optuna

from .errors import AutotlError

REFIT_DIR = "refit"
REFIT_ATTR = "refit"


class RefitError(AutotlError):
    """The study has nothing to refit, or the run folder cannot be refitted as it is."""


def merged_split(train: Any, val: Any) -> Any:
    """Train and validation as one split (items, labels, paths; a digest of both)."""
    from .data import SampleSet

    labels = np.concatenate([np.asarray(train.labels), np.asarray(val.labels)])
    return SampleSet(items=tuple(train.items) + tuple(val.items), labels=labels,
                     paths=tuple(train.paths) + tuple(val.paths), digest=f"{train.digest}+{val.digest}",
                     modality=getattr(train, "modality", "image"))


def refit_epochs(trial: optuna.trial.FrozenTrial, max_epochs: int) -> int:
    """The epochs the search found best for ``trial``: the epoch whose weights its score selected."""
    for key in ("selected_epoch", "epochs_run"):
        value = trial.user_attrs.get(key)
        if isinstance(value, int) and value >= 1:
            return min(value, max_epochs)
    return max_epochs


def refit_best(ctx: Any) -> Dict[str, Any]:
    """Refit the study's best trial (``ctx`` is the search's :class:`autotl.driver.SearchContext`);
    write ``<artifacts>/refit/`` and return the facts also stored in the study's ``refit`` attribute."""
    import torch

    from .bestmodel import model_write_args
    from .export import load_model, merged_for_export, save_model
    from .model import build_model
    from .promotion import lineage
    from .selection import Selection
    from .tensors import Augmentation
    from .trainer import evaluate, fit

    study = ctx.study
    try:
        best = study.best_trial
    except ValueError as exc:
        raise RefitError(f"study {study.study_name!r} has no complete trial to refit",
                         "run the search until a trial completes, then refit") from exc
    params = ctx.space.suggest(optuna.trial.FixedTrial(dict(best.params)))
    retried = best.user_attrs.get("oom_retry") or {}
    if retried.get("retried_at"):  # the batch size the trial really trained with
        params = dataclasses.replace(params, batch_size=int(retried["retried_at"]))
    epochs = refit_epochs(best, ctx.space.epochs)
    seed = int(best.user_attrs.get("seed", ctx.config.seed + lineage(best)))
    source = ctx.plugins.sources.get(params.backbone)
    adapter = ctx.plugins.adapters.get(params.adapter)
    torch.manual_seed(seed)
    model = build_model(source, adapter, ctx.task.num_outputs(ctx.dataset.classes), params.adapter_params,
                        data_knobs=params.data_knobs())
    both = merged_split(ctx.dataset.train, ctx.dataset.val)
    train = ctx.tensors.train(both, model.data_config, Augmentation.from_params(params),
                              pin_memory=ctx.device.type == "cuda")
    val = ctx.tensors.get(ctx.dataset.val, model.data_config)  # the loop wants one; it is training data now
    try:
        # The schedule spans the space's epochs, as in the search; the fit stops at the selected epoch.
        result = fit(model, train, val, params, epochs=ctx.space.epochs, metric=ctx.metric, task=ctx.task,
                     labels=list(ctx.dataset.classes), device=ctx.device, seed=seed, feature_cache=ctx.features,
                     compile=ctx.config.compile, selection=Selection("last"),
                     pause_at=epochs if epochs < ctx.space.epochs else None)
    finally:
        for split in (train, val):
            if hasattr(split, "close"):
                split.close()
    state, export_adapter, adapter_params = merged_for_export(model.module, result.state_dict, adapter,
                                                              ctx.plugins, params.adapter_params)
    folder = Path(ctx.artifacts) / REFIT_DIR
    extra = {"refit_of": best.number, "refit_epochs": epochs, "train_images": len(both)}
    save_model(str(folder), state, **model_write_args(ctx, params, model, export_adapter, adapter_params,
                                                      number=best.number, value=None, extra=extra))
    test = None
    if ctx.dataset.test is not None:
        module, config = load_model(str(folder), ctx.plugins)
        scores = evaluate(module, ctx.tensors.get(ctx.dataset.test, config["data_config"]), ctx.device, ctx.task,
                          list(ctx.dataset.classes))
        test = {k: v for k, v in scores.items() if k not in ("confusion_matrix", "details")}
    info = {"trial": best.number, "epochs": epochs, "seed": seed, "train_images": len(both),
            "test": test, "model_dir": str(folder)}
    study.set_user_attr(REFIT_ATTR, info)
    return info


def stored_refit(study: optuna.Study, artifacts: Path) -> Optional[Dict[str, Any]]:
    """The study's refit facts, when its model is still in ``<artifacts>/refit/`` and refits the
    study's current best trial (a later, better trial makes an earlier refit stale)."""
    info = study.user_attrs.get(REFIT_ATTR)
    if not info or not (Path(artifacts) / REFIT_DIR).is_dir():
        return None
    try:
        best = study.best_trial.number
    except ValueError:
        return None
    return dict(info) if info.get("trial") == best else None


def refit_run(run_dir: str, *, data: Optional[str] = None, storage: Optional[str] = None, device: str = "auto",
              **plugin_options: Any) -> Dict[str, Any]:
    """``autotl refit RUN``: refit a finished search's best trial from its run folder, with the data,
    space, seed and backbones that search recorded (``data`` and ``storage`` when they moved or the
    storage URL holds a password the run folder masks), then update ``summary.json`` and the report."""
    import json

    from .config import RunConfig
    from .driver import prepare
    from .runfolder import SUMMARY_NAME, write_summary
    from .space import BUILTIN_SPACES
    from .storage import JOURNAL_NAME

    folder = Path(run_dir)
    try:
        summary = json.loads((folder / SUMMARY_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise RefitError(f"{run_dir!r} holds no readable {SUMMARY_NAME}",
                         "pass the run folder of a finished search (the --out of autotl search)") from exc
    label = str(summary.get("storage") or "")
    if storage is None and "***" in label:
        raise RefitError(f"the search's storage is {label}, with its password masked",
                         "pass --storage with the full URL")
    if storage is None and label.endswith(JOURNAL_NAME) and Path(label).parent.resolve() != folder.resolve():
        storage = label  # a journal outside the run folder (--storage PATH.journal)
    elif storage is None and not label.endswith(JOURNAL_NAME):
        storage = label
    dataset = summary.get("dataset") or {}
    spec = data or dataset.get("source")
    if not spec or (not spec.startswith("builtin:") and not Path(spec).exists()):
        raise RefitError(f"the search's data {spec!r} is not here", "pass --data with where that data is now")
    space = str(summary.get("space") or "default")
    if not Path(space).is_file() and space.endswith(".yaml") and space[:-5] in BUILTIN_SPACES:
        space = space[:-5]
    artifacts = summary.get("artifacts")
    if not artifacts or Path(artifacts) == Path(str(summary.get("out_dir"))):
        artifacts = None  # best/ in the run folder, wherever the folder is now
    study = _load_recorded_study(summary["study"], storage, folder)
    budget, fingerprint = study.user_attrs.get("budget") or {}, study.user_attrs.get("fingerprint") or {}
    config = RunConfig(data=spec, space=space, backbones=tuple(budget.get("backbones") or ()) or None,
                       epochs=budget.get("epochs"), seed=int(fingerprint.get("seed", 0)),
                       task=dataset.get("task", "auto"), study=summary["study"], storage=storage, out=str(folder),
                       artifacts=artifacts, device=device, report=False, warm_start="off",
                       rank=False, quiet=True, refit=True, **plugin_options)
    ctx = prepare(config, create=False)
    info = refit_best(ctx)
    summary["refit"] = stored_refit(ctx.study, ctx.artifacts)
    write_summary(folder, summary)
    from .modelcard import write_model_card

    write_model_card(Path(ctx.artifacts) / REFIT_DIR, summary, refit=True)
    if (folder / "report.html").is_file():
        from .report import write_report

        write_report(ctx.study, folder)
    return info


def _load_recorded_study(name: str, storage: Optional[str], folder: Path) -> optuna.Study:
    from .storage import make_storage

    try:
        return optuna.load_study(study_name=name, storage=make_storage(storage, folder))
    except KeyError as exc:
        raise RefitError(f"study {name!r} is not in the search's storage",
                         "pass --storage with the storage the search used") from exc
