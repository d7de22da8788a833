"""Shared fixtures: tiny image datasets made on the fly, an isolated zoo, fast torch settings."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TESTS = Path(__file__).parent
FIXTURE_PLUGINS = TESTS / "plugins"
COLORS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}


def make_image(path: Path, label: str, rng: np.random.RandomState, size: int = 32) -> None:
    """A learnable image: the class's colour plus noise, with a class-dependent bar."""
    base = np.array(COLORS.get(label, (128, 128, 128)), dtype=np.float32)
    img = np.clip(base + rng.normal(0, 40, size=(size, size, 3)), 0, 255).astype(np.uint8)
    k = list(COLORS).index(label) if label in COLORS else 0
    img[:, k * 8:(k * 8) + 6, :] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def make_folder(root: Path, per_class: int = 12, classes=("cat", "dog", "owl"), seed: int = 0) -> Path:
    rng = np.random.RandomState(seed)
    for label in classes:
        for i in range(per_class):
            make_image(root / label / f"{label}_{i}.png", label, rng)
    return root


def make_split_folder(root: Path, counts=None) -> Path:
    counts = counts or {"train": 10, "val": 5, "test": 6}
    for i, (split, n) in enumerate(counts.items()):
        make_folder(root / split, per_class=n, seed=i)
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_session(tmp_path_factory):
    """The same isolation for module- and session-scoped fixtures, which run before ``_isolated``:
    no test ever reads or writes the real zoo, weights folder or warm-start history."""
    keys = {"AUTOTL_ZOO": str(tmp_path_factory.mktemp("session_zoo")),
            "AUTOTL_TIMM_WEIGHTS": str(tmp_path_factory.mktemp("session_weights")),
            "AUTOTL_HISTORY": str(tmp_path_factory.mktemp("session_history") / "history.jsonl"),
            "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path_factory.mktemp("session_hf_cache"))}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module", autouse=True)
def _isolated_history(tmp_path_factory):
    """Each test module's shared fixtures get their own warm-start history: no module's searches
    warm-start from another module's."""
    saved = os.environ.get("AUTOTL_HISTORY")
    os.environ["AUTOTL_HISTORY"] = str(tmp_path_factory.mktemp("module_history") / "history.jsonl")
    yield
    os.environ["AUTOTL_HISTORY"] = saved or ""


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Every test gets its own empty zoo, timm weights folder and Hugging Face cache, and never reaches the hub."""
    monkeypatch.setenv("AUTOTL_ZOO", str(tmp_path_factory.mktemp("zoo")))
    monkeypatch.setenv("AUTOTL_TIMM_WEIGHTS", str(tmp_path_factory.mktemp("timm_weights")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf_cache")))  # never the user's cached weights
    monkeypatch.setenv("AUTOTL_HISTORY", str(tmp_path_factory.mktemp("history") / "history.jsonl"))
    monkeypatch.delenv("AUTOTL_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return make_folder(tmp_path / "images")


@pytest.fixture
def split_folder(tmp_path) -> Path:
    return make_split_folder(tmp_path / "split")


@pytest.fixture
def plugins():
    from autotl import get_plugin_manager

    return get_plugin_manager()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    import torch

    torch.set_num_threads(int(os.environ.get("AUTOTL_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))
