"""The fast path's safety nets: the default recipe first, out-of-memory retries, torch.compile."""
from __future__ import annotations

import json
import os
from pathlib import Path

import optuna
import pytest

import autotl
import autotl.storage
from autotl.cli import main
from conftest import FIXTURE_PLUGINS


def study_of(out):
    summary = json.loads((out / "summary.json").read_text())
    return optuna.load_study(study_name=summary["study"], storage=autotl.storage.make_storage(None, out))


def test_the_default_recipe_runs_first_on_the_leading_backbones(split_folder, tmp_path, plugins):
    from autotl.defaults import recipe_params
    from autotl.space import load_space_file, resolve_space

    out = tmp_path / "run"
    autotl.search(str(split_folder), space="default", backbones="timm/test_vit,timm/test_resnet", trials=3,
                  epochs=2, device="cpu", out=str(out), default_trials=2, report=False, rank=False)
    trials = study_of(out).trials
    space = resolve_space(load_space_file("default"), plugins, ["timm/test_vit", "timm/test_resnet"], 2)
    for t, backbone in zip(trials[:2], ("timm/test_vit", "timm/test_resnet")):
        assert t.params == recipe_params(space, backbone)
        assert t.user_attrs["origin"] == "default recipe"
        p = t.user_attrs["params"]
        # The default space has no strategy knob, so the recipe fine-tunes without its probe phase there.
        assert (p["strategy"], p["optimizer"], p["head_lr"], p["backbone_lr_mult"], p["weight_decay"],
                p["batch_size"], p["label_smoothing"], p["translate"], p["hflip"], p["augmentation"]) == \
               ("freeze_depth", "adamw", 2e-3, 1.0, 0.05, 16, 0.1, 0.0625, 0.0, "none")
    assert "origin" not in trials[2].user_attrs
    # The first recipe trial trains to the end; the second is an ordinary trial (under the default
    # space's promotion-based search it may pause at the first rung, epoch 1).
    assert trials[0].state == optuna.trial.TrialState.COMPLETE and len(trials[0].intermediate_values) == 2
    assert trials[1].intermediate_values


def test_the_space_file_sets_how_many_recipe_trials_and_the_flag_overrides_it(split_folder, tmp_path):
    """The default space runs one recipe trial (promotion-based search spends its budget on the search);
    a space's ``default_trials`` sets the number and ``--default-trials`` overrides both."""
    from autotl.space import load_space_file

    assert load_space_file("default").default_trials == 1 and load_space_file("quick").default_trials == 3
    space = tmp_path / "space.yaml"
    space.write_text("epochs: 1\ndefault_trials: 2\nparams:\n  head_lr: {low: 1.0e-3, high: 1.0e-2, log: true}\n")
    for name, extra, recipes in (("own", {}, 2), ("flag", {"default_trials": 0}, 0)):
        out = tmp_path / name
        autotl.search(str(split_folder), space=str(space), backbones="timm/test_vit,timm/test_resnet", trials=3,
                      device="cpu", out=str(out), report=False, rank=False, warm_start="off", soup=0, quiet=True,
                      **extra)
        origins = [t.user_attrs.get("origin") for t in study_of(out).trials]
        assert origins.count("default recipe") == recipes, (name, origins)


