"""The data path at scale: resident, cached and streamed splits, late bad images, bounded memory."""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import autotl
from autotl.cli import main
from autotl.data import load_dataset
from autotl.modality import IMAGE
from autotl.store import open_disk
from autotl.tensors import Augmentation, TensorCache, TensorSet
from helpers import one_epoch

CONFIG = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5,) * 3, "std": (0.5,) * 3,
          "crop_pct": 0.875, "crop_mode": "center"}


def _search(folder: Path, out: Path, **options):
    return autotl.search(str(folder), backbones="timm/test_resnet", space="quick", trials=2, epochs=2, out=str(out),
                         seed=1, rank=False, soup=0, report=False, quiet=True, warm_start="off", **options)


def test_resident_cached_and_streamed_paths_give_equal_results_for_the_same_seed(image_folder, tmp_path):
    curves = {}
    for path in ("resident", "cache", "stream"):
        result = _search(image_folder, tmp_path / path, data_path=path)
        curves[path] = [(t.params, t.curve) for t in result.trials]
        assert all(t.state == "complete" for t in result.trials)
    assert curves["cache"] == curves["stream"] == curves["resident"]
    assert any((tmp_path / "cache" / "data_cache").iterdir())  # the cache path wrote its stored forms
    assert not (tmp_path / "stream" / "data_cache").exists()  # the streamed path stores nothing


def test_auto_keeps_small_splits_resident_and_streams_those_over_the_budget(image_folder, tmp_path):
    dataset = load_dataset(str(image_folder))
    small = TensorCache(resident_mb=64, cache_dir=tmp_path)
    assert small.mode(dataset.train, CONFIG) == "resident" and isinstance(small.get(dataset.train, CONFIG), TensorSet)
    tight = TensorCache(resident_mb=0, cache_dir=tmp_path)
    streamed = tight.get(dataset.train, CONFIG)
    assert tight.mode(dataset.train, CONFIG) == "cache" and not isinstance(streamed, TensorSet)
    assert torch.equal(one_epoch(streamed), small.get(dataset.train, CONFIG).x)  # the same inputs either way


def test_auto_streams_splits_that_fit_alone_but_not_together(image_folder, tmp_path):
    """Train and val are read by every trial: kept resident only if both fit, so that neither evicts
    the other (and is decoded again) between trials."""
    dataset = load_dataset(str(image_folder))
    per_sample = 3 * 32 * 32 * 4 * 1.5
    cache = TensorCache(resident_mb=(len(dataset.train) + 1) * per_sample / 2**20, cache_dir=tmp_path)
    assert cache.mode(dataset.train, CONFIG) == "resident"
    cache.expect(dataset.train, dataset.val)
    assert cache.mode(dataset.train, CONFIG) == cache.mode(dataset.val, CONFIG) == "cache"
    folderless = TensorCache(resident_mb=0)  # e.g. `autotl rank`, which has no run folder: decoded live
    assert folderless.mode(dataset.train, CONFIG) == "stream"


def test_resident_sets_stay_within_the_budget_whatever_the_number_of_configs(image_folder, tmp_path):
    dataset = load_dataset(str(image_folder))
    one = len(dataset.train) * 3 * 32 * 32 * 4
    cache = TensorCache(resident_mb=2.5 * one / 2**20, cache_dir=tmp_path)
    for k in range(5):  # five preprocessing configs (different normalisation) of the same split
        cache.get(dataset.train, {**CONFIG, "mean": (0.1 * k,) * 3})
        assert cache.resident_bytes <= cache.budget
    assert cache.mode(dataset.train, CONFIG) == "resident"


def _truncated_jpeg(path: Path) -> None:
    """A JPEG whose header reads but whose body is cut short: found only when it is decoded."""
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("data_path", ["stream", "cache", "resident"])
def test_an_image_that_fails_to_decode_during_the_search_is_skipped_counted_and_reported(
        split_folder, tmp_path, recwarn, data_path):
    _truncated_jpeg(split_folder / "train" / "cat" / "late.jpg")
    load_dataset(str(split_folder))  # its header reads: nothing is found at load time
    code = main(["search", str(split_folder), "--backbones", "timm/test_resnet", "--space", "quick", "--trials", "2",
                 "--epochs", "2", "--out", str(tmp_path / "run"), "--no-rank", "--soup", "0", "--no-report",
                 "--quiet", "--warm-start", "off", "--data-path", data_path, "--default-trials", "1"])
    assert code == 0
    found = [w.message for w in recwarn if "late.jpg" in str(w.message)]
    assert len(found) == 1 and isinstance(found[0], autotl.AutotlWarning)  # shown as one `warning: ...` line
    assert found[0].what.startswith("skipped 1 unreadable image(s) found while") and found[0].fix
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert sum(summary["trials"].values()) == 2 and summary["trials"].get("fail", 0) == 0  # warned once for two
    assert summary["dataset"]["skipped"] == 1 and summary["dataset"]["skipped_late"] == 1


