"""The bad-input matrix of docs/errors.md: each row's behaviour, through the CLI or the Python API.

Rows already covered by another test file name that test in docs/errors.md; the rest are here.
"""
from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path

import optuna
import pytest

import autotl
import autotl.storage
from helpers import one_line, run_cli as run
from autotl.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("url, shown", [
    ("postgresql://bob:s3cret@127.0.0.1:1/autotl", "postgresql://bob:***@127.0.0.1:1/autotl"),
    ("postgresql://nobody:s3cret@127.0.0.1:5432/test", "postgresql://nobody:***@127.0.0.1:5432/test"),
])
def test_unreachable_or_refusing_storage_is_one_line_without_the_password(url, shown, split_folder, tmp_path, capsys):
    code, _, err = run(["search", str(split_folder), "--storage", url, "--backbones", "timm/test_vit",
                        "--out", str(tmp_path / "run")], capsys)
    line = one_line(err)
    assert code == 2 and f"cannot open storage '{shown}'" in line and "s3cret" not in err
    assert "check the URL" in line


def test_unreadable_images_only(tmp_path, capsys):
    for name in ("cat", "dog"):
        (tmp_path / "d" / name).mkdir(parents=True)
        (tmp_path / "d" / name / "x.png").write_bytes(b"not an image")
    code, _, err = run(["search", str(tmp_path / "d")], capsys)
    assert code == 1 and "no readable training images" in one_line(err)


def test_a_world_writable_plugins_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "mine.py").write_text("raise SystemExit('must never run')\n")
    folder.chmod(folder.stat().st_mode | stat.S_IWOTH)
    code, _, err = run(["plugins", "--plugins-dir", str(folder)], capsys)
    line = one_line(err)
    assert code == 1 and "is writable by every user" in line and "chmod o-w" in line


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARK']}",))


def test_a_pickle_that_carries_code_is_refused(tmp_path, monkeypatch, capsys, split_folder):
    import timm
    import torch

    mark = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARK", str(mark))
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    with open(zoo / "evil.pth", "wb") as fh:
        pickle.dump({"weight": Evil()}, fh)
    (zoo / "evil.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 5}))
    torch.save(timm.create_model("test_resnet", num_classes=5).state_dict(), zoo / "plain.pth")  # tensors only: fine
    (zoo / "plain.json").write_text(json.dumps({"architecture": "test_resnet", "num_classes": 5}))
    space = tmp_path / "space.yaml"
    space.write_text("epochs: 1\npruner: none\n")
    code, out, err = run(["search", str(split_folder), "--zoo", str(zoo), "--backbones", "zoo/*", "--space",
                          str(space), "--trials", "3", "--device", "cpu", "--out", str(tmp_path / "run"),
                          "--no-report", "--default-trials", "2"], capsys)
    assert not mark.exists()  # the pickle's code never ran
    study = optuna.load_study(study_name=json.loads((tmp_path / "run" / "summary.json").read_text())["study"],
                              storage=autotl.storage.make_storage(None, tmp_path / "run"))
    reasons = {t.params["backbone"]: t.user_attrs.get("fail_reason") for t in study.trials}
    assert "refused to load evil.pth: it holds pickled objects or code, not only tensors" in reasons["zoo/evil"]
    assert reasons["zoo/plain"] is None and code == 0


def test_a_pickle_named_safetensors_is_refused(tmp_path):
    from autotl.checkpoints import read_weights
    from autotl.errors import ModelError

    path = tmp_path / "model.safetensors"
    with open(path, "wb") as fh:
        pickle.dump({"a": 1}, fh)
    with pytest.raises(ModelError, match="model.safetensors is a pickle, not a safetensors file"):
        read_weights(str(path))


def test_a_full_disk_for_artifacts_keeps_the_trial_and_the_old_best(split_folder, tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "run"
    autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=1, epochs=1, device="cpu",
                  out=str(out), study="disk", report=False, default_trials=0)
    before = (out / "best" / "config.json").read_text()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.warns(UserWarning, match="could not write best/: OSError: .*No space left on device"):
        # a second study into the same artifact folder: its first trial is its best, so it tries to export
        result = autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=2, epochs=1,
                               device="cpu", out=str(out), study="disk2", report=False, default_trials=0)
    study = optuna.load_study(study_name="disk2", storage=autotl.storage.make_storage(None, out))
    assert all(t.state.is_finished() and t.state.name != "FAIL" for t in study.trials)
    assert result.summary["best"] is not None and result.summary["best"]["model_dir"] is None
    assert (out / "best" / "config.json").read_text() == before  # untouched, still loadable
    assert not [p for p in out.iterdir() if p.name.startswith(".best")  and p.is_dir()]  # no half-written folder
    assert autotl.predict(str(out), [str(split_folder / "test" / "cat")], device="cpu")


