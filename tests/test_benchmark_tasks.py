"""benchmarks/tasks.py: the offline benchmark tasks are seeded, cached, split as documented and loadable."""
from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tasks():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import tasks as module
        yield module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("tasks", None)


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_digits_fewshot_splits_and_cache(tasks, tmp_path):
    path = tasks.digits_fewshot(tmp_path, per_class=3, val_per_class=4)
    rows = _rows(path)
    per_split = {s: Counter(r["label"] for r in rows if r["split"] == s) for s in ("train", "val", "test")}
    assert per_split["train"] == {c: 3 for c in "56789"} and per_split["val"] == {c: 4 for c in "56789"}
    assert sum(per_split["test"].values()) == len(rows) - 35 > 800  # every other image of 5-9
    stamp = Path(path).with_name("task.json").stat().st_mtime_ns
    assert tasks.digits_fewshot(tmp_path, per_class=3, val_per_class=4) == path
    assert Path(path).with_name("task.json").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_digits_fewshot_matches_builtin_digits_order(tasks, tmp_path):
    """At 15 + 15 per class the split is builtin:digits' own (the same seeded order)."""
    import autotl
    from autotl.data import load_dataset

    rows = _rows(tasks.digits_fewshot(tmp_path, per_class=15, val_per_class=15))
    ds = load_dataset("builtin:digits", autotl.get_plugin_manager())
    assert [r["label"] for r in rows if r["split"] == "train"] == [ds.classes[int(y)] for y in ds.train.labels]


def test_textures_are_seeded_rgb_and_balanced(tasks, tmp_path):
    from PIL import Image

    a = tasks.textures(tmp_path / "a", per_class=2, val_per_class=1, test_per_class=1, size=32, classes=4)
    b = tasks.textures(tmp_path / "b", per_class=2, val_per_class=1, test_per_class=1, size=32, classes=4)
    rows = _rows(a)
    assert Counter((r["split"], r["label"]) for r in rows) == {
        (s, f): n for s, n in (("train", 2), ("val", 1), ("test", 1)) for f in list(tasks.TEXTURE_FAMILIES)[:4]}
    for r in rows:
        assert (Path(a).parent / r["path"]).read_bytes() == (Path(b).parent / r["path"]).read_bytes()
    img = Image.open(Path(a).parent / rows[0]["path"])
    assert img.mode == "RGB" and img.size == (32, 32)
    assert json.loads(Path(a).with_name("task.json").read_text())["version"] == tasks.TASK_VERSION
    with pytest.raises(ValueError, match="classes must be in"):
        tasks.textures(tmp_path, classes=9)


def test_every_listed_task_builds_three_splits_with_the_same_classes(tasks, tmp_path):
    assert {"digits-fewshot", "digits-4shot", "shift-fewshot", "textures"} <= set(tasks.TASKS)
    for name, build in tasks.TASKS.items():
        rows = _rows(build(tmp_path))
        labels = {split: {r["label"] for r in rows if r["split"] == split} for split in ("train", "val", "test")}
        assert labels["train"] and labels["train"] == labels["val"] == labels["test"], name
