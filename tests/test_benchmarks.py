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
