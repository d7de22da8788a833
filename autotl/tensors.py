"""Decoded images -> model-ready tensors, preprocessed the way each source model expects.

Preprocessing follows the source's data config through timm's ``create_transform``. The result
is cached per (image set, data config), so trials that share a backbone's preprocessing
transform the images only once.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

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


def train_transform(data_config: Mapping[str, Any], augment: Augmentation):
    """The training transform of one :class:`Augmentation`, or None when it changes nothing.

    Geometry first (timm's random-resized crop, or the evaluation resize and centre crop), then
    torchvision's flip and edge-padded random crop for the shift, then timm's RandAugment or
    TrivialAugment, then the same tensor conversion and normalisation as evaluation.
    """
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation, str_to_pil_interp
    from torchvision import transforms as T

    if not augment.active:
        return None
    size = tuple(data_config["input_size"][1:])
    interpolation = data_config.get("interpolation", "bilinear")
    evaluation = list(eval_transform(data_config).transforms)
    geometry, finish = evaluation[:-2], evaluation[-2:]  # [resize, centre crop], [to tensor, normalise]
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
    return T.Compose(steps + finish)


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

    def train(self, image_set: Any, data_config: Mapping[str, Any], augment: Augmentation,
              pin_memory: bool = False) -> Any:
        """The training split: cached tensors, or an :class:`AugmentedSet` when the trial augments
        (its epochs then come in pinned memory for a GPU, when ``pin_memory``)."""
        plain = self.get(image_set, data_config)
        transform = train_transform(data_config, augment)
        return plain if transform is None else AugmentedSet(images=tuple(image_set.images), y=plain.y,
                                                            transform=transform, pin_memory=pin_memory)
