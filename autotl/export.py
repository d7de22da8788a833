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


def _loads_into_plain_timm(source: SourceModel, num_classes: int, state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` would load strictly into plain timm: the same keys with the same shapes."""
    if not source.architecture:
        return False
    shapes = _plain_timm_shapes(source.architecture, num_classes, source.model_kwargs)
    if shapes is None or set(shapes) != set(state):
        return False
    return all(hasattr(v, "shape") and tuple(v.shape) == shapes[k] for k, v in state.items())


def merged_for_export(module: torch.nn.Module, state: Mapping[str, torch.Tensor], adapter: TargetAdapter,
                      adapters: Any, adapter_params: Mapping[str, Any]) -> Tuple[Dict[str, torch.Tensor], TargetAdapter,
                                                                              Dict[str, Any]]:
    """The weights to export, and the adapter (with its params) that rebuilds them.

    An adapter with ``merge`` (LoRA) is folded into plain layers first: ``module`` gets ``state``,
    is merged, and the export names ``adapter.exports_as`` so no adapter code is needed later.
    """
    if adapter.merge is None:
        return dict(state), adapter, dict(adapter_params)
    module.load_state_dict(state)
    merged = adapter.merge(module)
    plain = {k: v.detach().to("cpu", copy=True) for k, v in merged.state_dict().items()}
    target = adapters.get(adapter.exports_as) if adapter.exports_as else adapter
    return plain, target, ({} if adapter.exports_as else dict(adapter_params))


def save_model(directory: str, state: Mapping[str, torch.Tensor], *, source: SourceModel, adapter: TargetAdapter,
               adapter_params: Mapping[str, Any], classes: Sequence[str], data_config: Mapping[str, Any],
               extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Write weights and config to ``directory``, replacing what was there in one step."""
    from safetensors.torch import save_file

    num_classes = len(classes)
    plain = adapter.exports_plain_timm and _loads_into_plain_timm(source, num_classes, state)
    config: Dict[str, Any] = {
        "format": "timm" if plain else "autotl",
        "architecture": source.architecture,
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
        config["load"] = (f"import timm, safetensors.torch; model = timm.create_model({source.architecture!r}, "
                          f"num_classes={num_classes}{kw}); model.load_state_dict(safetensors.torch.load_file("
                          f"'{WEIGHTS_NAME}'))")
    else:
        config["load"] = f"autotl predict {directory} IMAGES... (needs the plugin that registers {source.name!r})"
    target = Path(directory)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp / WEIGHTS_NAME))
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
    worker replaces it."""
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
    """Predict each image with the saved model; optionally write a CSV.

    Each row has ``path``, then by task: multiclass ``label`` (the predicted class),
    ``confidence`` and one ``p_<class>`` column per class; multilabel ``labels`` (the labels at or
    above the threshold, joined by ``;``) and one ``p_<label>`` column per label; regression
    ``prediction``.
    """
    from .data import LABEL_SEPARATOR
    from .modality import IMAGE, UNREADABLE
    from .tasks import task_from_config
    from .tensors import to_tensors
    from .trainer import predict_outputs, resolve_device

    module, config = load_model(model_dir, plugins)
    task = task_from_config(config)
    paths = _expand_images(images)
    bad = []
    for p in paths:
        try:
            IMAGE.probe(p)
        except UNREADABLE:
            bad.append(p)
    if bad:
        raise ModelError(f"cannot read {len(bad)} image(s), e.g. {bad[0]}", "pass readable image files")
    try:
        data = to_tensors(paths, np.zeros(len(paths), dtype=np.int64), config["data_config"])
    except DataError as exc:
        raise ModelError(exc.what, "pass readable image files") from exc
    dev = resolve_device(device)
    outputs = predict_outputs(module.to(dev), data, dev, task)
    classes = config["classes"]
    rows = []
    for p, row in zip(paths, outputs):
        if task.name == "regression":
            rows.append({"path": p, "prediction": float(row)})
        elif task.name == "multilabel":
            chosen = [c for c, v in zip(classes, row) if v >= task.threshold]
            rows.append({"path": p, "labels": LABEL_SEPARATOR.join(chosen),
                         **{f"p_{c}": float(v) for c, v in zip(classes, row)}})
        else:
            k = int(row.argmax())
            rows.append({"path": p, "label": classes[k], "confidence": float(row[k]),
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