def test_the_first_default_trial_is_never_pruned_and_the_others_may_be(split_folder, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("epochs: 3\npruner: {name: median, n_startup_trials: 0, n_warmup_steps: 0}\n"
                     "params:\n  head_lr: 5.0e-3\n  freeze_depth: 0.0\n")
    out = tmp_path / "run"
    autotl.search(str(split_folder), space=str(space), backbones="acme/good,acme/constant", trials=6, device="cpu",
                  out=str(out), default_trials=2, report=False, seed=1, plugins=[str(FIXTURE_PLUGINS / "ranked.py")],
                  rank=False)
    trials = study_of(out).trials
    assert [t.params["backbone"] for t in trials[:2]] == ["acme/good", "acme/constant"]  # by source accuracy
    assert trials[0].user_attrs["never_pruned"] and "never_pruned" not in trials[1].user_attrs
    assert trials[0].state.name == "COMPLETE" and len(trials[0].intermediate_values) == 3
    assert trials[1].state.name == "PRUNED"  # the weaker backbone's recipe is an ordinary trial


def test_the_recipe_is_projected_onto_a_narrow_space(tmp_path, plugins):
    from autotl.defaults import recipe_params
    from autotl.space import load_space_file, resolve_space

    path = tmp_path / "space.yaml"
    path.write_text("params:\n  head_lr: {low: 1.0e-2, high: 1.0e-1, log: true}\n  freeze_depth: {choices: [0.5, 1.0]}\n"
                    "  strategy: freeze_depth\n  batch_size: {choices: [8, 16, 64]}\n")
    space = resolve_space(load_space_file(str(path)), plugins, ["timm/test_vit"], 2)
    assert recipe_params(space, "timm/test_vit") == {"backbone": "timm/test_vit", "adapter": "linear",
                                                     "head_lr": 1e-2, "freeze_depth": 0.5, "batch_size": 16}


def test_leading_backbones_follow_the_source_accuracy(tmp_path):
    from autotl.defaults import leading_backbones
    from autotl.space import load_space_file, resolve_space

    for name in ("resnet18.a1_in1k", "convnext_tiny.fb_in22k_ft_in1k", "resnet50.a1_in1k"):  # usable offline
        (Path(os.environ["AUTOTL_TIMM_WEIGHTS"]) / f"{name}.safetensors").touch()
    plugins = autotl.get_plugin_manager()
    space = resolve_space(load_space_file("default"), plugins, ["timm/resnet18.a1_in1k", "timm/convnext_tiny*",
                                                                 "timm/resnet50.a1_in1k"], 2)
    assert leading_backbones(space, plugins, 2) == ["timm/convnext_tiny.fb_in22k_ft_in1k", "timm/resnet50.a1_in1k"]


def test_a_resumed_study_gets_no_second_default_trials(split_folder, tmp_path):
    out = tmp_path / "run"
    for _ in range(2):
        autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=1, epochs=1, device="cpu",
                      out=str(out), study="again", default_trials=1, report=False)
    assert [t.user_attrs.get("origin") for t in study_of(out).trials] == ["default recipe", None]


def oom_search(split_folder, tmp_path, monkeypatch, limit):
    """One trial at batch 16 on a network that runs out of memory above ``limit`` images."""
    monkeypatch.setenv("OOM_LIMIT", str(limit))
    space = tmp_path / "space.yaml"
    space.write_text("epochs: 1\npruner: none\nparams:\n  batch_size: 16\n  freeze_depth: 0.0\n")
    out = tmp_path / "run"
    code = main(["search", str(split_folder), "--plugin", str(FIXTURE_PLUGINS / "oom_net.py"), "--backbones",
                 "acme/hungry", "--space", str(space), "--trials", "1", "--device", "cpu", "--out", str(out),
                 "--default-trials", "0", "--no-report"])
    return code, study_of(out).trials[0]


def test_out_of_memory_retries_at_half_the_batch(split_folder, tmp_path, monkeypatch):
    code, trial = oom_search(split_folder, tmp_path, monkeypatch, limit=8)
    assert code == 0 and trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["oom_retry"] == {"batch_size": 16, "retried_at": 8}


def test_out_of_memory_twice_fails_the_trial_cleanly(split_folder, tmp_path, monkeypatch):
    code, trial = oom_search(split_folder, tmp_path, monkeypatch, limit=4)
    assert code == 1 and trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"].startswith("out of memory on cpu at batch_size 16 and 8: OutOfMemoryError")
    assert "narrow batch_size in the space" in trial.user_attrs["fail_reason"]


def test_out_of_memory_retry_runs_after_the_failed_attempt_is_freed(split_folder, tmp_path, monkeypatch):
    """The retry at half the batch must not run while the failed attempt's memory is still held (by the
    exception's traceback, which keeps its frames and their tensors alive): on a GPU that memory is
    exactly what the retry needs. The failed attempt really allocates 256 MB."""
    record = tmp_path / "oom_record.json"
    monkeypatch.setenv("OOM_HOARD_MB", "256")
    monkeypatch.setenv("OOM_RECORD", str(record))
    code, trial = oom_search(split_folder, tmp_path, monkeypatch, limit=8)
    assert code == 0 and trial.state == optuna.trial.TrialState.COMPLETE
    assert trial.user_attrs["oom_retry"] == {"batch_size": 16, "retried_at": 8}
    seen = json.loads(record.read_text())
    assert seen["failed_attempts"] == 1 and seen["batch"] <= 8
    assert seen["alive_at_retry"] == 0, "the failed attempt's 256 MB were still alive when the retry started"
