"""The Python API behind the CLI: search, pretrain, predict, and listings."""
from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence

from .config import RunConfig
from .types import RunResult, TrialRecord


def load_plugins(plugins: Sequence[str] = (), plugins_dir: Optional[str] = None, zoo: Optional[str] = None,
                 blocked: Sequence[str] = ()) -> Any:
    from .plugins import get_plugin_manager

    return get_plugin_manager(plugins, plugins_dir, zoo_dir=zoo, blocked=blocked)


def search(data: str, *, on_trial: Optional[Callable[[TrialRecord], None]] = None, progress: Any = None,
           **options: Any) -> RunResult:
    """Run a transfer-learning search and write the run folder with its report.

    Args:
        data: an image folder, a ``.csv`` file, or ``builtin:NAME``.
        on_trial: called with each finished trial's :class:`TrialRecord`.
        progress: an :class:`autotl.progress.Progress` that shows the search live, e.g.
            ``autotl.progress.make_progress()``; silent by default.
        **options: the fields of :class:`autotl.config.RunConfig` (``trials``, ``epochs``,
            ``backbones``, ``space``, ``metric``, ``device``, ``out``, ``seed``, ``study``,
            ``storage``, ``plugins``, ``report``, ...).

    Returns:
        The :class:`RunResult`; ``result.summary`` is what ``summary.json`` holds and
        ``result.report`` what ``report.json`` holds.
    """
    return run_search(RunConfig.from_options(data, **options), on_trial=on_trial, progress=progress)


def run_search(config: RunConfig, on_trial: Optional[Callable[[TrialRecord], None]] = None,
               progress: Any = None) -> RunResult:
    from .data import load_dataset
    from .export import merged_for_export, save_model
    from .defaults import enqueue_default_trials
    from .features import FeatureCache
    from .progress import Progress
    from .report import collect_facts, write_report
    from .runfolder import BEST_DIR, score_test_split, summarize, write_run_folder
    from .space import load_space_file, resolve_space
    from .study import (TrialRunner, best_other_value, make_storage, open_study, records, resolve_metric, run_trials,
                        storage_label)
    from .tasks import better, direction, make_task
    from .tensors import TensorCache
    from .trainer import resolve_device

    started = time.perf_counter()
    import timm  # noqa: F401  (loaded here, so the first trial's time is its own)

    progress = progress if progress is not None else Progress()
    plugins = load_plugins(config.plugins, config.plugins_dir, config.zoo, config.blocked_plugins)
    space_file = load_space_file(config.space)
    dataset = load_dataset(config.data, plugins, seed=config.seed, val_fraction=config.val_fraction, task=config.task)
    space = resolve_space(space_file, plugins, config.backbones, config.epochs, task=dataset.task)
    task = make_task(dataset.task, dataset.train.labels)
    device = resolve_device(config.device)
    name = config.study_name()
    out_dir = config.out_dir(name)
    storage = make_storage(config.storage, out_dir)
    metric = resolve_metric(config, name, storage, dataset.task)
    study = open_study(name, storage, space, metric, config.seed)
    enqueue_default_trials(study, space, plugins, config.default_trials)
    if "dataset" not in study.user_attrs:
        study.set_user_attr("dataset", dataset.describe())
    study.set_user_attr("run_dir", str(out_dir.resolve()))
    study.set_user_attr("budget", {"trials": config.n_trials, "timeout": config.timeout, "epochs": space.epochs,
                                   "space": space.file.path, "backbones": list(space.backbones)})

    def on_best(number: int, value: float, params: Any, model: Any, state: Dict[str, Any]) -> None:
        other = best_other_value(study, number)
        if state is not None and better(metric, value, other):
            state, adapter, adapter_params = merged_for_export(model.module, state, plugins.adapters.get(params.adapter),
                                                               plugins.adapters, params.adapter_params)
            save_model(str(out_dir / BEST_DIR), state, source=plugins.sources.get(params.backbone),
                       adapter=adapter, adapter_params=adapter_params,
                       classes=dataset.classes, data_config=model.data_config,
                       extra={"study": name, "trial": number, "value": value, "metric": metric,
                              "params": params.as_dict(), **task.export()})

    def trial_done(record: TrialRecord) -> None:
        plugins.trial_finished(record)
        progress.trial_finished(record, best_other_value(study, -1))
        if on_trial is not None:
            try:
                on_trial(record)
            except Exception as exc:  # a progress callback never stops the search
                warnings.warn(f"on_trial callback raised {type(exc).__name__}: {exc}", stacklevel=2)

    features = FeatureCache(config.feature_cache_mb, spill_dir=out_dir / "feature_cache") if config.feature_cache else None
    runner = TrialRunner(config=config, space=space, dataset=dataset, task=task, metric=metric, plugins=plugins,
                         device=device, tensors=TensorCache(task), on_best=on_best, progress=progress,
                         features=features)
    interrupted = False
    progress.search_started(config.n_trials, config.timeout)
    try:
        run_trials(study, runner, config, trial_done)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.search_finished()
    all_records = records(study)
    test = score_test_split(study, out_dir, dataset, device, plugins, task) if not interrupted else None
    summary = summarize(study, all_records, out_dir=out_dir, metric=metric,
                        elapsed_s=time.perf_counter() - started, test=test,
                        extra={"dataset": dataset.describe(), "device": str(device), "space": space.file.path,
                               "storage": storage_label(config.storage, out_dir), "out_dir": str(out_dir)})
    write_run_folder(out_dir, summary, all_records)
    facts = collect_facts(study, run_dir=out_dir)
    if config.report:
        try:
            write_report(study, out_dir, facts=facts)
        except Exception as exc:  # a report problem never loses the finished search
            warnings.warn(f"could not write the report: {type(exc).__name__}: {exc}; "
                          f"retry with `autotl report {out_dir}`", stacklevel=2)
    result = RunResult(study=name, out_dir=str(out_dir), storage=storage_label(config.storage, out_dir),
                       metric=metric, direction=direction(metric), summary=summary, trials=all_records, report=facts)
    plugins.search_finished(result)
    if interrupted:
        raise KeyboardInterrupt
    return result


