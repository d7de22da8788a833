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
from autotl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def run(args, capsys):
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


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