def test_an_interrupted_run_keeps_finished_trials_and_writes_its_report(split_folder, tmp_path):
    out = tmp_path / "run"
    seen = []

    def stop_after_two(record):
        seen.append(record.number)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=5, epochs=1, device="cpu",
                      out=str(out), study="ctrlc", on_trial=stop_after_two, default_trials=0)
    study = optuna.load_study(study_name="ctrlc", storage=autotl.storage.make_storage(None, out))
    assert len(study.trials) == 2 and all(t.state.is_finished() for t in study.trials)
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["trials"].values()) == 2 and (out / "report.html").is_file()
    assert autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=1, epochs=1,
                         device="cpu", out=str(out), study="ctrlc").summary["trials"]["complete"] >= 2  # resumes


def test_ctrl_c_inside_a_trial_marks_it_interrupted(split_folder, tmp_path, monkeypatch):
    import autotl.trainer

    real_fit = autotl.trainer.fit
    calls = []

    def fit_then_stop(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(autotl.trainer, "fit", fit_then_stop)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=4, epochs=1, device="cpu",
                      out=str(out), study="inside", default_trials=0, report=False)
    trials = optuna.load_study(study_name="inside", storage=autotl.storage.make_storage(None, out)).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL"]
    assert trials[1].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert json.loads((out / "summary.json").read_text())["trials"]["complete"] == 1


def test_every_row_of_the_matrix_names_a_test_that_exists():
    rows = [line for line in (ROOT / "docs" / "errors.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| #") and "---" not in line]
    assert len(rows) >= 25
    sources = {p.name: p.read_text() for p in (ROOT / "tests").glob("test_*.py")}
    for row in rows:
        ref = row.rstrip(" |").rsplit("|", 1)[-1].strip().strip("`")
        file, _, name = ref.partition("::")
        assert file in sources, row
        assert f"def {name.split('[')[0]}(" in sources[file], row


def test_the_same_command_again_resumes_its_study(split_folder, tmp_path, capsys):
    args = ["search", str(split_folder), "--space", "quick", "--backbones", "timm/test_vit", "--trials", "1",
            "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-report", "--default-trials", "0"]
    assert main(args) == 0 and main(args) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert sum(summary["trials"].values()) == 2
    assert [s.study_name for s in optuna.get_all_study_summaries(autotl.storage.make_storage(None, tmp_path / "run"))] \
        == [summary["study"]]


def test_a_warning_prints_as_one_line_with_what_to_do_and_no_source_path(tmp_path, capsys):
    """A warning the user sees is one line, ``warning: <what> — <what to do>``: no file name, line
    number or source line of autotl's code (here: a zoo file autotl cannot read, on `autotl backbones`)."""
    import warnings

    from autotl import errors

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "broken.json").write_text("{not json")
    with warnings.catch_warnings():  # pytest records warnings instead of showing them: show them as the CLI does
        warnings.simplefilter("always")
        errors._install_warning_format()
        code, out, err = run(["backbones", "--zoo", str(zoo)], capsys)
    assert code == 0 and "timm/test_resnet" in out
    shown = [line for line in err.splitlines() if line.strip()]
    assert len(shown) == 1, err
    assert shown[0].startswith("warning: zoo: skipped broken.json: ") and " — fix or remove " in shown[0]
    assert ".py:" not in err and "warnings.warn" not in err and "Traceback" not in err


# --- what the core needs a plain head for, with autotl_heads blocked --------------------------

PLAIN_HEAD_MISSING = ("needs a plain linear head adapter, and none is registered (autotl_heads is blocked) — drop "
                      "--block-plugin autotl_heads or load a plugin that registers one (a TargetAdapter with "
                      "plain_head=True)")


def test_ranking_without_a_plain_head_says_what_is_missing_and_how_to_fix_it(split_folder, tmp_path, capsys):
    code, _, err = run(["rank", str(split_folder), "--backbones", "timm/test_vit", "--device", "cpu",
                        "--out", str(tmp_path / "rank"), "--block-plugin", "autotl_heads"], capsys)
    assert code == 1 and one_line(err) == f"error: ranking {PLAIN_HEAD_MISSING}"
    assert not (tmp_path / "rank").exists()