def list_backbones(plugins: Any) -> List[Dict[str, Any]]:
    """Each registered source model with its plugin, parameter count, input size and layer groups."""
    from .model import describe_source

    rows = []
    for name, source in plugins.sources.items():
        rows.append({"name": name, "plugin": plugins.sources.owner(name), **describe_source(source),
                     "description": source.description})
    return rows


def predict(model_dir: str, images: Sequence[str], *, out: Optional[str] = None, device: str = "auto",
            plugins: Sequence[str] = (), plugins_dir: Optional[str] = None, zoo: Optional[str] = None,
            blocked: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Predict images with a run folder's (or model folder's) best model; see :func:`autotl.export.predict`."""
    from .export import predict as _predict, read_config

    _, config = read_config(model_dir)
    loaded = None if config.get("format") == "timm" else load_plugins(plugins, plugins_dir, zoo, blocked)
    return _predict(model_dir, images, plugins=loaded, device=device, out=out)


def pretrain(data: str, *, backbone: str, out: str, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
             seed: int = 0, device: str = "auto", plugins: Sequence[str] = (), plugins_dir: Optional[str] = None,
             zoo: Optional[str] = None, blocked: Sequence[str] = ()) -> Dict[str, Any]:
    """Train a registered source model on a source task; write weights and a sidecar JSON."""
    from .pretraining import pretrain_source

    loaded = load_plugins(plugins, plugins_dir, zoo, blocked)
    return pretrain_source(data, loaded, backbone=backbone, out=out, epochs=epochs, lr=lr, batch_size=batch_size,
                           seed=seed, device=device)


__all__ = ["search", "run_search", "predict", "pretrain", "list_backbones", "load_plugins"]
