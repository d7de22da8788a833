"""ONNX export of a saved model, checked against PyTorch, and prediction from it through onnxruntime.

``export_onnx`` writes ``model.onnx`` (fp32, exported on the CPU, dynamic batch axis) whose graph
ends in the task's outputs (class probabilities, label probabilities or the regression value), so
plain onnxruntime gives what ``autotl predict`` reports, not raw logits. Beside it go
``config.json`` (the saved model's config with ``format: "onnx"``: classes and preprocessing) and
``export.json``: how far onnxruntime's outputs are from PyTorch's on up to 100 held-out inputs at
batch sizes 1, 2, 5 and all of them. An export whose difference exceeds the tolerance is an error,
so a model that silently computes something else is never handed on.

The graph's input is the model's input tensor as the search fed it: for images float32
``(N, 3, H, W)`` named ``image``, preprocessed; for another modality what its ``Modality`` makes
(text: int64 ``(N, max_length)`` token ids, named by the modality's ``onnx_input``, ``input_ids``).
Preparing the inputs (decoding, tokenizing) stays in autotl: ``config.json`` keeps the
``data_config`` (for text, the tokenizer spec), and ``autotl predict`` on the ONNX model prepares
them exactly as for the PyTorch model.

onnx, onnxruntime and onnxscript (which ``torch.onnx.export`` needs) are optional:
``pip install 'autotl[onnx]'``. Nothing here imports them until it is used.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import AutotlError, ModelError, UsageError
from .export import (CONFIG_NAME, PLAIN_KEY, _expand_images, _read_texts, image_tensors, input_tensors, load_model,
                     model_folder, prediction_rows, read_inputs)

ONNX_NAME = "model.onnx"
REPORT_NAME = "export.json"  # the parity figures
INPUT_NAME = "image"  # the graph's input for images; another modality names its own (Modality.onnx_input)
MAX_PARITY_IMAGES = 100
PARITY_BATCH_SIZES = (1, 2, 5)  # and the whole set: batch 1 and odd sizes catch a batch axis fixed by mistake
PREDICT_BATCH = 64
#: Above this many bytes of weights the graph keeps them in ``model.onnx.data`` (protobuf's 2 GiB limit).
EXTERNAL_DATA_BYTES = 1536 * 2**20
INSTALL_HINT = "pip install 'autotl[onnx]'"


def _require(*modules: str) -> None:
    """Fail in one line, naming the install command, when an optional ONNX package is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelError(f"ONNX {'export' if 'onnxscript' in modules else 'prediction'} needs "
                         f"{', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed", INSTALL_HINT)


class TaskOutputs(torch.nn.Module):
    """The saved network followed by its task's outputs (softmax, sigmoid, or the de-standardised
    regression value): the exported graph then gives what predictions mean, and the same numbers
    the PyTorch path computes."""

    def __init__(self, module: torch.nn.Module, task: Any) -> None:
        super().__init__()
        self.module = module
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task.outputs(self.module(x))


def output_name(task: Any) -> str:
    return "prediction" if task.name == "regression" else "probabilities"