def test_rank_sources_without_a_plain_head_is_one_error_not_every_backbone_skipped(split_folder):
    from autotl import PluginError, get_plugin_manager
    from autotl.ranking import rank_sources

    blocked = get_plugin_manager(blocked=["autotl_heads"])
    with pytest.raises(PluginError) as info:
        rank_sources(blocked, None, ["timm/test_vit"], "cpu")
    assert str(info.value) == f"ranking {PLAIN_HEAD_MISSING}"


def test_a_search_without_a_plain_head_to_rank_with_searches_unranked_with_one_warning(split_folder, tmp_path):
    from autotl import AutotlWarning

    space = tmp_path / "cosine.yaml"
    space.write_text("adapters: [cosine]\n")
    with pytest.warns(AutotlWarning) as seen:
        result = autotl.search(str(split_folder), space=str(space), backbones=["timm/test_vit", "timm/test_resnet"],
                               trials=1, epochs=1, device="cpu", out=str(tmp_path / "run"), default_trials=0,
                               report=False, blocked_plugins=["autotl_heads"])
    assert sum(result.summary["trials"].values()) == 1 and not (tmp_path / "run" / "rank.json").exists()
    shown = [str(w.message) for w in seen if "ranking" in str(w.message)]
    assert shown == [f"skipped ranking the backbones: ranking {PLAIN_HEAD_MISSING}; the search goes on unranked "
                     "(--no-rank skips ranking)"]


def test_pretraining_without_a_plain_head_says_what_is_missing_and_how_to_fix_it(split_folder, tmp_path, capsys):
    out = tmp_path / "zoo" / "mine.safetensors"
    code, _, err = run(["pretrain", str(split_folder), "--backbone", "timm/test_resnet", "--epochs", "1",
                        "--out", str(out), "--device", "cpu", "--block-plugin", "autotl_heads"], capsys)
    assert code == 1 and one_line(err) == f"error: pretraining {PLAIN_HEAD_MISSING}"
    assert not out.parent.exists()


def test_a_lora_search_without_a_plain_head_to_export_as_stops_before_training(split_folder, tmp_path, capsys):
    space = tmp_path / "lora.yaml"
    space.write_text("adapters: [lora]\n")
    code, _, err = run(["search", str(split_folder), "--space", str(space), "--backbones", "timm/test_vit",
                        "--trials", "1", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run"),
                        "--block-plugin", "autotl_heads"], capsys)
    assert code == 2 and one_line(err) == (f"error: {space}: adapters: exporting a 'lora' model "
                                           f"{PLAIN_HEAD_MISSING}")
    assert not (tmp_path / "run" / "best").exists()


def test_exporting_a_trained_lora_model_without_a_plain_head_is_one_line(plugins):
    """The same check where the export happens (best/, refit), for a caller that skipped the space."""
    from autotl import PluginError, get_plugin_manager
    from autotl.export import merged_for_export
    from autotl.model import build_model

    params = {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": "attn_mlp"}
    lora = plugins.adapters.get("lora")
    model = build_model(plugins.sources.get("timm/test_vit"), lora, 2, params)
    blocked = get_plugin_manager(blocked=["autotl_heads"])
    with pytest.raises(PluginError) as info:
        merged_for_export(model.module, model.module.state_dict(), lora, blocked, params)
    assert str(info.value) == f"exporting a 'lora' model {PLAIN_HEAD_MISSING}"
    state, target, kept = merged_for_export(model.module, model.module.state_dict(), lora, plugins, params)
    assert target.name == "linear" and target.plain_head and kept == {}
    assert not any("lora" in k for k in state)


def test_a_space_whose_adapter_is_in_a_blocked_plugin_names_the_blocked_plugin(split_folder, tmp_path, capsys):
    code, _, err = run(["search", str(split_folder), "--space", "quick", "--backbones", "timm/test_vit",
                        "--device", "cpu", "--out", str(tmp_path / "run"), "--block-plugin", "autotl_heads"], capsys)
    line = one_line(err)
    assert code == 2 and line.startswith("error: ")
    assert "adapters: unknown target adapter 'linear' — registered: " in line
    assert line.endswith("(blocked with --block-plugin: autotl_heads; drop that flag if one of them registers it)")
    space = tmp_path / "bare.yaml"
    space.write_text("epochs: 1\n")  # no adapters: the registered plain head, so here none
    code, _, err = run(["search", str(split_folder), "--space", str(space), "--backbones", "timm/test_vit",
                        "--device", "cpu", "--out", str(tmp_path / "run"), "--block-plugin", "autotl_heads"], capsys)
    assert code == 2 and one_line(err) == (f"error: {space}: adapters: a space without an adapters list "
                                           f"{PLAIN_HEAD_MISSING}")
