"""What one kind of input (a modality) must provide so the data path can store, stream and batch it.

A modality turns a dataset item (a file path, a string, or an in-memory object a dataset plugin
returned) into a compact *stored form* once, the stored form into a *view* every time a batch needs
it, and a batch of views into the model's input on the device. The data path (``autotl.store``,
``autotl.streaming``, ``autotl.tensors``) and everything after it (trainer, feature cache, ranking,
predict) know nothing else about the input: a batch is always ONE tensor. Images are the built-in
implementation; a plugin adds another (text: token ids) with :func:`register_modality`, and a source
model picks one by ``data_config["modality"]`` (``image`` when absent).

The split between the steps is what keeps memory flat: the stored form is small (images: uint8,
already downscaled to the size their source's preprocessing resizes to; text: int32 token ids), so
it can sit on disk and be read back per batch; views are cheap (a crop, a flip, RandAugment; for
text the padding) and become float or int64 tensors on the device, batch by batch.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

import numpy as np
import torch


class Modality(Protocol):
    """The interface the data path calls. ``data_config`` is the source model's (``modality`` names
    the implementation; images use timm's keys).

    Attributes:
        name: the name a source's ``data_config["modality"]`` gives (``image`` when it gives none).
        stored_dtype: the numpy dtype of every stored form (images: uint8; text: int32 token ids).
        augments: whether ``view`` applies a trial's augmentation; when False, a trial's augmentation
            knobs change nothing, so its training split is the evaluation view (and cacheable).
        mixable: whether two inputs may be blended (mixup, cutmix); token ids may not.
    """

    name: str
    stored_dtype: Any
    augments: bool
    mixable: bool

    def probe(self, item: Any) -> None:
        """A cheap check at load time (e.g. the file header); raises on an item that cannot be read."""

    def size(self, item: Any) -> Tuple[int, int]:
        """The item's natural size, for the warm-start meta-features (images: width, height)."""

    def resolve(self, data_config: Mapping[str, Any]) -> Dict[str, Any]:
        """The complete data config from a source's (derived keys such as ``input_size`` filled in)."""

    def stored_key(self, data_config: Mapping[str, Any]) -> str:
        """Which data configs share a stored form: equal keys decode to the same arrays."""

    def decode(self, item: Any, data_config: Mapping[str, Any]) -> np.ndarray:
        """The item's compact stored form (``stored_dtype``); raises on an item that cannot be decoded."""

    def view(self, data_config: Mapping[str, Any], augment: Any = None) -> Callable[[np.ndarray], torch.Tensor]:
        """A function from a stored form to one sample's model input before the device step (random
        when ``augment`` is active; deterministic, the evaluation view, when it is None). Views of one
        data config all have the same shape, so a batch is one stacked tensor."""

    def to_device(self, loader: Any, data_config: Mapping[str, Any], device: Any) -> Any:
        """``loader``'s batches of (views, positions) as (model inputs on ``device``, positions): the
        one place a batch becomes what the network reads (images: normalised float; text: int64 ids)."""

    def example_input(self, data_config: Mapping[str, Any], n: int) -> torch.Tensor:
        """``n`` valid random model inputs on the CPU: what checks run a network on (its feature
        width, a feature-cache split) without any data."""

    def input_bytes(self, data_config: Mapping[str, Any]) -> int:
        """Bytes of one model input as the device reads it (what a resident split costs per sample)."""


#: Modalities by name: ``image`` is built in; a plugin registers its own with :func:`register_modality`.
_MODALITIES: Dict[str, Any] = {}