def export_onnx(run_or_model_dir: str, out_dir: str, *, images: Optional[Sequence[str]] = None,
                tolerance: float = 1e-3, plugins: Any = None) -> Dict[str, Any]:
    """Export a run folder's (or model folder's) saved model to ``out_dir/model.onnx`` and check it.

    Args:
        run_or_model_dir: a run folder, its ``best/``, or any folder :func:`autotl.export.save_model` wrote.
        out_dir: where ``model.onnx``, ``config.json`` and ``export.json`` go (created if needed).
        images: image files or folders to check parity on (for a text model: CSV files with a
            ``text`` column); default: the run's test split. Up to 100 inputs, evenly spaced, are used.
        tolerance: the largest absolute difference between onnxruntime's and PyTorch's outputs
            (probabilities, or regression values) that passes.
        plugins: the loaded plugins, for a ``format: "autotl"`` model.

    Returns:
        What ``export.json`` holds: ``max_abs_diff``, ``top1_agreement`` (None for regression),
        ``images`` (the number of inputs checked, texts too), ``modality``, ``input`` (the graph's
        input name, dtype and shape), ``batch_sizes_checked``, ``tolerance``, ``passed``, ``opset``, the versions of
        torch, onnx and onnxruntime, and the paths written.

    Raises:
        ModelError: a missing package, no saved model, no images to check on, an exporter failure,
            or a difference above ``tolerance`` (raised after ``export.json`` is written).
    """
    _require("onnx", "onnxruntime", "onnxscript")
    import onnx
    import onnxruntime as ort

    from .tasks import task_from_config

    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise UsageError(f"--tolerance must be a number >= 0, got {tolerance!r}", "pass e.g. --tolerance 1e-3")
    folder = model_folder(str(run_or_model_dir))
    module, config = load_model(str(run_or_model_dir), plugins)
    kind = _kind(config)
    task = task_from_config(config)
    items, where = _parity_items(folder, config, images, plugins)
    x = _model_inputs(items, config)  # prepared exactly as autotl predict does it
    input_name = _input_name(config)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / ONNX_NAME
    wrapper = TaskOutputs(module.to("cpu").float().eval(), task).eval()
    _export_graph(wrapper, x, onnx_path, task, config, input_name)
    try:
        onnx.checker.check_model(str(onnx_path))
    except Exception as exc:  # onnx.checker.ValidationError, or a file it cannot read
        raise ModelError(f"the exported {onnx_path} fails onnx.checker: {_first_line(exc)}",
                         "rerun with --debug and report the model; the PyTorch model still predicts") from exc
    opset = next((int(o.version) for o in onnx.load(str(onnx_path), load_external_data=False).opset_import
                  if o.domain in ("", "ai.onnx")), None)

    dtype = str(x.dtype).replace("torch.", "")
    onnx_config = {**{k: v for k, v in config.items() if k != PLAIN_KEY}, "format": "onnx", "onnx": ONNX_NAME,
                   "onnx_input": input_name, "onnx_input_type": {"dtype": dtype, "shape": ["batch", *x.shape[1:]]},
                   "onnx_output": output_name(task), "onnx_opset": opset, "exported_from": str(folder),
                   "exported_format": config.get("format")}
    prepared = ("preprocessed as data_config says" if kind == "image" else
                f"{kind} prepared as data_config says (autotl predict does it; for text: token ids of data_config's "
                "tokenizer, right-padded with its pad_id)")
    onnx_config["load"] = (f"import onnxruntime; session = onnxruntime.InferenceSession('{ONNX_NAME}'); "
                           f"{output_name(task)} = session.run(None, {{'{input_name}': x}})[0]  "
                           f"# x: {dtype} (N, {', '.join(map(str, x.shape[1:]))}), {prepared}")
    (out / CONFIG_NAME).write_text(json.dumps(onnx_config, indent=2, default=str))

    session = _session(onnx_path, "cpu")
    diff, agreement, sizes = _parity(wrapper, session, x, task, input_name)
    import onnxscript

    report = {
        "model": str(onnx_path), "exported_from": str(folder), "task": task.name,
        "max_abs_diff": diff, "top1_agreement": agreement, "images": int(len(x)), "image_source": where,
        "modality": kind, "input": {"name": input_name, "dtype": dtype, "shape": ["batch", *x.shape[1:]]},
        "batch_sizes_checked": sizes, "tolerance": float(tolerance),
        "passed": diff is not None and diff <= tolerance, "opset": opset,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "onnxscript": getattr(onnxscript, "__version__", None)},
    }
    (out / REPORT_NAME).write_text(json.dumps(report, indent=2))
    if not report["passed"]:
        shown = "not a finite number" if diff is None else f"{diff:.3g}"
        raise ModelError(f"the ONNX model differs from the PyTorch model by up to {shown} on {len(x)} {_noun(kind)}, "
                         f"above the tolerance {tolerance:g} (see {out / REPORT_NAME})",
                         "rerun with --debug to see the exporter's warnings, or pass a larger --tolerance if "
                         "that difference is acceptable")
    return report


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def _kind(config: Mapping[str, Any]) -> str:
    """The saved model's input modality (``image`` unless its data config names another)."""
    return str((config.get("data_config") or {}).get("modality") or "image")


