"""Slow end-to-end checks (still run in CI): a third party's plugin through the CLI, and `pip install .`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import save_file

from conftest import FIXTURE_PLUGINS, make_split_folder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_third_party_plugin_search_fills_the_summary(tmp_path):
    """The issue's acceptance run: their timm networks with their own safetensors weights."""
    import timm

    for arch, kwargs in (("test_resnet", {}), ("test_vit", {"img_size": 32})):
        save_file(timm.create_model(arch, num_classes=10, **kwargs).state_dict(),
                  str(tmp_path / f"theirs-{arch}.safetensors"))
    data = make_split_folder(tmp_path / "data", {"train": 14, "val": 6, "test": 6})
    env = {**os.environ, "THEIRS_WEIGHTS": str(tmp_path / "theirs-ARCH.safetensors"),
           "AUTOTL_ZOO": str(tmp_path / "zoo"), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "OUT"
    cmd = [sys.executable, "-m", "autotl", "search", str(data), "--plugin", str(FIXTURE_PLUGINS / "theirs.py"),
           "--backbones", "theirs/*", "--trials", "12", "--epochs", "8", "--seed", "0", "--out", str(out),
           "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"study", "metric", "direction", "best", "trials", "elapsed_s", "epochs_total",
                            "autotl_version"}
    assert summary["trials"]["complete"] + summary["trials"]["pruned"] + summary["trials"]["fail"] == 12
    assert summary["trials"]["pruned"] >= 1 and summary["trials"]["fail"] == 0
    assert summary["epochs_total"] < 12 * 8  # pruning saved epochs
    best = summary["best"]
    assert best["backbone"].startswith("theirs/") and set(best["params"]) >= {"freeze_depth", "head_lr"}
    assert set(best["test"]) == {"accuracy", "balanced_accuracy", "macro_f1"}
    assert (out / "best" / "model.safetensors").is_file()
    assert "Leaderboard" in proc.stdout and "pruned" in proc.stdout
    assert json.loads((out / "best" / "config.json").read_text())["format"] == "timm"


def test_pip_install_from_any_directory(tmp_path):
    """A non-editable install carries the core, the first-party plugins and the search spaces."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = ("import autotl, autotl_timm, autotl_heads, autotl_peft, autotl_cosine, autotl_zoo, autotl_datasets, autotl_lite0\n"
            "import autotl.report\n"
            "from autotl.space import resolve_space_path\n"
            "print(autotl.__file__)\n"
            "print(*(resolve_space_path(s).is_file() for s in ('default', 'quick', 'full')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith(str(target)) and out[1] == "True True True"
    assert not (target / "plugins").exists()  # no top-level module called `plugins`
    listing = subprocess.run([sys.executable, "-m", "autotl", "backbones"], cwd=elsewhere, env=env,
                             capture_output=True, text=True, check=True).stdout
    assert "timm/test_vit" in listing
