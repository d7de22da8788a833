"""The benchmark scripts run: gpu_check.sh's dry run exercises its every step on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run_prints_its_summary_table(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = proc.stdout.split("| check | result |")[1]
    for row in ("| device | cpu |", "| GPU-marked tests |", "| overhead test_resnet at 32px |",
                "| cache test_vit depth 1 |", "| search |", "| whole check |"):
        assert row in table
    assert (tmp_path / "out" / "search" / "summary.json").is_file()


@pytest.mark.slow
def test_data_scale_plain_loop_and_tables(tmp_path):
    """benchmarks/data_scale.py: the dataset is deterministic, the plain loop runs, the tables and goals read right."""
    import json

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import data_scale as ds
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
        sys.modules.pop("data_scale", None)
    folder = ds.ensure_dataset(tmp_path / "data", 50, seed=3)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [f"c{i}" for i in range(10)]
    assert len(list(folder.rglob("*.jpg"))) == 50 and ds.ensure_dataset(tmp_path / "data", 50, seed=3) == folder
    assert (ds.synth_image(3, 7, 7) == ds.synth_image(3, 7, 7)).all() and ds.synth_image(3, 7, 7).shape == (256, 256, 3)

    out = tmp_path / "plain.json"
    with torch.random.fork_rng():  # the loop seeds torch
        ds.main(["--plain", str(folder), "--plain-json", str(out), "--epochs", "1", "--workers", "0"])
    plain = json.loads(out.read_text())
    assert (plain["train_images"], plain["val_images"], plain["input_size"]) == (40, 10, [3, 32, 32])
    assert len(plain["epoch_train_seconds"]) == 1 and plain["train_images_per_s"] > 0
    assert ds.draft_loader(str(next(folder.rglob("*.jpg"))), side=33).size == (64, 64)  # --plain-draft: 1/4 scale

    # a trial with autotl's `data` attribute, and one without it (images x epochs / the trial's seconds)
    with_data = ds.trial_throughput({"epochs": 2, "seconds": 9.0, "data": {
        "path": "stream", "train_images_per_s": 100.0, "epoch_train_seconds": [0.5, 0.3]}}, 40)
    assert (with_data["images_per_s"], with_data["epoch_s"], with_data["path"], with_data["from"]) == (
        100.0, 0.4, "stream", "data")
    fallback = ds.trial_throughput({"epochs": 2, "seconds": 4.0, "data": None}, 40)
    assert (fallback["images_per_s"], fallback["epoch_s"], fallback["from"]) == (20.0, 2.0, "trial seconds")

    def arm(rss, ips, n_train, **extra):
        return {"peak_rss_mb": rss, "wall_s": 10.0, "epoch_s": 1.0, "images_per_s": ips, "n_train": n_train, **extra}

    trials = [{"number": 0, "state": "complete", "freeze_depth": 0.0, "batch_size": 16, "epochs": 2, "seconds": 3.0,
               **with_data}]
    runs = {n: [{"autotl": arm(rss, ips, n * 4 // 5, trials=trials, matched=[0], paths=["stream"], **{"from": "data"}),
                 "plain": arm(1000.0, 100.0, n * 4 // 5, workers=0)}]
            for n, rss, ips in ((2000, 1500.0, 95.0), (10000, 2500.0, 80.0))}
    tables = ds.build_tables(runs)
    assert "| autotl | 2500 | 128 | 10.0 | 1.00 | 80 | 0.80 |" in tables[1]
    goals = tables[-1]
    assert "| 128 KB/image | **not met** |" in goals and "| 2.44 GB | met |" in goals
    assert "2,000: 0.95x, 10,000: 0.80x | **not met** |" in goals
