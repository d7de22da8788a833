"""Offline benchmark tasks, each written once as a CSV + PNG folder and reused.

Every builder takes a work folder and returns the path of ``data.csv`` (columns ``path,label,split``,
splits ``train``/``val``/``test``) under ``<work>/tasks/<name>/``. A ``task.json`` beside it records
``TASK_VERSION`` and the builder's arguments; a folder whose record differs is rebuilt, so bump
``TASK_VERSION`` whenever a builder changes. Everything is seeded: the same arguments give the same
images, byte for byte. Nothing here imports torch.

Tasks (``TASKS``):

- ``digits-fewshot``: scikit-learn digits 5-9 (the demo zoo is pretrained on 0-4), ``per_class``
  train and ``val_per_class`` val images per class, every remaining image of those classes as test
  (about 800), so the test noise is low. New classes, same domain. The image order is
  ``builtin:digits``' own, so ``per_class=15, val_per_class=15`` gives exactly its splits.
- ``digits-4shot``: the same with 4 train and 6 val images per class: selection on 30 validation
  images, where one image is 3.3 points.
- ``shift-fewshot``: the same images and splits inverted, upscaled to 32 px, rotated by 30-60 degrees
  and noised: new classes and a shifted domain.
- ``textures``: a procedural RGB texture domain far from both digits and photos, one generating
  family per class (gratings, checkerboards, dots, blotchy noise, crosshatch, waves, bricks, rings),
  each image with random frequency, phase, orientation, colours, contrast, blur and noise. It is
  meant to be learnable but not trivially separable. A frozen ImageNet network (Lite0) reaches about
  75 % with a linear probe; the digits-pretrained tiny networks of the zoo stay near chance even
  fine-tuned, so the benchmark pairs this task with the Lite0 source. Measured with the defaults (a logistic
  regression, C chosen on val, scored on test): raw pixels 13 % (chance 12.5 %), frozen ImageNet
  EfficientNet-Lite0 features 75 % at 128 px and 78 % at 224 px, frozen digits-pretrained
  ``test_resnet`` features at 32 px 12.5 %.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

TASK_VERSION = 1  # bump when a builder changes, so old work folders are rebuilt
DIGITS_TARGET = (5, 6, 7, 8, 9)

Rows = List[Tuple[Any, str]]  # (PIL image, label)
Splits = Dict[str, Rows]


# ------------------------------------------------------------------------------------------ writing

def write_task(folder: Path, splits: Mapping[str, Sequence[Any]], note: str,
               params: Optional[Mapping[str, Any]] = None) -> str:
    """Write (PIL image, label) rows per split as PNGs plus ``data.csv`` and ``task.json``; return the CSV path."""
    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    with (folder / "data.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for split, rows in splits.items():
            for i, (img, label) in enumerate(rows):
                rel = f"images/{split}-{i:04d}-{label}.png"
                img.save(folder / rel)
                writer.writerow([rel, label, split])
    meta = {"version": TASK_VERSION, "params": dict(params or {}), "images": {s: len(r) for s, r in splits.items()},
            "note": note}
    (folder / "task.json").write_text(json.dumps(meta, indent=2))
    return str(folder / "data.csv")


def cached_task(work: Path | str, name: str, params: Mapping[str, Any],
                build: Callable[[], Tuple[Splits, str]]) -> str:
    """``<work>/tasks/<name>/data.csv``, built with ``build() -> (splits, note)`` unless an up-to-date copy exists."""
    folder = Path(work) / "tasks" / name
    meta = folder / "task.json"
    if meta.is_file() and (folder / "data.csv").is_file():
        old = json.loads(meta.read_text())
        if old.get("version") == TASK_VERSION and old.get("params") == dict(params):
            return str(folder / "data.csv")
    splits, note = build()
    print(f"writing task {name!r} to {folder}", flush=True)
    return write_task(folder, splits, note, params)


# ------------------------------------------------------------------------------------------- digits

def digits_images(classes: Sequence[int] = DIGITS_TARGET) -> Rows:
    """scikit-learn's 8x8 digits of ``classes`` as grayscale PIL images, in a fixed shuffled order (seed 0)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    keep = np.flatnonzero(np.isin(digits.target, classes))
    order = keep[np.random.RandomState(0).permutation(len(keep))]
    return [(Image.fromarray(images[i], mode="L"), str(int(digits.target[i]))) for i in order]


def few_shot_splits(rows: Rows, per_class: int, val_per_class: int) -> Splits:
    """The first ``per_class`` rows of each class for train, the next ``val_per_class`` for val, the rest for test."""
    splits: Splits = {"train": [], "val": [], "test": []}
    seen: Dict[str, int] = {}
    for img, label in rows:
        k = seen[label] = seen.get(label, 0) + 1
        split = "train" if k <= per_class else "val" if k <= per_class + val_per_class else "test"
        splits[split].append((img, label))
    return splits