def _noun(kind: str) -> str:
    return "image(s)" if kind == "image" else f"{kind}(s)" if kind.isalpha() else f"{kind} input(s)"


def _input_name(config: Mapping[str, Any]) -> str:
    """The graph's input name: ``image``, or what the modality names (``Modality.onnx_input``; text:
    ``input_ids``), else the modality's name."""
    kind = _kind(config)
    if kind == "image":
        return INPUT_NAME
    from .modality import get_modality

    return str(getattr(get_modality(kind), "onnx_input", None) or kind)


def _model_inputs(items: Sequence[Any], config: Mapping[str, Any]) -> torch.Tensor:
    """``items`` as the model's input tensor on the CPU, prepared as ``autotl predict`` prepares them:
    float32 images, or the modality's own tensor (text: int64 token ids)."""
    data = image_tensors(items, config) if _kind(config) == "image" else input_tensors(items, config)
    x = data.x.detach().to("cpu")
    return (x.float() if x.is_floating_point() else x).contiguous()


def _export_graph(wrapper: torch.nn.Module, x: torch.Tensor, path: Path, task: Any,
                  config: Mapping[str, Any], input_name: str = INPUT_NAME) -> None:
    """``torch.onnx.export`` (the dynamo exporter, fp32, CPU) with a dynamic batch axis, quietly
    (its progress lines, warnings and onnxscript's optimizer log only with --debug, through the
    warning filters and the logger's level)."""
    import logging
    import warnings

    example = x[:2] if len(x) >= 2 else x[:1].expand(2, *x.shape[1:]).contiguous()  # batch 1 would fix the axis
    weight_bytes = sum(p.numel() * 4 for p in wrapper.parameters())
    log = logging.getLogger("onnxscript")
    level = log.level
    if not log.isEnabledFor(logging.DEBUG):  # e.g. "Evaluation failed: ..." while folding constants
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (example,), str(path), dynamo=True, input_names=[input_name],
                              output_names=[output_name(task)], verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                              external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    except AutotlError:
        raise
    except Exception as exc:
        name = config.get("architecture") or config.get("source_model")
        raise ModelError(f"torch.onnx.export could not export {name}: {_first_line(exc)}",
                         "rerun with --debug for the exporter's traceback; the PyTorch model still predicts "
                         "with autotl predict") from exc
    finally:
        log.setLevel(level)


