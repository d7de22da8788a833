"""Refit: the best setup trained again on train + validation, by `--refit` and by `autotl refit RUN`."""
from __future__ import annotations

import json
import shutil

import optuna
import pytest
import torch

import autotl
import autotl.storage
from autotl.checkpoints import read_weights
from autotl.cli import main
from conftest import make_split_folder

SPACE = """epochs: 4
selection: {name: best}
pruner: {name: none}
default_trials: 0
params:
  freeze_depth: 1.0
  batch_size: 8
  head_lr: {low: 1.0e-3, high: 3.0e-2, log: true}
"""


@pytest.fixture(scope="module")
def refitted(tmp_path_factory):
    """One search with --refit (3 trials of up to 4 epochs; the best epoch's weights are kept)."""
    root = tmp_path_factory.mktemp("refit")
    data = make_split_folder(root / "data", {"train": 10, "val": 6, "test": 6})
    (root / "space.yaml").write_text(SPACE)
    result = autotl.search(str(data), space=str(root / "space.yaml"), backbones="timm/test_vit", trials=3,
                           device="cpu", out=str(root / "run"), study="s", quiet=True, rank=False, soup=0,
                           warm_start="off", seed=2)
    return root, result


def test_refit_trains_the_best_setup_on_train_and_val_for_its_selected_epochs(refitted):
    root, result = refitted
    refit, best = result.summary["refit"], result.summary["best"]
    study = optuna.load_study(study_name="s", storage=autotl.storage.make_storage(None, root / "run"))
    chosen = study.best_trial
    assert refit["trial"] == best["trial"] == chosen.number
    assert refit["epochs"] == chosen.user_attrs["selected_epoch"] == best["selected_epoch"]
    assert refit["seed"] == chosen.user_attrs["seed"]
    assert refit["train_images"] == 3 * (10 + 6)  # three classes, train + val
    assert set(refit["test"]) == set(best["test"])  # scored like best/, on the same test split
    config = json.loads((root / "run" / "refit" / "config.json").read_text())
    assert config["format"] == "timm" and config["refit_of"] == chosen.number and config["params"] == best["params"]
    refit_w = read_weights(str(root / "run" / "refit" / "model.safetensors"))
    best_w = read_weights(str(root / "run" / "best" / "model.safetensors"))
    assert set(refit_w) == set(best_w) and any(not torch.equal(refit_w[k], best_w[k]) for k in best_w)
    assert json.loads((root / "run" / "summary.json").read_text())["refit"] == refit
    report = (root / "run" / "report.md").read_text()
    assert "refit test accuracy" in report and "train + validation" in report


def test_best_and_refit_carry_a_model_card_that_says_how_to_load_them(refitted):
    root, result = refitted
    best_card = (root / "run" / "best" / "README.md").read_text()
    refit_card = (root / "run" / "refit" / "README.md").read_text()
    best, refit = result.summary["best"], result.summary["refit"]
    for card, test in ((best_card, best["test"]), (refit_card, refit["test"])):
        assert f"test accuracy: {test['accuracy']:.4f}" in card
        assert "timm.create_model('test_vit'" in card and "onnxruntime" in card and "autotl export" in card
        assert "selection rule: best" in card and f"{result.summary['epochs_total']} epochs in all" in card
        assert "3 classes" in card and "10 train" not in card  # 10 per class: 30 train images
    assert f"Validation accuracy: {best['value']} (trial {best['trial']})" in best_card
    assert f"for {refit['epochs']} epochs with trial {refit['trial']}'s setup" in refit_card


def test_autotl_refit_run_reproduces_the_refit_bit_for_bit(refitted, tmp_path, capsys):
    root, result = refitted
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    shutil.rmtree(run / "refit")
    data = result.summary["dataset"]["source"]
    assert main(["refit", str(run), "--data", data]) == 0
    out = capsys.readouterr().out
    assert f"refit trial {result.summary['refit']['trial']}'s setup on 48 images" in out
    again = read_weights(str(run / "refit" / "model.safetensors"))
    first = read_weights(str(root / "run" / "refit" / "model.safetensors"))
    assert all(torch.equal(again[k], first[k]) for k in first)  # same seed, data and schedule
    summary = json.loads((run / "summary.json").read_text())
    assert summary["refit"]["test"] == result.summary["refit"]["test"]
    assert summary["refit"]["model_dir"] == str(run / "refit")


def test_refit_is_on_by_default_and_no_refit_skips_it(split_folder, tmp_path, capsys):
    args = [str(split_folder), "--space", "quick", "--backbones", "timm/test_resnet", "--trials", "1", "--epochs", "1",
            "--device", "cpu", "--quiet", "--no-rank", "--no-report", "--warm-start", "off"]
    assert main(["search", *args, "--out", str(tmp_path / "on")]) == 0
    assert "Refit on train + val (1 epochs)" in capsys.readouterr().out
    assert json.loads((tmp_path / "on" / "summary.json").read_text())["refit"]["epochs"] == 1
    assert main(["search", *args, "--out", str(tmp_path / "off"), "--no-refit"]) == 0
    assert json.loads((tmp_path / "off" / "summary.json").read_text())["refit"] is None
    assert not (tmp_path / "off" / "refit").exists()


@pytest.mark.parametrize("case, pattern", [
    ("no-run", r"holds no readable summary.json — pass the run folder of a finished search"),
    ("data-moved", r"the search's data .* is not here — pass --data"),
    ("masked-storage", r"with its password masked — pass --storage with the full URL"),
])
def test_refit_of_a_run_folder_it_cannot_use_fails_in_one_line(refitted, tmp_path, capsys, case, pattern):
    import re

    root, _ = refitted
    run = tmp_path / "run"
    if case != "no-run":
        shutil.copytree(root / "run", run)
        summary = json.loads((run / "summary.json").read_text())
        if case == "data-moved":
            summary["dataset"]["source"] = str(tmp_path / "gone")
        else:
            summary["storage"] = "postgresql://me:***@db.example/autotl"
        (run / "summary.json").write_text(json.dumps(summary))
    assert main(["refit", str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert re.search(pattern, err) and "\n" not in err and "Traceback" not in err


def test_a_negative_default_trials_is_refused_by_the_cli(capsys):
    with pytest.raises(SystemExit) as info:
        main(["search", "builtin:digits", "--default-trials", "-1"])
    assert info.value.code == 2
    assert "--default-trials: expected a whole number >= 0, got '-1'" in capsys.readouterr().err
