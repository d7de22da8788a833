"""The best model on disk: ``model.safetensors`` + ``config.json``, and prediction from it.

Format ``timm``: the weights load into plain ``timm.create_model(architecture,
num_classes=C, **model_kwargs)`` with no autotl import; ``config.json`` spells out how.
Format ``autotl``: any other network; autotl rebuilds it through the plugin that registered
the source model and adapter, then loads the weights.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import DataError, ModelError
from .locks import file_lock, read_lock
from .types import SourceModel, TargetAdapter

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"  # how to rebuild the model
BEST_DIR = "best"  # a run folder's model: <run>/best/ (autotl.bestmodel decides what it holds)
PLUGINS_KEY = "plugins"  # in a format "autotl" config.json: which plugin registered the source model and adapter
PLAIN_KEY = "plain_export"  # in config.json: the source's plain-library copy of the model (SourceModel.plain_export)


def model_lock(folder: Path) -> Path:
    """The lock model folders are swapped under, and read under: one ``.swap.lock`` in the folder
    that holds them (one file, whatever the number of models kept and removed over time)."""
    return folder.parent / ".swap.lock"


def _plain_timm(architecture: str, num_classes: int, model_kwargs: Mapping[str, Any]):
    import timm

    return timm.create_model(architecture, pretrained=False, num_classes=num_classes, **dict(model_kwargs))


_PLAIN_SHAPES: Dict[str, Optional[Dict[str, Tuple[int, ...]]]] = {}


def _plain_timm_shapes(architecture: str, num_classes: int, model_kwargs: Mapping[str, Any]
                       ) -> Optional[Dict[str, Tuple[int, ...]]]:
    """Each state-dict key of plain ``timm.create_model(architecture, num_classes=C, **kwargs)`` with its
    shape (None when timm cannot build it), built once per process: every new best asks again."""
    key = json.dumps([architecture, num_classes, dict(model_kwargs)], sort_keys=True, default=str)
    if key not in _PLAIN_SHAPES:
        try:
            state = _plain_timm(architecture, num_classes, model_kwargs).state_dict()
            _PLAIN_SHAPES[key] = {k: tuple(v.shape) for k, v in state.items()}
        except Exception:
            _PLAIN_SHAPES[key] = None
    return _PLAIN_SHAPES[key]


def _loads_into_plain_timm(architecture: Optional[str], model_kwargs: Mapping[str, Any], num_classes: int,
                           state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` would load strictly into plain timm: the same keys with the same shapes."""
    if not architecture:
        return False
    shapes = _plain_timm_shapes(architecture, num_classes, model_kwargs)
    if shapes is None or set(shapes) != set(state):
        return False
    return all(hasattr(v, "shape") and tuple(v.shape) == shapes[k] for k, v in state.items())


def merged_for_export(module: torch.nn.Module, state: Mapping[str, torch.Tensor], adapter: TargetAdapter,
                      adapters: Any, adapter_params: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], TargetAdapter,
                                                                              Dict[str, Any]]:
    """The weights to export, and the adapter (with its params) that rebuilds them.

    An adapter with ``merge`` (LoRA) is folded into plain layers first: ``module`` gets ``state``,
    is merged, and the export names the adapter ``adapter.exports_as`` names (for
    ``PLAIN_HEAD``: the registered plain head) so no adapter code is needed later. ``adapters``: the
    adapter registry, or the loaded plugins, so that a missing one names the blocked plugins.

    Raises:
        PluginError: the adapter ``exports_as`` names is not registered (checked before merging).
    """
    from .heads import export_target

    if adapter.merge is None:
        return dict(state), adapter, dict(adapter_params)
    target = export_target(adapter, adapters)
    module.load_state_dict(state)
    merged = adapter.merge(module)
    plain = {k: v.detach().to("cpu", copy=True) for k, v in merged.state_dict().items()}
    return plain, target or adapter, ({} if target else dict(adapter_params))