def shifted(img: Any, rng: Any) -> Any:
    """Upscale to 32 px, invert, rotate by 30-60 degrees (white fill), add Gaussian noise (sd 24)."""
    import numpy as np
    from PIL import Image, ImageOps

    g = ImageOps.invert(img.resize((32, 32), Image.BILINEAR))
    g = g.rotate(float(rng.uniform(30, 60)), resample=Image.BILINEAR, fillcolor=255)
    arr = np.asarray(g, dtype=np.float32) + rng.normal(0.0, 24.0, size=(32, 32))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def digits_fewshot(work: Path | str, per_class: int = 8, val_per_class: int = 10) -> str:
    """Digits 5-9, few-shot: new classes for a zoo pretrained on 0-4; every other image is test."""
    params = {"per_class": per_class, "val_per_class": val_per_class}

    def build() -> Tuple[Splits, str]:
        splits = few_shot_splits(digits_images(), per_class, val_per_class)
        return splits, f"scikit-learn digits 5-9, {per_class} train and {val_per_class} val per class, rest test"

    return cached_task(work, f"digits-fewshot-{per_class}-{val_per_class}", params, build)


def shifted_fewshot(work: Path | str, per_class: int = 8, val_per_class: int = 10) -> str:
    """``digits_fewshot``'s images and splits through ``shifted``: new classes and a shifted domain."""
    import numpy as np

    params = {"per_class": per_class, "val_per_class": val_per_class}

    def build() -> Tuple[Splits, str]:
        rng = np.random.RandomState(0)
        base = few_shot_splits(digits_images(), per_class, val_per_class)
        splits = {s: [(shifted(img, rng), y) for img, y in rows] for s, rows in base.items()}
        return splits, (f"digits 5-9 ({per_class} train, {val_per_class} val per class, rest test), inverted, "
                        "32 px, rotated 30-60 degrees, Gaussian noise sd 24")

    return cached_task(work, f"shift-fewshot-{per_class}-{val_per_class}", params, build)


# ----------------------------------------------------------------------------------------- textures