def test_a_sample_that_becomes_unreadable_mid_epoch_is_dropped_from_its_batch(image_folder, tmp_path):
    dataset = load_dataset(str(image_folder))
    stream = TensorCache(data_path="stream").train(dataset.train, CONFIG, Augmentation(hflip=0.5))
    victim = Path(dataset.train.paths[3])
    victim.write_bytes(b"garbage now")  # changed on disk after the search loaded it
    with pytest.warns(UserWarning, match="skipped 1 unreadable image.s. found while streaming"):
        seen = [p for _, positions in stream.batches([range(0, 8), range(8, len(stream))], torch.device("cpu"))
                for p in positions.tolist()]
    assert sorted(seen) == [p for p in range(len(stream)) if p != 3]
    assert stream.failed == {3: str(victim)}
    again = [p for _, positions in stream.batches([range(len(stream))], torch.device("cpu")) for p in positions.tolist()]
    assert 3 not in again  # left out of later epochs without another read


def test_large_photos_are_downscaled_as_they_are_decoded(tmp_path):
    big = tmp_path / "big.jpg"
    Image.fromarray(np.full((1500, 2000, 3), 90, dtype=np.uint8)).save(big, quality=85)
    stored = IMAGE.decode(big, CONFIG)
    assert stored.dtype == np.uint8 and min(stored.shape[:2]) == int(32 / 0.875)  # the eval resize, not 1500 px
    view = IMAGE.view(CONFIG)(stored)
    assert view.shape == (3, 32, 32) and view.dtype == torch.uint8


def test_the_evaluation_view_is_timms_centre_crop_of_the_stored_image():
    """The evaluation view slices the stored array instead of going through PIL: it must give
    exactly torchvision's CenterCrop, whatever the odd sizes."""
    from torchvision.transforms import CenterCrop

    view = IMAGE.view(CONFIG)
    rng = np.random.RandomState(0)
    for h, w in [(36, 36), (40, 57), (37, 36), (36, 91)]:
        stored = rng.randint(0, 255, (h, w, 3), dtype=np.uint8)
        expected = torch.from_numpy(np.asarray(CenterCrop(32)(Image.fromarray(stored))).copy()).permute(2, 0, 1)
        assert torch.equal(view(stored), expected)


def test_the_disk_cache_is_built_once_and_published_whole(image_folder, tmp_path):
    dataset = load_dataset(str(image_folder))
    first = open_disk(tmp_path, dataset.train.items, IMAGE, CONFIG, "abc")
    again = open_disk(tmp_path, dataset.train.items, IMAGE, CONFIG, "abc")
    assert first.folder == again.folder and len(first) == len(dataset.train)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert np.array_equal(first.read(5), IMAGE.decode(dataset.train.items[5], CONFIG))


def test_feature_cache_digests_do_not_keep_data_sets_alive():
    from autotl.features import data_digest

    data = TensorSet(x=torch.randn(4, 3, 8, 8), y=torch.zeros(4, dtype=torch.long))
    digest, ref = data_digest(data), weakref.ref(data)
    assert digest == data_digest(data)
    del data
    gc.collect()
    assert ref() is None


RSS_PROBE = r"""
import json, resource, sys
import autotl
autotl.search(sys.argv[1], backbones="timm/test_resnet", space="quick", trials=1, epochs=1, out=sys.argv[2],
              rank=False, soup=0, report=False, quiet=True, warm_start="off", default_trials=1,
              data_path=sys.argv[3], device="cpu")
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
"""


def _jpegs(root: Path, n: int) -> Path:
    rng = np.random.RandomState(0)
    for i in range(n):
        label = f"c{i % 4}"
        (root / label).mkdir(parents=True, exist_ok=True)
        img = np.clip(rng.normal(60 * (i % 4), 50, (256, 256, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / label / f"{i}.jpg", quality=90)
    return root


@pytest.mark.slow
def test_peak_memory_does_not_grow_like_a_copy_of_the_data(tmp_path):
    """Peak RSS of a real search grows by far less than one preprocessed image (307 KB at 160 px)
    per added image: the split is streamed from the disk cache, not held."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    peaks = {}
    for n in (120, 720):
        folder = _jpegs(tmp_path / f"d{n}", n)
        out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(folder), str(tmp_path / f"run{n}"), "cache"],
                             capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        peaks[n] = int(out.stdout.strip().splitlines()[-1])  # KB
    per_image_kb = (peaks[720] - peaks[120]) / 600
    assert per_image_kb <= 60, peaks


def test_bad_data_path_options_are_refused(capsys, tmp_path):
    for flag, value, message in [("--data-path", "disk", "invalid choice: 'disk'"),
                                 ("--resident-mb", "-1", "expected a whole number >= 0")]:
        with pytest.raises(SystemExit) as exc:
            main(["search", "builtin:digits", flag, value])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(autotl.ConfigError, match="the .data_path. option must be one of auto, resident, cache, stream"):
        autotl.search("builtin:digits", data_path="disk", out=str(tmp_path / "run"))
