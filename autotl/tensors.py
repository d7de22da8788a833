"""Decoded images -> model-ready tensors, preprocessed the way each source model expects.

Preprocessing follows the source's data config through timm's ``create_transform``. The result
is cached per (image set, data config), so trials that share a backbone's preprocessing
transform the images only once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np
import torch

from .types import DATA_CONFIG_KEYS


@dataclass(frozen=True)
class TensorSet:
    """Preprocessed images ``x`` (N, C, H, W) and integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


def eval_transform(data_config: Mapping[str, Any]):
    """timm's deterministic preprocessing for a data config (resize, center crop, normalise)."""
    from timm.data import create_transform

    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items() if k in DATA_CONFIG_KEYS}
    return create_transform(**cfg, is_training=False)


def to_tensors(images: Sequence[Any], labels: np.ndarray, data_config: Mapping[str, Any]) -> TensorSet:
    transform = eval_transform(data_config)
    x = torch.stack([transform(img) for img in images]) if len(images) else torch.zeros(0, *data_config["input_size"])
    return TensorSet(x=x.contiguous(), y=torch.as_tensor(labels, dtype=torch.long))


class TensorCache:
    """Remembers preprocessed splits per data config for the life of a search."""

    def __init__(self) -> None:
        self._cache: Dict[Tuple[int, str], TensorSet] = {}

    def get(self, image_set: Any, data_config: Mapping[str, Any]) -> TensorSet:
        key = (id(image_set), json.dumps(data_config, sort_keys=True, default=str))
        if key not in self._cache:
            self._cache[key] = to_tensors(image_set.images, image_set.labels, data_config)
        return self._cache[key]
