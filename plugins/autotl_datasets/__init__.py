"""First-party plugin: built-in datasets, reachable as ``builtin:NAME``.

``digits`` and ``digits-source`` come from scikit-learn's 8x8 handwritten digits, so the demo runs
offline. The source task is classes 0-4 (all images); the target task is classes 5-9 with few
training images per class, a fixed validation split and a test split.
"""
from __future__ import annotations

from autotl import DatasetSource, hookimpl

TARGET_TRAIN_PER_CLASS = 15
TARGET_VAL_PER_CLASS = 15
SOURCE_VAL_FRACTION = 0.2


def _digits(classes):
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    keep = np.isin(digits.target, classes)
    order = np.random.RandomState(0).permutation(int(keep.sum()))
    return images[keep][order], digits.target[keep][order]


def load_digits_target():
    """Classes 5-9: 15 train and 15 val images per class, the rest for test."""
    images, labels = _digits([5, 6, 7, 8, 9])
    splits = {"train": [], "val": [], "test": []}
    seen = {}
    for img, y in zip(images, labels):
        k = seen[y] = seen.get(y, 0) + 1
        split = "train" if k <= TARGET_TRAIN_PER_CLASS else "val" if k <= TARGET_TRAIN_PER_CLASS + TARGET_VAL_PER_CLASS else "test"
        splits[split].append((img, str(int(y))))
    return splits


def load_digits_source():
    """Classes 0-4, all images, 80/20 train/val."""
    images, labels = _digits([0, 1, 2, 3, 4])
    cut = int(len(images) * (1 - SOURCE_VAL_FRACTION))
    rows = [(img, str(int(y))) for img, y in zip(images, labels)]
    return {"train": rows[:cut], "val": rows[cut:]}


@hookimpl
def autotl_register_datasets(register):
    register(DatasetSource(name="digits", load=load_digits_target,
                           description="scikit-learn digits 5-9, few-shot target task with a test split"))
    register(DatasetSource(name="digits-source", load=load_digits_source,
                           description="scikit-learn digits 0-4, the source task for the demo zoo"))