def save_model(directory: str, state: Mapping[str, torch.Tensor], *, source: SourceModel, adapter: TargetAdapter,
               adapter_params: Mapping[str, Any], classes: Sequence[str], data_config: Mapping[str, Any],
               extra: Optional[Mapping[str, Any]] = None, architecture: Optional[str] = None,
               plugins: Any = None) -> Dict[str, Any]:
    """Write weights and config to ``directory``, replacing what was there in one step.

    ``architecture``: the timm architecture found on the trained network
    (:func:`autotl.model.timm_architecture`) when the source does not name one, so a plugin's timm network
    still exports as plain timm and predicts without the plugin. ``plugins``: the loaded plugins; a
    ``format: "autotl"`` export records which plugin registered its source model and adapter and how it
    was loaded, so :func:`load_model` can say what to pass when it is missing.
    """
    from safetensors.torch import save_file

    num_classes = len(classes)
    architecture = source.architecture or architecture
    plain = adapter.exports_plain_timm and _loads_into_plain_timm(architecture, source.model_kwargs, num_classes, state)
    config: Dict[str, Any] = {
        "format": "timm" if plain else "autotl",
        "architecture": architecture,
        "model_kwargs": dict(source.model_kwargs),
        "num_classes": num_classes,
        "classes": list(classes),
        "data_config": dict(data_config),
        "source_model": source.name,
        "adapter": adapter.name,
        "adapter_params": dict(adapter_params),
        **dict(extra or {}),
    }
    if plain:
        kw = "".join(f", {k}={v!r}" for k, v in source.model_kwargs.items())
        config["load"] = (f"import timm, safetensors.torch; model = timm.create_model({architecture!r}, "
                          f"num_classes={num_classes}{kw}); model.load_state_dict(safetensors.torch.load_file("
                          f"'{WEIGHTS_NAME}'))")
    else:
        if hasattr(plugins, "provenance"):
            config[PLUGINS_KEY] = {kind: plugins.provenance(registry, name) for kind, registry, name in
                                   (("source_model", plugins.sources, source.name),
                                    ("adapter", plugins.adapters, adapter.name)) if name in registry}
        flags = " ".join(dict.fromkeys(f for f in (_load_flag(r) for r in config.get(PLUGINS_KEY, {}).values()) if f))
        inputs = "IMAGES..." if (data_config or {}).get("modality", "image") == "image" else "INPUTS.csv..."
        config["load"] = (f"autotl predict {directory} {inputs} {flags}" if flags else
                          f"autotl predict {directory} {inputs} (needs the plugin that registers {source.name!r})")
    target = Path(directory)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_NAME))
        if getattr(source, "plain_export", None) is not None:
            config[PLAIN_KEY] = _plain_export(source, adapter, state, tmp, config)
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, default=str))
    except BaseException:  # e.g. a full disk: leave the old best/ as it was, and no half-written folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    with file_lock(model_lock(target)):  # readers (load_model) never see the folder half-swapped
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return config


def _plain_export(source: SourceModel, adapter: TargetAdapter, state: Mapping[str, torch.Tensor], folder: Path,
                  config: Mapping[str, Any]) -> Dict[str, Any]:
    """What ``config.json`` records under ``plain_export``: the source's own export of the model in its
    library's format (:attr:`autotl.SourceModel.plain_export`), written into ``folder`` beside the
    autotl files, when the adapter is the plain head; otherwise (or when the source's export refuses
    these weights) ``why_not``. The model folder is written either way: the plain copy is an extra."""
    from .errors import AutotlError, warn

    if not getattr(adapter, "plain_head", False):
        return {"library": None, "why_not": f"the {adapter.name!r} adapter is not a plain linear head on the pooled "
                                            "features (only the plain head, or an adapter merged into it such as "
                                            "LoRA, exports without autotl); load it with autotl predict"}
    try:
        record = dict(source.plain_export(state, folder, dict(config)) or {})
        json.dumps(record)
    except AutotlError as exc:
        return {"library": None, "why_not": str(exc)}
    except Exception as exc:  # a plugin's bug must not cost the search its best model
        line = (str(exc).strip().splitlines() or [""])[0][:200]
        warn(f"source model {source.name!r}: its plain export failed ({type(exc).__name__}: {line})",
             "the autotl model folder is written; load it with autotl predict, and report the plugin's bug")
        return {"library": None, "why_not": f"the source's plain export failed: {type(exc).__name__}: {line}"}
    return record