def _grid(size: int, rng: Any) -> Tuple[Any, Any]:
    """Pixel coordinates in [0, 1), rotated by a random angle about a random point."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    theta = rng.uniform(0, np.pi)
    x, y = x - rng.uniform(0, 1), y - rng.uniform(0, 1)
    return x * np.cos(theta) + y * np.sin(theta), -x * np.sin(theta) + y * np.cos(theta)


def _grating(size: int, rng: Any) -> Any:
    import numpy as np

    u, _ = _grid(size, rng)
    return np.sin(2 * np.pi * rng.uniform(2, 9) * u + rng.uniform(0, 6.3))


def _checker(size: int, rng: Any) -> Any:
    import numpy as np

    u, v = _grid(size, rng)
    f = rng.uniform(2, 7)
    return np.tanh(rng.uniform(1, 6) * np.sin(2 * np.pi * f * u) * np.sin(2 * np.pi * f * rng.uniform(0.7, 1.4) * v))


def _dots(size: int, rng: Any) -> Any:
    import numpy as np

    u, v = _grid(size, rng)
    f = rng.uniform(3, 9)
    du, dv = (u * f) % 1.0 - 0.5, (v * f) % 1.0 - 0.5
    r = rng.uniform(0.15, 0.35)
    return np.tanh(rng.uniform(3, 12) * (r - np.sqrt(du ** 2 + dv ** 2)) / r)


def _blotches(size: int, rng: Any) -> Any:
    import numpy as np

    noise = rng.normal(size=(size, size))
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    cutoff = rng.uniform(0.03, 0.12)
    field = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-(fx ** 2 + fy ** 2) / (2 * cutoff ** 2))))
    field = field / (field.std() + 1e-8)
    return np.tanh(rng.uniform(0.8, 3) * field)


def _crosshatch(size: int, rng: Any) -> Any:
    import numpy as np

    u, v = _grid(size, rng)
    angle = rng.uniform(np.pi / 4, np.pi / 2)  # the second set of lines crosses the first at 45-90 degrees
    w = u * np.cos(angle) + v * np.sin(angle)
    lines = [np.cos(2 * np.pi * rng.uniform(2, 8) * t + rng.uniform(0, 6.3)) for t in (u, w)]
    return np.tanh(rng.uniform(2, 8) * (np.maximum(*lines) - 0.5))


def _waves(size: int, rng: Any) -> Any:
    import numpy as np

    u, v = _grid(size, rng)
    bend = rng.uniform(0.03, 0.12) * np.sin(2 * np.pi * rng.uniform(1, 4) * v + rng.uniform(0, 6.3))
    return np.sin(2 * np.pi * rng.uniform(2, 8) * (u + bend) + rng.uniform(0, 6.3))


def _bricks(size: int, rng: Any) -> Any:
    import numpy as np

    u, v = _grid(size, rng)
    rows = rng.uniform(3, 9)
    row = np.floor(v * rows)
    col = u * rows / rng.uniform(1.5, 3) + 0.5 * (row % 2)  # bricks 1.5-3x wider than tall, every other row offset
    edge = lambda s: np.abs(s - np.round(s))  # distance to the nearest mortar line, in bricks
    mortar = np.minimum(edge(v * rows), edge(col) * rng.uniform(1.5, 3))
    return np.tanh(rng.uniform(4, 15) * (mortar - rng.uniform(0.08, 0.2)))


def _rings(size: int, rng: Any) -> Any:
    import numpy as np

    y, x = np.mgrid[0:size, 0:size].astype(np.float64) / size
    cy, cx = rng.uniform(-0.3, 1.3, size=2)
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 * rng.uniform(0.6, 1.6))
    return np.sin(2 * np.pi * rng.uniform(2, 9) * r + rng.uniform(0, 6.3))


#: One generating family per class, each returning a field in [-1, 1]; class i uses family i.
TEXTURE_FAMILIES: Dict[str, Callable[[int, Any], Any]] = {
    "grating": _grating, "checker": _checker, "dots": _dots, "blotches": _blotches,
    "crosshatch": _crosshatch, "waves": _waves, "bricks": _bricks, "rings": _rings,
}


def texture_image(family: str, size: int, rng: Any) -> Any:
    """One RGB texture: the family's field, blended between two random colours (at least 80 apart) at a
    random contrast, blurred a little at random and with additive Gaussian noise."""
    import numpy as np
    from PIL import Image, ImageFilter

    field = np.clip(TEXTURE_FAMILIES[family](size, rng), -1.0, 1.0)
    t = 0.5 + 0.5 * rng.uniform(0.4, 1.0) * field
    a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    while np.linalg.norm(a - b) < 80:  # two near-equal colours would hide the pattern altogether
        b = rng.uniform(0, 255, size=3)
    rgb = a * (1 - t[..., None]) + b * t[..., None]
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), mode="RGB")
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0, 0.8))))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, rng.uniform(3, 18), size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")


def textures(work: Path | str, per_class: int = 20, val_per_class: int = 10, test_per_class: int = 60,
             size: int = 64, classes: int = 8, view: int | None = None) -> str:
    """Procedural textures, one family per class: a domain far from digits and photos (seed 0).

    ``view``: keep only the centre ``view`` x ``view`` pixels of each ``size`` px texture, so a network
    with a small input sees the texture at its own scale (fewer cycles, as many pixels per cycle)
    instead of a downsampled, aliased one.
    """
    import numpy as np

    if not 2 <= classes <= len(TEXTURE_FAMILIES):
        raise ValueError(f"classes must be in [2, {len(TEXTURE_FAMILIES)}], got {classes}")
    families = list(TEXTURE_FAMILIES)[:classes]
    params = {"per_class": per_class, "val_per_class": val_per_class, "test_per_class": test_per_class,
              "size": size, "classes": classes, "view": view}
    margin = (size - view) // 2 if view else 0

    def image(family: str, rng: Any) -> Any:
        img = texture_image(family, size, rng)
        return img.crop((margin, margin, margin + view, margin + view)) if view else img

    def build() -> Tuple[Splits, str]:
        rng = np.random.RandomState(0)
        counts = {"train": per_class, "val": val_per_class, "test": test_per_class}
        splits = {s: [(image(f, rng), f) for _ in range(n) for f in families] for s, n in counts.items()}
        shown = f"the centre {view} px of {size} px" if view else f"{size} px"
        return splits, f"procedural textures ({', '.join(families)}), {shown} RGB, " \
                       f"{per_class}/{val_per_class}/{test_per_class} per class"

    name = f"textures-{classes}x{per_class}-{val_per_class}-{test_per_class}-{size}px" + (f"-view{view}" if view else "")
    return cached_task(work, name, params, build)


#: Task name -> builder(work, ...) -> CSV path.
TASKS: Dict[str, Callable[..., str]] = {
    "digits-fewshot": digits_fewshot,
    "digits-4shot": lambda work: digits_fewshot(work, per_class=4, val_per_class=6),
    "shift-fewshot": shifted_fewshot,
    "textures": textures,
}
