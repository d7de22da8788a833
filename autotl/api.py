"""The Python API behind the CLI: search, pretrain, predict, and listings."""
from __future__ import annotations

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
        progress: an :class:`autotl.progress.Progress` that shows the search live; by default the
            CLI's display on stdout (``autotl.progress.make_progress()``), none with ``quiet=True``.
        **options: the fields of :class:`autotl.config.RunConfig` (``trials``, ``max_trials``,
            ``epochs``, ``backbones``, ``space``, ``metric``, ``device``, ``out``, ``seed``, ``study``,
            ``storage``, ``plugins``, ``report``, ``quiet``, ...).

    Returns:
        The :class:`RunResult`; ``result.summary`` is what ``summary.json`` holds and
        ``result.report`` what ``report.json`` holds.
    """
    config = RunConfig.from_options(data, **options)
    if progress is None and not config.quiet:
        from .progress import make_progress

        progress = make_progress()
    return run_search(config, on_trial=on_trial, progress=progress)


def run_search(config: RunConfig, on_trial: Optional[Callable[[TrialRecord], None]] = None,
               progress: Any = None) -> RunResult:
    """Run a search from a validated :class:`RunConfig` (see :mod:`autotl.driver`)."""
    from .driver import run_search as _run

    return _run(config, on_trial=on_trial, progress=progress)


def rank(data: str, *, backbones: Any = None, space: str = "default", out: Optional[str] = None,
         device: str = "auto", seed: int = 0, plugins: Sequence[str] = (), plugins_dir: Optional[str] = None,
         zoo: Optional[str] = None, blocked: Sequence[str] = ()) -> Any:
    """Rank source models by transferability to ``data``; returns the Ranking and the rank.json path."""
    from pathlib import Path

    from .config import dataset_label
    from .data import load_dataset
    from .errors import DataError
    from .heads import plain_head_adapter
    from .ranking import rank_sources, write_ranking
    from .space import load_space_file, resolve_space
    from .trainer import resolve_device

    loaded = load_plugins(plugins, plugins_dir, zoo, blocked)
    plain_head_adapter(loaded, "ranking")  # before the data loads and the space's own adapter check
    globs = tuple(b.strip() for b in backbones.split(",")) if isinstance(backbones, str) else backbones
    dataset = load_dataset(data, loaded, seed=seed)
    if dataset.task != "multiclass":
        raise DataError(f"ranking needs class labels; {data!r} is a {dataset.task} task",
                        "rank with a multiclass version of the data, or search without ranking")
    resolved = resolve_space(load_space_file(space), loaded, globs, None, task=dataset.task,
                             modality=dataset.modality)
    result = rank_sources(loaded, dataset, resolved.backbones, resolve_device(device))
    return result, write_ranking(result, Path(out) if out else Path("runs") / f"rank-{dataset_label(data)}")


def list_backbones(plugins: Any) -> List[Dict[str, Any]]:
    """Each registered source model with its plugin, parameter count, input size and layer groups."""
    from .model import describe_source

    rows = []
    for name, source in plugins.sources.items():
        rows.append({"name": name, "plugin": plugins.sources.owner(name), **describe_source(source),
                     "description": source.description})
    return rows


def list_adapters(plugins: Any) -> List[Dict[str, Any]]:
    """Each registered target adapter with its plugin, its knobs (``params``: the space fragment it
    searches; ``knobs``: the same in one line), what trains (``trains``, ``?`` when the adapter does not
    say), how ``best/`` exports, what it requires and its description."""
    from .errors import PluginError
    from .heads import export_target

    rows = []
    for name, adapter in plugins.adapters.items():
        target = adapter
        if adapter.merge is not None:
            try:
                target = export_target(adapter, plugins) or adapter
            except PluginError:  # listed anyway; a search with it stops before training
                pass
        export = "plain timm" if target.exports_plain_timm else "autotl"
        rows.append({"name": name, "plugin": plugins.adapters.owner(name), "params": dict(adapter.space),
                     "knobs": knobs_text(adapter.space), "trains": adapter.trains or "?",
                     "export": f"merged, {export}" if adapter.merge is not None else export,
                     "requires": list(adapter.requires), "description": adapter.description})
    return rows


def knobs_text(space: Any) -> str:
    """An adapter's knobs in one line, as the user guide writes them: ``rank {4, 8, 16}`` for choices,
    ``dropout [0.0, 0.5]`` for a range (``log``, ``step`` when set), ``init_scale = 10.0`` when fixed;
    ``none`` without knobs."""
    def value(v: Any) -> str:
        return str(v) if isinstance(v, (str, int, float, bool)) or v is None else repr(v)

    parts = []
    for knob, spec in dict(space or {}).items():
        if isinstance(spec, dict) and "choices" in spec:
            text = f"{knob} {{{', '.join(value(c) for c in spec['choices'])}}}"
        elif isinstance(spec, dict) and "low" in spec:
            text = f"{knob} [{value(spec['low'])}, {value(spec.get('high'))}]"
            text += " log" if spec.get("log") else ""
            text += f" step {value(spec['step'])}" if spec.get("step") else ""
        elif isinstance(spec, dict) and "value" in spec:
            text = f"{knob} = {value(spec['value'])}"
        else:
            text = f"{knob} = {value(spec)}"
        if isinstance(spec, dict) and spec.get("when"):
            text += " when " + ", ".join(f"{k}={value(v)}" for k, v in dict(spec["when"]).items())
        parts.append(text)
    return "; ".join(parts) or "none"


def predict(model_dir: str, images: Sequence[str], *, out: Optional[str] = None, device: str = "auto",
            plugins: Sequence[str] = (), plugins_dir: Optional[str] = None, zoo: Optional[str] = None,
            blocked: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Predict images with a run folder's (or model folder's) best model; see :func:`autotl.export.predict`."""
    from .export import predict as _predict, read_config
    from .onnx_export import onnx_model_file

    if onnx_model_file(model_dir) is not None:  # an ONNX export: onnxruntime, no plugins needed
        return _predict(model_dir, images, device=device, out=out)
    _, config = read_config(model_dir)
    loaded = None if config.get("format") == "timm" else load_plugins(plugins, plugins_dir, zoo, blocked)
    return _predict(model_dir, images, plugins=loaded, device=device, out=out)