def _load_flag(record: Mapping[str, Any]) -> Optional[str]:
    """The flag that loads a recorded plugin again (None for a built-in plugin or an entry point,
    which load by themselves)."""
    if record.get("from") in ("--plugin", "--plugins-dir") and record.get("value"):
        return f"{record['from']} {record['value']}"
    return None


def _missing_plugin(folder: Path, config: Mapping[str, Any], kind: str, name: str) -> ModelError:
    """A one-line error for a ``format: "autotl"`` model whose source model or adapter no loaded plugin
    registers: what the model needs, from which plugin, and the flag to pass. The plugin recorded in
    ``config.json`` is only named, never imported: a run folder from elsewhere must not run code."""
    label = "source model" if kind == "source_model" else "target adapter"
    record = (config.get(PLUGINS_KEY) or {}).get(kind)
    if not isinstance(record, Mapping) or not record.get("plugin"):
        return ModelError(f"model in {folder} needs {label} {name!r}, which no loaded plugin registers",
                          "rerun with --plugin PATH_OR_MODULE naming the plugin that registers it")
    plugin, origin, value = record["plugin"], record.get("from"), record.get("value")
    flag = _load_flag(record)
    if flag:
        return ModelError(f"model in {folder} needs {label} {name!r} from plugin {plugin!r} (loaded with {flag})",
                          f"rerun with {flag}")
    if origin == "entry point":
        package = f" (package {record['package']!r})" if record.get("package") else ""
        return ModelError(f"model in {folder} needs {label} {name!r} from plugin {plugin!r}, an installed entry "
                          f"point{package} that is not installed or not loaded here",
                          f"install it{package}, unset AUTOTL_DISABLE_PLUGIN_AUTOLOAD, or rerun with --plugin "
                          f"{str(value).split(':', 1)[0] if value else 'PATH_OR_MODULE'}")
    if origin == "built-in":
        return ModelError(f"model in {folder} needs {label} {name!r} from the built-in plugin {plugin!r}, which is "
                          "not loaded or no longer registers it",
                          f"do not pass --block-plugin {plugin}, or use the autotl version that wrote the model")
    return ModelError(f"model in {folder} needs {label} {name!r} from plugin {plugin!r}, which is not loaded",
                      f"rerun with --plugin PATH_OR_MODULE naming plugin {plugin!r}")


def model_folder(model_dir: str) -> Path:
    """The model folder ``model_dir`` names: itself, or a run folder's ``best/``."""
    path = Path(model_dir)
    for candidate in (path, path / BEST_DIR):
        lock = model_lock(candidate)
        if lock.exists():  # written by save_model: look while no swap is under way
            with read_lock(lock):
                found = (candidate / CONFIG_NAME).is_file() and (candidate / WEIGHTS_NAME).is_file()
        else:
            found = (candidate / CONFIG_NAME).is_file() and (candidate / WEIGHTS_NAME).is_file()
        if found:
            return candidate
    raise ModelError(f"no saved model in {model_dir!r}",
                     f"pass a run folder or its best/ folder (with {CONFIG_NAME} and {WEIGHTS_NAME})")


def _config(folder: Path) -> Dict[str, Any]:
    try:
        return json.loads((folder / CONFIG_NAME).read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"no saved model in {str(folder)!r}", "pass a run folder or a model folder") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"{folder / CONFIG_NAME} is not valid JSON", "re-export the model") from exc


