"""Splits -> what a trial trains and scores on: resident tensors or streamed batches.

Preprocessing follows the source's data config through its modality (:mod:`autotl.modality`,
chosen by ``data_config["modality"]``). For images, timm's ``create_transform``: the evaluation
resize (at decode time), then the centre crop, or the trial's :class:`Augmentation`, then
normalisation on the device; for text (a plugin), token ids. :class:`TensorCache` decides per split
and data config whether it is kept resident or streamed from the disk cache, and shares the result
among the search's trials.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .streaming import StreamSet, loader_workers
from .config import DATA_PATHS
from .types import DATA_CONFIG_KEYS


#: Magnitudes are capped at 9 (``mmax9``): at timm's default cap of 10, Posterize asks Pillow for
#: 0 bits, which Pillow 11 refuses, and the trial would fail.
MAX_MAGNITUDE = 9
#: The automatic policies, as timm ``rand_augment_transform`` strings for a magnitude ``m``.
POLICIES = {
    "randaugment": "rand-m{m}-mstd0.5-mmax9-inc1",  # RandAugment: 2 ops at magnitude m +- noise
    "trivialaugment": "rand-n1-m{m}-mstd101-mmax9-inc1",  # TrivialAugment: 1 op, magnitude uniform in [0, m]
}


@dataclass(frozen=True)
class Augmentation:
    """A trial's training augmentation, as independent components (each off by default).

    Nothing is implied: a flip happens only when ``hflip`` > 0, because flips are wrong for digits,
    text, documents and some medical images, and "geometric jitter without flips" must be expressible.

    Attributes:
        crop_scale: the smallest image area a random-resized crop keeps; 1.0 keeps the evaluation crop.
        hflip: the probability of a horizontal flip.
        translate: the largest shift, as a fraction of the image side (edge pixels fill the border).
        policy: ``none``, ``randaugment`` or ``trivialaugment`` (timm's implementations).
        magnitude: the policy's magnitude, 1 to 9.
    """

    crop_scale: float = 1.0
    hflip: float = 0.0
    translate: float = 0.0
    policy: str = "none"
    magnitude: int = MAX_MAGNITUDE

    @classmethod
    def from_params(cls, params: Any) -> "Augmentation":
        """The components of a :class:`autotl.space.TrialParams` (missing ones are off)."""
        magnitude = getattr(params, "aug_magnitude", None)
        return cls(crop_scale=float(getattr(params, "crop_scale", 1.0)), hflip=float(getattr(params, "hflip", 0.0)),
                   translate=float(getattr(params, "translate", 0.0)), policy=getattr(params, "augmentation", "none"),
                   magnitude=MAX_MAGNITUDE if magnitude is None else int(magnitude))

    @property
    def active(self) -> bool:
        """Whether any component changes the images; without one, training reuses the fixed tensors."""
        return self.crop_scale < 1.0 or self.hflip > 0 or self.translate > 0 or self.policy != "none"


@dataclass(frozen=True, eq=False)
class TensorSet:
    """A resident split: model inputs ``x`` (N, ...: normalised images (N, C, H, W), token ids
    (N, L)) and their targets ``y``.

    ``digest`` names the content (the feature cache keys on it); without one, the bytes of ``x``
    are hashed when first asked, and remembered on the set itself.
    """

    x: torch.Tensor
    y: torch.Tensor
    digest: Optional[str] = None
    augmented = False

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def nbytes(self) -> int:
        return self.x.numel() * self.x.element_size() + self.y.numel() * self.y.element_size()

    def content_digest(self) -> str:
        if self.digest is None:
            h = hashlib.blake2b(digest_size=16)
            x = self.x.detach().to("cpu").contiguous()
            h.update(f"{x.dtype}{tuple(x.shape)}".encode())
            h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes() if x.numel() else b"")
            object.__setattr__(self, "digest", h.hexdigest())
        return self.digest

    def batches(self, batches: Sequence[Any], device: torch.device) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(inputs on ``device``, their positions) per batch, in order."""
        for idx in batches:
            if isinstance(idx, range):  # consecutive rows: a view, no gather
                yield self.x[idx.start:idx.stop].to(device, non_blocking=True), torch.arange(idx.start, idx.stop)
            else:
                idx = torch.as_tensor(idx, dtype=torch.long)
                yield self.x[idx].to(device, non_blocking=True), idx


def train_steps(data_config: Mapping[str, Any], augment: Augmentation) -> Optional[List[Any]]:
    """The PIL steps of one :class:`Augmentation`'s training view, or None when it changes nothing.

    Geometry first (timm's random-resized crop, or the evaluation resize and centre crop), then
    torchvision's flip and edge-padded random crop for the shift, then timm's RandAugment or
    TrivialAugment. Tensor conversion and normalisation follow on the device.
    """
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp
    from torchvision import transforms as T

    if not augment.active:
        return None
    size = tuple(data_config["input_size"][1:])
    interpolation = data_config.get("interpolation", "bilinear")
    geometry = list(eval_transform(data_config).transforms)[:-2]  # [resize, centre crop]
    steps: List[Any] = []
    if augment.crop_scale < 1.0:
        steps.append(RandomResizedCropAndInterpolation(size, scale=(augment.crop_scale, 1.0),
                                                       interpolation=interpolation))
    else:
        steps += geometry
    if augment.hflip > 0:
        steps.append(T.RandomHorizontalFlip(p=augment.hflip))
    shift = int(round(augment.translate * min(size)))
    if shift > 0:
        steps.append(T.RandomCrop(size, padding=shift, padding_mode="edge"))
    if augment.policy != "none":
        mean = data_config.get("mean", (0.485, 0.456, 0.406))
        hparams = {"translate_const": int(min(size) * 0.45), "img_mean": tuple(int(round(255 * x)) for x in mean),
                   "interpolation": str_to_pil_interp(interpolation if interpolation != "random" else "bilinear")}
        magnitude = max(1, min(MAX_MAGNITUDE, augment.magnitude))
        steps.append(rand_augment_transform(POLICIES[augment.policy].format(m=magnitude), hparams))
    return steps


def train_transform(data_config: Mapping[str, Any], augment: Augmentation):
    """:func:`train_steps` then timm's tensor conversion and normalisation, as one transform of a
    PIL image (or None when the augmentation changes nothing)."""
    from torchvision import transforms as T

    steps = train_steps(data_config, augment)
    return None if steps is None else T.Compose(steps + list(eval_transform(data_config).transforms)[-2:])


def eval_transform(data_config: Mapping[str, Any]):
    """timm's deterministic preprocessing for a data config (resize, center crop, normalise)."""
    from timm.data import create_transform

    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items() if k in DATA_CONFIG_KEYS}
    return create_transform(**cfg, is_training=False)