def refit(run_dir: str, *, data: Optional[str] = None, storage: Optional[str] = None, device: str = "auto",
          plugins: Sequence[str] = (), plugins_dir: Optional[str] = None, zoo: Optional[str] = None,
          blocked: Sequence[str] = ()) -> Dict[str, Any]:
    """Train a finished search's best setup on train + validation into ``RUN/refit/``; see
    :func:`autotl.refit.refit_run`. Returns the facts ``summary.json`` records under ``refit``."""
    from .refit import refit_run

    return refit_run(run_dir, data=data, storage=storage, device=device, plugins=tuple(plugins),
                     plugins_dir=plugins_dir, zoo=zoo, blocked_plugins=tuple(blocked))


EXPORT_FORMATS = ("onnx",)


def export(model_dir: str, *, out: str, format: str = "onnx", images: Optional[Sequence[str]] = None,
           tolerance: float = 1e-3, plugins: Sequence[str] = (), plugins_dir: Optional[str] = None,
           zoo: Optional[str] = None, blocked: Sequence[str] = ()) -> Dict[str, Any]:
    """Export a run folder's (or model folder's) best model for serving, and check it against PyTorch.

    Only ``format="onnx"`` exists: ``out/model.onnx`` + ``config.json`` + ``export.json`` (the
    parity figures); see :func:`autotl.onnx_export.export_onnx`. ``images`` (files or folders) are
    what parity is checked on; by default the run's test split. Returns what ``export.json`` holds.
    """
    from .errors import UsageError
    from .export import read_config
    from .onnx_export import export_onnx

    if format not in EXPORT_FORMATS:
        raise UsageError(f"--format {format!r} is not a format autotl exports to",
                         f"use --format {' or '.join(EXPORT_FORMATS)}")
    _, config = read_config(model_dir)
    loaded = None if config.get("format") == "timm" else load_plugins(plugins, plugins_dir, zoo, blocked)
    return export_onnx(model_dir, out, images=images, tolerance=tolerance, plugins=loaded)


def pretrain(data: str, *, backbone: str, out: str, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
             seed: int = 0, device: str = "auto", plugins: Sequence[str] = (), plugins_dir: Optional[str] = None,
             zoo: Optional[str] = None, blocked: Sequence[str] = ()) -> Dict[str, Any]:
    """Train a registered source model on a source task; write weights and a sidecar JSON."""
    from .pretraining import pretrain_source

    loaded = load_plugins(plugins, plugins_dir, zoo, blocked)
    return pretrain_source(data, loaded, backbone=backbone, out=out, epochs=epochs, lr=lr, batch_size=batch_size,
                           seed=seed, device=device)


__all__ = ["search", "run_search", "predict", "export", "pretrain", "list_backbones", "list_adapters", "load_plugins"]