def read_config(model_dir: str) -> Tuple[Path, Dict[str, Any]]:
    """Find and read ``config.json`` in a model folder or a run folder (its ``best/``)."""
    folder = model_folder(model_dir)
    with read_lock(model_lock(folder)):
        return folder, _config(folder)


def load_model(model_dir: str, plugins: Any = None) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """Rebuild the saved model and load its weights (through safetensors only). The config and the
    weights are read under the folder's lock, so both come from the same model even while another
    worker replaces it. A ``format: "autotl"`` model whose plugin is not among ``plugins`` raises a
    ModelError naming that plugin and the flag that loads it; the plugin path the folder records is
    never imported, since a run folder may come from anywhere."""
    from .checkpoints import read_weights

    folder = model_folder(model_dir)
    with read_lock(model_lock(folder)):
        config = _config(folder)
        state = read_weights(str(folder / WEIGHTS_NAME))
    if config.get("format") == "timm":
        module = _plain_timm(config["architecture"], int(config["num_classes"]), config.get("model_kwargs") or {})
    else:
        from .model import build_model

        if plugins is None:
            from .plugins import get_plugin_manager
            plugins = get_plugin_manager()
        for kind, registry in (("source_model", plugins.sources), ("adapter", plugins.adapters)):
            if config.get(kind) not in registry:
                raise _missing_plugin(folder, config, kind, str(config.get(kind)))
        source = plugins.sources.get(config["source_model"])
        adapter = plugins.adapters.get(config["adapter"])
        net = (source.build_untrained or source.build)()
        module = build_model(source, adapter, int(config["num_classes"]), config.get("adapter_params") or {},
                             net=net).module
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"the weights in {folder} do not fit {config.get('architecture') or config.get('source_model')}",
                         "re-export the model with this version of autotl") from exc
    module.eval()
    return module, config


def predict(model_dir: str, images: Sequence[str], *, plugins: Any = None, device: str = "auto",
            out: Optional[str] = None) -> List[Dict[str, Any]]:
    """Predict each input with the saved model; optionally write a CSV.

    ``images``: image files or folders, or, for a model of another modality (text), CSV files with a
    ``text`` column (one text per row; other columns are ignored). Each row has ``path`` (images) or
    ``row`` and ``text`` (texts: the CSV line, and the text), then by task: multiclass ``label`` (the predicted class),
    ``confidence`` and one ``p_<class>`` column per class; multilabel ``labels`` (the labels at or
    above the threshold, joined by ``;``) and one ``p_<label>`` column per label; regression
    ``prediction``.

    ``model_dir`` may also be an ONNX export (``model.onnx``, or the folder ``autotl export``
    wrote): it then runs through onnxruntime (:mod:`autotl.onnx_export`), with the same rows.
    """
    from .onnx_export import onnx_model_file, predict_onnx
    from .tasks import task_from_config
    from .trainer import predict_outputs, resolve_device

    if onnx_model_file(model_dir) is not None:
        return predict_onnx(model_dir, images, device=device, out=out)
    module, config = load_model(model_dir, plugins)
    paths, data = read_inputs(images, config)
    dev = resolve_device(device)
    outputs = predict_outputs(module.to(dev), data, dev, task_from_config(config))
    return prediction_rows(paths, outputs, config, out=out)


def read_inputs(images: Sequence[str], config: Mapping[str, Any]) -> Tuple[List[Any], Any]:
    """What ``autotl predict`` reads for the saved model ``config`` describes: each input's leading
    columns (an image's path; a text's row and text) and the model's input tensors, prepared as the
    search prepared them. Images: files or folders; another modality (text): CSV files (see
    :func:`predict`). Shared by the PyTorch and the ONNX paths so both see exactly the same inputs."""
    if (config.get("data_config") or {}).get("modality", "image") == "image":
        paths: List[Any] = _expand_images(images)
        return paths, image_tensors(paths, config)
    rows = _read_texts(images, config["data_config"]["modality"])
    paths = [{"row": shown, **({"image": str(item[0]), "text": item[1]} if isinstance(item, tuple) else {"text": item})}
             for item, shown in rows]
    return paths, input_tensors([item for item, _ in rows], config)


