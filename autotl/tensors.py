"""Decoded images -> model-ready tensors, preprocessed the way each source model expects.

Preprocessing follows the source's data config through timm's ``create_transform``. The result
is cached per (image set, data config), so trials that share a backbone's preprocessing
transform the images only once.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .types import DATA_CONFIG_KEYS


#: Augmentation levels and what they add to timm's training transform (random-resized crop + flip).
#: Magnitudes are capped at 9 (``mmax9``): at timm's default cap of 10, Posterize asks Pillow for
#: 0 bits, which Pillow 11 refuses, and the trial would fail.
AUGMENTATIONS = {
    "light": None,
    "randaugment": "rand-m9-mstd0.5-mmax9-inc1",  # timm's RandAugment: 2 ops at magnitude 9 +- noise
    "trivialaugment": "rand-n1-m9-mstd101-mmax9-inc1",  # 1 op at a uniformly drawn magnitude: TrivialAugment
}


@dataclass(frozen=True)
class TensorSet:
    """Preprocessed images ``x`` (N, C, H, W) and their targets ``y`` (in the task's tensor form)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def epoch_x(self) -> torch.Tensor:
        """The images to train on this epoch: always the same ones."""
        return self.x


#: Below this many images, worker processes cost more to start than the transforms they share.
MIN_IMAGES_FOR_WORKERS = 2000


def loader_workers(n_images: int, cpus: Optional[int] = None) -> int:
    """DataLoader workers for one epoch of augmentation: none for small sets or small machines,
    else one per spare core (at most 8), leaving a core to the training loop."""
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    if n_images < MIN_IMAGES_FOR_WORKERS or cpus <= 2:
        return 0
    return min(8, cpus - 1)


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, images: Sequence[Any], transform: Any) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(self.images[i])


@dataclass(frozen=True)
class AugmentedSet:
    """Training images drawn anew every epoch through a random transform."""

    images: Tuple[Any, ...]
    y: torch.Tensor
    transform: Any
    workers: Optional[int] = None  # None: loader_workers() decides
    pin_memory: bool = False

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def epoch_x(self) -> torch.Tensor:
        """This epoch's augmented images, in order (seeded by the trial through ``random`` and
        ``torch``; worker processes are seeded from torch's generator)."""
        workers = loader_workers(len(self.images)) if self.workers is None else self.workers
        if workers == 0:
            x = torch.stack([self.transform(img) for img in self.images]).contiguous()
            return x.pin_memory() if self.pin_memory else x
        loader = torch.utils.data.DataLoader(_Transformed(self.images, self.transform), batch_size=256,
                                             shuffle=False, num_workers=workers, pin_memory=self.pin_memory)
        return torch.cat(list(loader)).contiguous()


def train_transform(data_config: Mapping[str, Any], augmentation: str):
    """timm's training transform for an augmentation level: crop (scale 0.6-1) and flip, plus
    RandAugment or TrivialAugment; None for ``none``."""
    from timm.data import create_transform

    if augmentation == "none":
        return None
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items()
           if k in ("input_size", "mean", "std", "interpolation")}
    return create_transform(**cfg, is_training=True, scale=(0.6, 1.0), hflip=0.5, color_jitter=None,
                            auto_augment=AUGMENTATIONS[augmentation])


def eval_transform(data_config: Mapping[str, Any]):
    """timm's deterministic preprocessing for a data config (resize, center crop, normalise)."""
    from timm.data import create_transform

    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items() if k in DATA_CONFIG_KEYS}
    return create_transform(**cfg, is_training=False)


def to_tensors(images: Sequence[Any], labels: np.ndarray, data_config: Mapping[str, Any], task: Any = None) -> TensorSet:
    """Images through the evaluation transform; labels through the task (default: class indices)."""
    transform = eval_transform(data_config)
    x = torch.stack([transform(img) for img in images]) if len(images) else torch.zeros(0, *data_config["input_size"])
    y = task.targets(labels) if task is not None else torch.as_tensor(labels, dtype=torch.long)
    return TensorSet(x=x.contiguous(), y=y)


class TensorCache:
    """Remembers preprocessed splits per data config for the life of a search."""

    def __init__(self, task: Any = None) -> None:
        self.task = task
        self._cache: Dict[Tuple[int, str], TensorSet] = {}

    def get(self, image_set: Any, data_config: Mapping[str, Any]) -> TensorSet:
        key = (id(image_set), json.dumps(data_config, sort_keys=True, default=str))
        if key not in self._cache:
            self._cache[key] = to_tensors(image_set.images, image_set.labels, data_config, self.task)
        return self._cache[key]

    def train(self, image_set: Any, data_config: Mapping[str, Any], augmentation: str, pin_memory: bool = False) -> Any:
        """The training split: cached tensors, or an :class:`AugmentedSet` when the trial augments
        (its epochs then come in pinned memory for a GPU, when ``pin_memory``)."""
        plain = self.get(image_set, data_config)
        transform = train_transform(data_config, augmentation)
        return plain if transform is None else AugmentedSet(images=tuple(image_set.images), y=plain.y,
                                                            transform=transform, pin_memory=pin_memory)