def _parity(wrapper: torch.nn.Module, session: Any, x: torch.Tensor, task: Any, input_name: str = INPUT_NAME
            ) -> Tuple[Optional[float], Optional[float], List[int]]:
    """onnxruntime against PyTorch on ``x`` at each batch size (the set is cycled so every batch is
    full, even with fewer images than the batch): the largest absolute difference (None if not
    finite), the worst argmax agreement (None for regression), and the batch sizes run."""
    with torch.no_grad():
        ref = torch.cat([wrapper(x[i:i + PREDICT_BATCH]) for i in range(0, len(x), PREDICT_BATCH)]).numpy()
    xs = x.numpy()
    n = len(xs)
    sizes = sorted({*PARITY_BATCH_SIZES, n})
    worst, agreement = 0.0, []
    for b in sizes:
        idx = np.resize(np.arange(n), -(-n // b) * b)
        got = np.concatenate([session.run(None, {input_name: xs[idx[i:i + b]]})[0] for i in range(0, len(idx), b)])
        expected = ref[idx]
        if got.shape != expected.shape:
            raise ModelError(f"the ONNX model gives outputs of shape {got.shape[1:]} at batch {b}, PyTorch "
                             f"{expected.shape[1:]}", "rerun with --debug and report the model")
        d = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
        worst = worst if d <= worst else d  # a NaN difference sticks
        if task.name != "regression":
            agreement.append(float(np.mean(got.argmax(1) == expected.argmax(1))))
    diff = worst if np.isfinite(worst) else None
    return diff, (min(agreement) if agreement else None), sizes


def _parity_items(folder: Path, config: Mapping[str, Any], images: Optional[Sequence[str]],
                  plugins: Any) -> Tuple[List[Any], str]:
    """Up to 100 held-out inputs, evenly spaced: from ``images`` when given (image files or folders;
    for another modality, CSV files as ``autotl predict`` reads them), else the test split the run
    recorded (``summary.json``'s, or the study's, ``dataset``)."""
    kind = _kind(config)
    if images:
        if kind == "image":
            items = list(_expand_images(images))
        else:
            items = [item for item, _ in _read_texts(images, kind)]
        where = "--images"
    else:
        found = recorded_test_items(folder, config, plugins)
        if isinstance(found, str):
            what = "images" if kind == "image" else f"{kind} inputs"
            fix = ("pass --images with a few held-out image files or folders" if kind == "image" else
                   "pass --images with a CSV of held-out inputs (a text column, as autotl predict reads)")
            raise ModelError(f"no {what} to check the ONNX model on: {found}", fix)
        items, where = found
    if len(items) > MAX_PARITY_IMAGES:
        keep = np.unique(np.linspace(0, len(items) - 1, num=MAX_PARITY_IMAGES).round().astype(int))
        items = [items[i] for i in keep]
    return items, where


def _dataset_facts(folder: Path, config: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The ``dataset`` facts of the run that wrote ``folder``: its run folder is the parent of
    ``best/`` (or the grandparent of ``top/trial-N/``); ``summary.json`` first, else the study in
    the run folder's journal."""
    study = config.get("study")
    runs = [folder.parent, folder.parent.parent]
    for run in runs:
        try:
            summary = json.loads((run / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(summary, dict) and (study is None or summary.get("study") == study):
            return summary.get("dataset")
    if study is None:
        return None
    for run in runs:
        journal = run / "study.journal"
        if not journal.is_file():
            continue
        try:
            import optuna

            from .storage import make_storage

            return optuna.load_study(study_name=study, storage=make_storage(None, run)).user_attrs.get("dataset")
        except Exception:  # another study's journal, or one that cannot be read: not this run's facts
            continue
    return None


def recorded_test_items(folder: Path, config: Mapping[str, Any], plugins: Any = None
                        ) -> "Tuple[List[Any], str] | str":
    """The test split of the data the run searched: ``(items, where)``, or why it cannot be had.
    Only the test split is listed (not the whole data set loaded), so a large data set costs
    nothing here."""
    from . import data as D

    facts = _dataset_facts(folder, config)
    if not facts:
        return f"{folder} records no data set (no summary.json or study beside it)"
    source = str(facts.get("source") or "")
    if not (facts.get("images") or {}).get("test"):
        return f"the run's data {source!r} has no test split"
    try:
        if source.startswith("builtin:"):
            if plugins is None:
                from .plugins import get_plugin_manager
                plugins = get_plugin_manager()
            rows = D._builtin_splits(source.split(":", 1)[1], plugins).get("test") or []
        elif source.lower().endswith(".csv"):
            rows = D._csv_splits(Path(source), facts.get("task") or "auto")[0].get("test") or []
        else:
            test_dir = D._split_dir(Path(source), "test")
            rows = D._class_folder_items(test_dir) if test_dir else []
    except (AutotlError, OSError) as exc:
        return f"the run's test split ({source!r}) cannot be read here: {exc}"
    if not rows:
        return f"the run's test split ({source!r}) is not there any more"
    return [r[0] for r in rows], f"the test split of {source}"


# -- prediction ------------------------------------------------------------------------------------

def onnx_model_file(path: str) -> Optional[Path]:
    """The ONNX graph ``path`` names, or None when it is not an ONNX export: a ``.onnx`` file, or
    a folder whose ``config.json`` says ``format: "onnx"``. Cheap (no import of onnxruntime), so
    ``autotl predict`` can ask it first."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        return p
    if p.is_dir() and (p / CONFIG_NAME).is_file():
        try:
            config = json.loads((p / CONFIG_NAME).read_text())
        except (OSError, ValueError):
            return None
        if isinstance(config, dict) and config.get("format") == "onnx":
            return p / str(config.get("onnx") or ONNX_NAME)
    return None


def read_onnx_config(path: str) -> Tuple[Path, Dict[str, Any]]:
    """The ONNX graph and the ``config.json`` beside it (classes, task, preprocessing)."""
    model = onnx_model_file(path)
    if model is None:
        raise ModelError(f"{path!r} is not an ONNX export", "pass the model.onnx that autotl export wrote, or its folder")
    config_path = model.parent / CONFIG_NAME
    if not model.is_file():
        raise ModelError(f"ONNX model {str(model)!r} does not exist",
                         "pass the model.onnx that autotl export wrote, or its folder")
    try:
        config = json.loads(config_path.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"no {CONFIG_NAME} beside {model}",
                         f"keep the {CONFIG_NAME} that autotl export wrote next to {model.name}") from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{config_path} is not valid JSON", "export the model again with autotl export") from exc
    if not isinstance(config, dict) or config.get("format") != "onnx" or "data_config" not in config:
        raise ModelError(f"{config_path} is not the config of an ONNX export",
                         "export the model again with autotl export RUN --format onnx --out DIR")
    return model, config


def _providers(device: str) -> List[Any]:
    """onnxruntime's execution providers for ``--device``: CUDA when asked for (or, with auto,
    when this onnxruntime has it), else the CPU."""
    import onnxruntime as ort

    spec = (device or "auto").strip().lower()
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if spec == "cpu":
        return ["CPUExecutionProvider"]
    if spec == "auto":
        return (["CUDAExecutionProvider"] if cuda else []) + ["CPUExecutionProvider"]
    if spec.startswith("cuda"):
        if not cuda:
            raise UsageError(f"--device {spec}: this onnxruntime has no CUDA provider",
                             "pip install onnxruntime-gpu, or use --device cpu")
        index = spec.split(":", 1)[1] if ":" in spec else "0"
        if not index.isdigit():
            raise UsageError(f"--device {spec!r} is not a device", "use cuda or cuda:0")
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise UsageError(f"--device {spec!r} is not a device", "use auto, cpu, cuda or cuda:i")


def _session(model: Path, device: str) -> Any:
    """An onnxruntime session on ``model``, quiet, with as many threads as torch uses here."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    try:
        return ort.InferenceSession(str(model), sess_options=options, providers=_providers(device))
    except AutotlError:
        raise
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load {model}: {_first_line(exc)}",
                         "export the model again with autotl export") from exc


def _ensure_modality(kind: str) -> None:
    """Make sure the modality that prepares this model's inputs is registered: an ONNX predict loads
    no plugins, so for another modality than images, load the default ones (the built-in
    ``autotl_text`` registers ``text``)."""
    if kind == "image":
        return
    from .errors import PluginError
    from .modality import get_modality

    try:
        get_modality(kind)
    except PluginError:
        from .plugins import get_plugin_manager

        get_plugin_manager()  # registers the modalities of the built-in and installed plugins
        get_modality(kind)  # still missing: its one-line error


def predict_onnx(model_path: str, images: Sequence[str], *, device: str = "auto",
                 out: Optional[str] = None) -> List[Dict[str, Any]]:
    """:func:`autotl.export.predict` through onnxruntime: the same preprocessing and the same rows
    (and CSV), from ``model.onnx`` and its ``config.json``; no PyTorch model is built."""
    _require("onnxruntime")
    model, config = read_onnx_config(model_path)
    _ensure_modality(_kind(config))
    paths, data = read_inputs(images, config)
    x = data.x.detach().to("cpu")
    xs = (x.float() if x.is_floating_point() else x).numpy()
    session = _session(model, device)
    name = session.get_inputs()[0].name
    outputs = np.concatenate([session.run(None, {name: xs[i:i + PREDICT_BATCH]})[0]
                              for i in range(0, len(xs), PREDICT_BATCH)])
    return prediction_rows(paths, outputs, config, out=out)


__all__ = ["export_onnx", "predict_onnx", "onnx_model_file", "read_onnx_config", "recorded_test_items",
           "TaskOutputs", "ONNX_NAME", "REPORT_NAME"]