def _resident(stream: StreamSet, device: torch.device = torch.device("cpu")) -> TensorSet:
    """A streamed split read once into memory, through the very loader that streams it (so a
    resident split and a streamed one give a trial the same numbers)."""
    from .streaming import sequential

    xs, ys = [], []
    for x, positions in stream.batches(sequential(len(stream)), device):
        xs.append(x)
        ys.append(stream.y[positions.cpu()])
    stream.close()
    if xs:
        return TensorSet(x=torch.cat(xs).contiguous(), y=torch.cat(ys), digest=stream.digest)
    empty = stream.modality.example_input(stream.data_config, 0)
    return TensorSet(x=empty, y=stream.y[:0], digest=stream.digest)


def to_tensors(items: Sequence[Any], labels: np.ndarray, data_config: Mapping[str, Any], task: Any = None,
               modality: Any = None) -> TensorSet:
    """Items (image paths, PIL images or arrays; strings for text) decoded and preprocessed into a
    resident set; labels through the task (default: class indices). The modality is the data
    config's unless given. Raises on an unreadable item."""
    from .modality import modality_of
    from .store import build_memory

    modality = modality or modality_of(data_config)
    store = build_memory(list(items), modality, data_config, digest="")
    if store.skipped:
        from .errors import DataError

        i, reason = next(iter(store.skipped.items()))
        raise DataError(f"cannot read {items[i] if isinstance(items[i], (str, Path)) else f'item {i}'}: {reason}",
                        "pass readable files")
    y = task.targets(labels) if task is not None else torch.as_tensor(labels, dtype=torch.long)
    stream = StreamSet(store=store, rows=np.arange(len(items)), y=y, view=modality.view(data_config),
                       modality=modality, data_config=dict(data_config), digest="", workers=0)
    return dataclasses.replace(_resident(stream), digest=None)