def _read_texts(files: Sequence[str], modality: str = "text") -> List[Tuple[Any, str]]:
    """Every input of the CSV files (see :func:`autotl.data.read_texts`), as ModelErrors."""
    from .data import read_texts

    rows: List[Tuple[Any, str]] = []
    for f in files:
        try:
            rows += read_texts(f, modality)
        except DataError as exc:
            raise ModelError(exc.what, exc.fix or "pass CSV files with a text column") from exc
    return rows


def input_tensors(items: Sequence[Any], config: Mapping[str, Any]) -> Any:
    """``items`` (of the model's modality: texts for a text model) as the saved model's inputs, through
    its ``config["data_config"]`` and modality, as the search read them."""
    from .tensors import to_tensors

    try:
        return to_tensors(list(items), np.zeros(len(items), dtype=np.int64), config["data_config"])
    except DataError as exc:
        raise ModelError(exc.what, "pass inputs the model can read") from exc


def image_tensors(items: Sequence[Any], config: Mapping[str, Any]) -> Any:
    """``items`` (image paths, or in-memory images) preprocessed as the saved model expects: its
    ``config["data_config"]``, as :func:`autotl.tensors.to_tensors` does it for the search. Shared by
    the PyTorch and the ONNX paths so both see exactly the same inputs."""
    from .modality import IMAGE, UNREADABLE
    from .tensors import to_tensors

    bad = []
    for p in items:
        try:
            IMAGE.probe(p)
        except UNREADABLE:
            bad.append(p)
    if bad:
        raise ModelError(f"cannot read {len(bad)} image(s), e.g. {bad[0]}", "pass readable image files")
    try:
        return to_tensors(list(items), np.zeros(len(items), dtype=np.int64), config["data_config"])
    except DataError as exc:
        raise ModelError(exc.what, "pass readable image files") from exc


def prediction_rows(paths: Sequence[str], outputs: np.ndarray, config: Mapping[str, Any],
                    out: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per input from the task's outputs (see :func:`predict` for the columns); optionally
    written to the CSV ``out``. Shared by the PyTorch and the ONNX paths so their rows agree.
    ``paths``: each input's path, or a mapping of the columns that name it (texts: row and text)."""
    from .data import LABEL_SEPARATOR
    from .tasks import task_from_config

    task = task_from_config(config)
    classes = config["classes"]
    rows = []
    for p, row in zip(paths, outputs):
        lead = dict(p) if isinstance(p, Mapping) else {"path": p}
        if task.name == "regression":
            rows.append({**lead, "prediction": float(row)})
        elif task.name == "multilabel":
            chosen = [c for c, v in zip(classes, row) if v >= task.threshold]
            rows.append({**lead, "labels": LABEL_SEPARATOR.join(chosen),
                         **{f"p_{c}": float(v) for c, v in zip(classes, row)}})
        else:
            k = int(row.argmax())
            rows.append({**lead, "label": classes[k], "confidence": float(row[k]),
                         **{f"p_{c}": float(v) for c, v in zip(classes, row)}})
    if out:
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["path"])
            writer.writeheader()
            writer.writerows(rows)
    return rows


def _expand_images(images: Sequence[str]) -> List[str]:
    from .data import IMAGE_EXTENSIONS

    out: List[str] = []
    for item in images:
        path = Path(item)
        if path.is_dir():
            out += [str(p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS]
        elif path.is_file():
            out.append(str(path))
        else:
            raise ModelError(f"image {item!r} does not exist", "pass image files or folders")
    if not out:
        raise ModelError("no images to predict", "pass image files or folders that hold images")
    return out
