"""Data sources, splits, and one clear error for each kind of bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autotl import DataError
from autotl.data import load_dataset
from autotl.modality import IMAGE
from conftest import make_folder, make_image


def test_class_folders_get_a_stratified_seeded_split(image_folder):
    a = load_dataset(str(image_folder), seed=3)
    b = load_dataset(str(image_folder), seed=3)
    c = load_dataset(str(image_folder), seed=4)
    assert a.classes == ("cat", "dog", "owl")
    assert a.val_from == "stratified" and a.test is None
    assert len(a.train) + len(a.val) == 36
    val_counts = a.val.counts(a.classes).values()
    assert min(val_counts) >= 2 and max(val_counts) - min(val_counts) <= 1  # stratified
    assert a.val.paths == b.val.paths and a.val.paths != c.val.paths
    assert all(isinstance(item, Path) for item in a.train.items)  # nothing decoded at load time
    assert a.train.digest == b.train.digest and a.train.digest != a.val.digest


def test_split_folders(split_folder):
    ds = load_dataset(str(split_folder))
    assert ds.val_from == "given"
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 15, 18)


def test_train_and_test_folders_without_val(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=10)
    make_folder(tmp_path / "d" / "test", per_class=3)
    ds = load_dataset(str(tmp_path / "d"))
    assert ds.val_from == "stratified" and len(ds.test) == 9


def test_csv_source_with_and_without_split_column(tmp_path, image_folder):
    rows = sorted(image_folder.rglob("*.png"))
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\n" + "".join(f"{p},{p.parent.name}\n" for p in rows))
    ds = load_dataset(str(plain))
    assert ds.classes == ("cat", "dog", "owl") and ds.val_from == "stratified"
    relative = image_folder / "labels.csv"
    lines = ["path,label,split"] + [f"{p.relative_to(image_folder)},{p.parent.name},{'val' if i % 3 == 0 else 'train'}"
                                    for i, p in enumerate(rows)]
    relative.write_text("\n".join(lines) + "\n")
    ds = load_dataset(str(relative))
    assert ds.val_from == "given" and len(ds.val) == 12


def test_builtin_digits(plugins):
    ds = load_dataset("builtin:digits", plugins)
    assert ds.classes == ("5", "6", "7", "8", "9")
    assert set(ds.train.counts(ds.classes).values()) == {15}
    assert len(ds.test) > 500
    src = load_dataset("builtin:digits-source", plugins)
    assert src.classes == ("0", "1", "2", "3", "4")


def test_corrupt_images_are_skipped_and_counted(image_folder):
    (image_folder / "cat" / "broken.png").write_bytes(b"not a png at all")
    (image_folder / "dog" / "truncated.jpg").write_bytes(b"\xff\xd8\xff")
    with pytest.warns(UserWarning, match="skipped 2 unreadable or corrupt image"):
        ds = load_dataset(str(image_folder))
    assert ds.skipped == 2 and len(ds.train) + len(ds.val) == 36


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"data folder .* does not exist"),
    ("empty", r"no images found in"),
    ("one_class", r"has a single class \('cat'\)"),
    ("thin_class", r"class 'owl' has 1 image; at least 2 are needed"),
    ("all_corrupt", r"no readable training images"),
    ("unknown_val_label", r"the val split has label\(s\) the train split lacks: 'eel'"),
])
def test_bad_folders(tmp_path, case, pattern):
    root = tmp_path / "data"
    rng = np.random.RandomState(0)
    if case == "empty":
        (root / "cat").mkdir(parents=True)
    elif case == "one_class":
        make_folder(root, classes=("cat",))
    elif case == "thin_class":
        make_folder(root, per_class=5, classes=("cat", "dog"))
        make_image(root / "owl" / "only.png", "owl", rng)
    elif case == "all_corrupt":
        for c in ("cat", "dog"):
            (root / c).mkdir(parents=True)
            (root / c / "x.png").write_bytes(b"junk")
    elif case == "unknown_val_label":
        make_folder(root / "train", per_class=4, classes=("cat", "dog"))
        make_folder(root / "val", per_class=2, classes=("cat", "eel"))
    with pytest.raises(DataError, match=pattern) as info:
        if case == "all_corrupt":
            with pytest.warns(UserWarning):
                load_dataset(str(root))
        else:
            load_dataset(str(root))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content, pattern", [
    ("file,class\na.png,cat\n", r"lacks the column\(s\) path or text, label"),
    ("", r"lacks the column\(s\) path or text, label \(found: none\)"),
    ("path,label\nA,cat\nB,\n", r"line 3 \('B'\): missing label"),
    ("path,target\nA,1.5\nB,\n", r"line 3 \('B'\): missing target"),
    ("path,target\nA,1.5\nB,tall\n", r"line 3 \('B'\): target 'tall' is not a finite number"),
    ("path,target\nA,1.5\nB,inf\n", r"line 3 \('B'\): target 'inf' is not a finite number"),
    ("path,label,split\nA,cat,holdout\n", r"line 2: unknown split 'holdout'"),
    ("path,label,split\nA,cat,val\n", r"has no training rows"),
])
def test_bad_csv(tmp_path, content, pattern):
    path = tmp_path / "labels.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_dataset(str(path))


def test_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.csv"))


def test_val_missing_a_class_warns(tmp_path):
    make_folder(tmp_path / "d" / "train", per_class=4, classes=("cat", "dog", "owl"))
    make_folder(tmp_path / "d" / "val", per_class=2, classes=("cat", "dog"))
    with pytest.warns(UserWarning, match="no images of class\\(es\\) owl"):
        load_dataset(str(tmp_path / "d"))


def test_unknown_builtin(plugins):
    from autotl import RegistryError

    with pytest.raises(RegistryError, match="unknown dataset 'digit'.*did you mean 'digits'"):
        load_dataset("builtin:digit", plugins)


def test_dataset_plugin_registers_a_builtin():
    from autotl import get_plugin_manager
    from conftest import FIXTURE_PLUGINS

    plugins = get_plugin_manager([str(FIXTURE_PLUGINS / "colours_dataset.py")])
    assert plugins.datasets.owner("colours") == "colours_dataset"
    ds = load_dataset("builtin:colours", plugins)
    assert ds.classes == ("blue", "red") and ds.val_from == "given"
    assert (len(ds.train), len(ds.val)) == (8, 4) and IMAGE.size(ds.train.items[0]) == (16, 16)


def test_a_failing_dataset_plugin_is_one_clear_error(tmp_path):
    from autotl import get_plugin_manager

    path = tmp_path / "flaky.py"
    path.write_text("from autotl import DatasetSource, hookimpl\n"
                    "def load():\n    raise OSError('archive missing')\n"
                    "@hookimpl\ndef autotl_register_datasets(register):\n"
                    "    register(DatasetSource(name='flaky', load=load))\n")
    with pytest.raises(DataError, match="builtin dataset 'flaky' \\(plugin 'flaky'\\) failed to load: OSError: archive missing"):
        load_dataset("builtin:flaky", get_plugin_manager([str(path)]))