def register_modality(modality: Any) -> Any:
    """Make ``modality`` the implementation of ``data_config["modality"] == modality.name``.

    A plugin calls it from its registration hook (so nothing happens at import time). Registering
    another object under a taken name replaces it: the same plugin loaded twice is harmless.
    """
    name = getattr(modality, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError("a modality needs a non-empty str name")
    _MODALITIES[name] = modality
    return modality


def get_modality(name: str) -> Any:
    """The registered modality called ``name``.

    Raises:
        PluginError: no loaded plugin provides it.
    """
    if name not in _MODALITIES:
        from .errors import PluginError

        raise PluginError(f"no loaded plugin provides the input modality {name!r} "
                          f"(known: {', '.join(sorted(_MODALITIES))})",
                          "load the plugin that registers the source model (it registers its modality too)")
    return _MODALITIES[name]


def modality_name(data_config: Optional[Mapping[str, Any]]) -> str:
    """The modality a data config asks for (``image`` when it names none)."""
    return str((data_config or {}).get("modality") or "image")


def modality_of(data_config: Optional[Mapping[str, Any]]) -> Any:
    """The modality that reads inputs for this data config."""
    return get_modality(modality_name(data_config))


#: Errors that mean "this file is not a readable image": skipped and counted, never fatal.
UNREADABLE = (OSError, ValueError, SyntaxError, EOFError)


def _config_key(data_config: Mapping[str, Any]) -> str:
    from .types import DATA_CONFIG_KEYS

    return json.dumps({k: data_config[k] for k in sorted(data_config) if k in DATA_CONFIG_KEYS}, default=str)


class ImageModality:
    """RGB images through the source's timm preprocessing.

    Stored form: the image decoded (JPEGs at a reduced scale when they are much larger than needed,
    through Pillow's ``draft``) and resized the way timm's evaluation transform resizes it, before
    its centre crop: uint8, height x width x 3. A large photo is never held at full resolution
    beyond its own decode. The evaluation view is timm's centre crop of it; training views are the
    trial's :class:`autotl.tensors.Augmentation` on it.
    """

    name = "image"
    stored_dtype = np.uint8
    augments = True
    mixable = True

    def __init__(self) -> None:
        self._geometry: Dict[str, List[Any]] = {}

    def probe(self, item: Any) -> None:
        from PIL import Image

        if isinstance(item, (Image.Image, np.ndarray)):
            return
        with Image.open(item) as img:  # reads the header only
            img.size  # noqa: B018 - touching it is the check

    def size(self, item: Any) -> Tuple[int, int]:
        from PIL import Image

        if isinstance(item, Image.Image):
            return item.size
        if isinstance(item, np.ndarray):
            return int(item.shape[1]), int(item.shape[0])
        with Image.open(item) as img:
            return img.size

    def resolve(self, data_config: Mapping[str, Any]) -> Dict[str, Any]:
        return dict(data_config)  # timm resolved it already (autotl.model.resolve_data_config)

    def geometry(self, data_config: Mapping[str, Any]) -> List[Any]:
        """timm's evaluation resize and crop steps for this config (PIL in, PIL out)."""
        key = _config_key(data_config)
        if key not in self._geometry:
            from .tensors import eval_transform

            self._geometry[key] = list(eval_transform(data_config).transforms)[:-2]  # drop to-tensor, normalise
        return self._geometry[key]

    def stored_key(self, data_config: Mapping[str, Any]) -> str:
        return "image:" + "|".join(repr(step) for step in self.geometry(data_config)[:-1])

    def _open(self, item: Any, target: Optional[Tuple[int, int]]):
        from PIL import Image

        if isinstance(item, Image.Image):
            return item.convert("RGB")
        if isinstance(item, np.ndarray):
            arr = item if item.dtype == np.uint8 else np.clip(item, 0, 255).astype(np.uint8)
            return Image.fromarray(arr).convert("RGB")
        with Image.open(item) as img:
            if target is not None and img.format == "JPEG":
                img.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale when that still covers target
            img.load()
            return img.convert("RGB")

    def decode(self, item: Any, data_config: Mapping[str, Any]) -> np.ndarray:
        resize = self.geometry(data_config)[:-1]
        img = self._open(item, _draft_target(resize, data_config))
        for step in resize:
            img = step(img)
        return np.asarray(img, dtype=np.uint8).copy()

    def view(self, data_config: Mapping[str, Any], augment: Any = None) -> Callable[[np.ndarray], torch.Tensor]:
        from .tensors import train_steps

        steps = train_steps(data_config, augment) if augment is not None and augment.active else None
        steps = steps if steps is not None else self.geometry(data_config)
        done = {repr(step) for step in self.geometry(data_config)[:-1]}  # the resize decode already did
        return _ImageView([step for step in steps if repr(step) not in done])

    def normalization(self, data_config: Mapping[str, Any]) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
        from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        return (tuple(data_config.get("mean", IMAGENET_DEFAULT_MEAN)),
                tuple(data_config.get("std", IMAGENET_DEFAULT_STD)))

    def to_device(self, loader: Any, data_config: Mapping[str, Any], device: Any) -> Any:
        """timm's ``PrefetchLoader``: the next uint8 batch goes to the device while this one trains,
        and becomes ``(x / 255 - mean) / std`` in float32 there."""
        from timm.data.loader import PrefetchLoader

        mean, std = self.normalization(data_config)
        return PrefetchLoader(loader, mean=mean, std=std, channels=len(mean), device=device)

    def example_input(self, data_config: Mapping[str, Any], n: int) -> torch.Tensor:
        return torch.randn(n, *data_config["input_size"])

    def input_bytes(self, data_config: Mapping[str, Any]) -> int:
        c, h, w = data_config["input_size"]
        return int(c * h * w * 4)


def _draft_target(resize: Sequence[Any], data_config: Mapping[str, Any]) -> Optional[Tuple[int, int]]:
    """The smallest (width, height) the resize needs: a JPEG may be decoded at any scale that covers it."""
    size = getattr(resize[0], "size", None) if resize else None
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return int(size[1]), int(size[0])
    h, w = data_config["input_size"][1:]
    return int(w), int(h)


class _ImageView:
    """Stored uint8 array -> PIL -> the view's steps -> uint8 (C, H, W). A class, so DataLoader
    worker processes can receive it."""

    def __init__(self, steps: Sequence[Any]) -> None:
        self.steps = list(steps)

    def __call__(self, stored: np.ndarray) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import CenterCrop

        if len(self.steps) == 1 and type(self.steps[0]) is CenterCrop:  # the evaluation view: a slice
            (ch, cw), (h, w) = self.steps[0].size, stored.shape[:2]
            if h >= ch and w >= cw:  # torchvision's offsets, so the result is the same
                top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
                return torch.from_numpy(np.ascontiguousarray(stored[top:top + ch, left:left + cw])).permute(2, 0, 1).contiguous()
        img = Image.fromarray(stored)
        for step in self.steps:
            img = step(img)
        return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


IMAGE = register_modality(ImageModality())