DEFAULT_RESIDENT_MB = 512
#: A resident split also keeps the decoded images its tensors were made from (uint8, a little larger
#: than the crop): budget half as much again for them.
RESIDENT_OVERHEAD = 1.5


class TensorCache:
    """A search's data path: each split in the form a trial reads it, made once and shared.

    How a split is held, per ``data_path``:

    * ``resident``: preprocessed float32 tensors in memory (moved to the device whole), built from
      stored forms kept in memory. Fastest for small sets, and what the frozen-feature cache and
      unaugmented trials read directly.
    * ``cache``: stored forms written once to ``cache_dir`` (see :mod:`autotl.store`) and streamed
      in batches; memory stays flat whatever the data size.
    * ``stream``: nothing stored; every epoch decodes the source files again.
    The modality comes from each data config (``modality`` given here overrides it for every one).

    * ``auto`` (default): ``resident`` when the model inputs of the splits a trial reads together
      (train and val, see :meth:`expect`), and the decoded images they come from, fit
      ``resident_mb``; else ``cache`` (``stream`` without a ``cache_dir``). Resident sets live in an LRU bounded by ``resident_mb`` in
      all (stored forms included); an evicted one is rebuilt when asked again.
    """

    def __init__(self, task: Any = None, *, data_path: str = "auto", resident_mb: float = DEFAULT_RESIDENT_MB,
                 cache_dir: Optional[Path] = None, modality: Any = None, pin_memory: bool = False) -> None:
        if data_path not in DATA_PATHS:
            raise ValueError(f"data_path must be one of {DATA_PATHS}")
        self.task, self.data_path, self.pin_memory = task, data_path, pin_memory  # pinned batches for a GPU
        self.budget = int(resident_mb * 2**20)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.modality = modality  # None: each data config's own
        self._resident: "OrderedDict[Tuple[str, str], Any]" = OrderedDict()
        self._stores: Dict[Tuple[str, str], Any] = {}
        self.skipped: Dict[str, str] = {}  # shown path -> reason: items found unreadable after loading
        self._together = 0  # samples of the splits every trial reads (train + val)

    def modality_for(self, data_config: Mapping[str, Any]) -> Any:
        """The modality that reads inputs for ``data_config``."""
        from .modality import modality_of

        return self.modality if self.modality is not None else modality_of(data_config)

    def expect(self, *splits: Any) -> None:
        """Declare the splits every trial reads: ``auto`` keeps them resident only if all fit at once,
        so that one never evicts another between trials."""
        self._together = sum(len(s) for s in splits if s is not None)

    @property
    def resident_bytes(self) -> int:
        return sum(v.nbytes for v in self._resident.values())

    def mode(self, split: Any, data_config: Mapping[str, Any]) -> str:
        """How ``split`` is held for this data config: resident, cache or stream."""
        if self.data_path != "auto":
            return self.data_path
        samples = max(len(split), self._together)
        fits = samples * self.modality_for(data_config).input_bytes(data_config) * RESIDENT_OVERHEAD <= self.budget
        return "resident" if fits else "cache" if self.cache_dir is not None else "stream"

    def _keep(self, key: Tuple[str, str], value: Any) -> Any:
        self._resident[key] = value
        self._resident.move_to_end(key)
        while self.resident_bytes > self.budget and len(self._resident) > 1:
            self._resident.popitem(last=False)
        return value

    def _store(self, split: Any, data_config: Mapping[str, Any], mode: str) -> Any:
        from .store import LiveStore, build_memory, open_disk, store_digest

        modality = self.modality_for(data_config)
        skey = modality.stored_key(data_config)
        digest = store_digest(split.digest, skey)
        key = ("store", digest)
        if mode == "resident" and key in self._resident:
            self._resident.move_to_end(key)
            return self._resident[key]
        if mode != "resident" and (mode, digest) in self._stores:
            return self._stores[(mode, digest)]
        workers = loader_workers(len(split))
        if mode == "resident":
            store = self._keep(key, build_memory(split.items, modality, data_config, digest, workers))
        elif mode == "cache":
            if self.cache_dir is None:
                raise ValueError("the cache data path needs a cache folder (TensorCache(cache_dir=...))")
            store = open_disk(self.cache_dir, split.items, modality, data_config, digest, workers)
        else:
            store = LiveStore(split.items, modality, data_config, digest)
        self._stores.pop((mode, digest), None)
        if mode != "resident":
            self._stores[(mode, digest)] = store
        self._report_skipped(split, store)
        return store

    def _report_skipped(self, split: Any, store: Any) -> None:
        from .errors import warn

        new = {split.paths[i]: reason for i, reason in store.skipped.items() if split.paths[i] not in self.skipped}
        if new:
            self.skipped.update(new)
            first = next(iter(new))
            warn(f"skipped {len(new)} unreadable image(s) found while decoding, e.g. {first} ({new[first]})",
                 "remove or replace them; the search goes on without them")

    def stream(self, split: Any, data_config: Mapping[str, Any], augment: Optional[Augmentation] = None,
               pin_memory: bool = False, mode: Optional[str] = None) -> StreamSet:
        """``split`` as a :class:`StreamSet`: the evaluation view, or ``augment``'s training view."""
        mode = mode or self.mode(split, data_config)
        store = self._store(split, data_config, mode)
        rows = np.array([i for i in range(len(split)) if i not in store.skipped and split.paths[i] not in self.skipped],
                        dtype=np.int64)
        labels = split.labels[rows] if len(rows) else split.labels[:0]
        y = self.task.targets(labels) if self.task is not None else torch.as_tensor(labels, dtype=torch.long)
        modality = self.modality_for(data_config)
        augmented = augment is not None and augment.active and modality.augments
        digest = hashlib.blake2b(json.dumps([store.digest, len(rows), data_config, augmented], sort_keys=True,
                                            default=str).encode(), digest_size=16).hexdigest()
        return StreamSet(store=store, rows=rows, y=y, view=modality.view(data_config, augment if augmented else None),
                         modality=modality, data_config=dict(data_config), digest=digest, shown=[split.paths[i] for i in rows],
                         augmented=augmented, pin_memory=pin_memory or self.pin_memory, known=self.skipped)

    def get(self, split: Any, data_config: Mapping[str, Any]) -> Any:
        """The split's evaluation view: a resident :class:`TensorSet`, or a :class:`StreamSet`."""
        mode = self.mode(split, data_config)
        if mode != "resident":
            return self.stream(split, data_config, mode=mode)
        key = (split.digest, json.dumps(data_config, sort_keys=True, default=str))
        if key in self._resident:
            self._resident.move_to_end(key)
            return self._resident[key]
        return self._keep(key, _resident(self.stream(split, data_config, mode=mode)))

    def train(self, split: Any, data_config: Mapping[str, Any], augment: Augmentation, pin_memory: bool = False) -> Any:
        """The training split: the evaluation view when the trial does not augment, else a
        :class:`StreamSet` that draws new augmented views every epoch (in pinned memory for a GPU).
        A modality whose views take no augmentation (text) always gets the evaluation view."""
        if not augment.active or not self.modality_for(data_config).augments:
            return self.get(split, data_config)
        return self.stream(split, data_config, augment, pin_memory=pin_memory)
