"""End to end through the public API and the CLI: the run folder, best model, predict, resume."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import optuna
import pytest

import autotl
from autotl.cli import main
from conftest import FIXTURE_PLUGINS, make_split_folder

BACKBONES = "timm/test_vit,timm/test_resnet"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One small search with a test split and an observer plugin, shared by the tests below."""
    root = tmp_path_factory.mktemp("search")
    data = make_split_folder(root / "data")
    log = root / "observer.jsonl"
    mp = pytest.MonkeyPatch()
    mp.setenv("OBSERVER_LOG", str(log))
    seen = []
    try:
        result = autotl.search(str(data), space="quick", backbones=BACKBONES, trials=5, epochs=3, seed=0,
                               device="cpu", out=str(root / "run"), study="shared", default_trials=0,
                               plugins=[str(FIXTURE_PLUGINS / "observer.py")], on_trial=seen.append)
    finally:
        mp.undo()
    return {"result": result, "root": root, "data": data, "log": log, "seen": seen}


def load_study(result):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=result.study, storage=JournalStorage(JournalFileBackend(result.storage)))


def test_summary_json_matches_the_study(run):
    result = run["result"]
    summary = json.loads((run["root"] / "run" / "summary.json").read_text())
    study = load_study(result)
    states = [t.state for t in study.trials]
    assert summary["study"] == "shared" and summary["metric"] == "accuracy" and summary["direction"] == "maximize"
    assert summary["trials"] == {"complete": states.count(optuna.trial.TrialState.COMPLETE),
                                 "pruned": states.count(optuna.trial.TrialState.PRUNED),
                                 "fail": states.count(optuna.trial.TrialState.FAIL)}
    assert sum(summary["trials"].values()) == 5
    best = summary["best"]
    assert best["trial"] == study.best_trial.number and best["value"] == pytest.approx(study.best_value)
    assert best["backbone"] == study.best_trial.params["backbone"]
    assert best["params"]["head_lr"] == pytest.approx(study.best_trial.params["head_lr"])
    assert set(best["test"]) == {"accuracy", "balanced_accuracy", "macro_f1"}
    assert summary["epochs_total"] == sum(t.user_attrs["epochs_run"] for t in study.trials)
    assert summary["autotl_version"] == autotl.__version__
    assert summary["elapsed_s"] > 0
    assert summary == dict(result.summary) | {}


def test_trials_csv_has_one_row_per_trial(run):
    with open(run["root"] / "run" / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    study = load_study(run["result"])
    assert [int(r["number"]) for r in rows] == [t.number for t in study.trials]
    for row, t in zip(rows, study.trials):
        assert row["state"] == {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "fail"}[t.state.name]
        assert row["backbone"] == t.params["backbone"]
        assert int(row["epochs_run"]) == t.user_attrs["epochs_run"]
        assert float(row["seconds"]) > 0


def test_lifecycle_hooks_saw_every_trial(run):
    events = [json.loads(line) for line in run["log"].read_text().splitlines()]
    trials = [e for e in events if e["hook"] == "trial_finished"]
    finished = [e for e in events if e["hook"] == "search_finished"]
    assert [e["number"] for e in trials] == list(range(5))
    assert finished == [{"hook": "search_finished", "study": "shared", "best": run["result"].best["trial"], "n": 5}]
    assert [r.number for r in run["seen"]] == list(range(5))


def test_best_model_loads_into_plain_timm_without_autotl(run):
    best = run["root"] / "run" / "best"
    config = json.loads((best / "config.json").read_text())
    assert config["format"] == "timm" and config["trial"] == run["result"].best["trial"]
    assert config["classes"] == ["cat", "dog", "owl"]
    code = f"""
import sys, json, timm, torch, safetensors.torch
cfg = json.load(open({str(best / 'config.json')!r}))
model = timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"], **cfg["model_kwargs"])
model.load_state_dict(safetensors.torch.load_file({str(best / 'model.safetensors')!r}))
print(model(torch.zeros(2, *cfg["data_config"]["input_size"])).shape[1], "autotl" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["3", "False"]


def test_predict_round_trips_the_best_model(run, capsys):
    preds = run["root"] / "preds.csv"
    test_dir = run["data"] / "test"
    assert main(["predict", str(run["root"] / "run"), str(test_dir), "--out", str(preds), "--device", "cpu"]) == 0
    with open(preds) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 18
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in ("cat", "dog", "owl")]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row["label"] == ("cat", "dog", "owl")[probs.index(max(probs))]
    accuracy = sum(r["label"] == r["path"].split("/")[-2] for r in rows) / len(rows)
    assert accuracy == pytest.approx(run["result"].best["test"]["accuracy"])


def test_resume_adds_trials_without_losing_any(run, tmp_path):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(run["root"] / "run", out)
    before = load_study(run["result"]).trials
    result = autotl.search(str(run["data"]), space="quick", backbones=BACKBONES, trials=2, epochs=3, seed=0,
                           device="cpu", out=str(out), study="shared")
    after = load_study(result).trials
    assert len(after) == 7
    assert [(t.number, t.state, t.value, t.params) for t in after[:5]] == \
           [(t.number, t.state, t.value, t.params) for t in before]
    assert sum(result.summary["trials"].values()) == 7
    assert after[5].params != before[0].params  # a resumed search does not replay the first random points


def test_same_seed_same_first_params(run, tmp_path):
    result = autotl.search(str(run["data"]), space="quick", backbones=BACKBONES, trials=1, epochs=1, seed=0,
                           device="cpu", out=str(tmp_path / "again"), default_trials=0, warm_start="off")
    assert load_study(result).trials[0].params == load_study(run["result"]).trials[0].params
    other = autotl.search(str(run["data"]), space="quick", backbones=BACKBONES, trials=1, epochs=1, seed=5,
                          device="cpu", out=str(tmp_path / "other"), default_trials=0, warm_start="off")
    assert load_study(other).trials[0].params != load_study(run["result"]).trials[0].params


def test_resume_with_another_metric_is_refused(run, tmp_path, capsys):
    import shutil

    out = tmp_path / "metric"
    shutil.copytree(run["root"] / "run", out)
    code = main(["search", str(run["data"]), "--out", str(out), "--study", "shared", "--metric", "macro_f1",
                 "--backbones", BACKBONES, "--space", "quick", "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "study 'shared' optimises accuracy, not macro_f1" in err


def test_failed_trials_are_recorded_and_the_search_goes_on(split_folder, tmp_path, capsys):
    code = main(["search", str(split_folder), "--plugin", str(FIXTURE_PLUGINS / "broken_build.py"),
                 "--backbones", "broken/*,timm/test_vit", "--space", "quick", "--trials", "6", "--epochs", "1",
                 "--device", "cpu", "--out", str(tmp_path / "run"), "--seed", "1"])
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    with open(tmp_path / "run" / "trials.csv") as fh:
        rows = list(csv.DictReader(fh))
    failed = [r for r in rows if r["state"] == "fail"]
    assert code == 0 and summary["trials"]["fail"] == len(failed) >= 1
    assert all("source model 'broken/net' failed to build: RuntimeError: checkpoint corrupt" in r["fail_reason"]
               for r in failed)
    assert summary["trials"]["complete"] >= 1 and summary["best"]["backbone"] == "timm/test_vit"
    assert "fail" in out


def test_search_with_no_completed_trial_exits_non_zero(split_folder, tmp_path, capsys):
    code = main(["search", str(split_folder), "--plugin", str(FIXTURE_PLUGINS / "broken_build.py"),
                 "--backbones", "broken/*", "--space", "quick", "--trials", "2", "--device", "cpu",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "no trial completed" in err and "checkpoint corrupt" in err
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["best"] is None
    with open(tmp_path / "run" / "trials.csv") as fh:
        reasons = [r["fail_reason"] for r in csv.DictReader(fh)]
    # after the first failure, the broken source fails fast instead of being rebuilt every trial
    assert reasons[0].startswith("source model 'broken/net' failed to build")
    assert reasons[1].startswith("skipped: source model 'broken/net' failed to build: RuntimeError: checkpoint corrupt (trial 0)")


def test_non_timm_network_exports_autotl_format_and_predicts(split_folder, tmp_path):
    plugin = str(FIXTURE_PLUGINS / "custom_net.py")
    space = tmp_path / "space.yaml"
    space.write_text("epochs: 2\nadapters: [dropout_linear]\nbackbones: ['acme/*']\npruner: none\n")
    result = autotl.search(str(split_folder), space=str(space), trials=2, device="cpu", out=str(tmp_path / "run"),
                           plugins=[plugin])
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["format"] == "autotl" and config["source_model"] == "acme/tiny"
    assert "dropout" in config["adapter_params"]
    rows = autotl.predict(str(tmp_path / "run"), [str(split_folder / "test")], plugins=[plugin], device="cpu")
    accuracy = sum(r["label"] == r["path"].split("/")[-2] for r in rows) / len(rows)
    assert accuracy == pytest.approx(result.best["test"]["accuracy"])


def test_a_raising_progress_callback_does_not_stop_the_search(split_folder, tmp_path):
    def explode(record):
        raise RuntimeError("display broke")

    with pytest.warns(UserWarning, match="on_trial callback raised RuntimeError: display broke"):
        result = autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=2, epochs=1,
                               device="cpu", out=str(tmp_path / "run"), on_trial=explode)
    assert sum(result.summary["trials"].values()) == 2


def test_any_optuna_storage_url(split_folder, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    result = autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=1, epochs=1,
                           device="cpu", out=str(tmp_path / "run"), storage=url, study="on-sqlite")
    assert result.summary["storage"] == url and not (tmp_path / "run" / "study.journal").exists()
    study = optuna.load_study(study_name="on-sqlite", storage=url)
    assert len(study.trials) == 1 and study.user_attrs["metric"] == "accuracy"


def test_trials_are_scored_by_the_selection_rule_and_the_summary_says_which(run):
    """The built-in spaces score a trial by the mean of its last 3 epochs, not its luckiest one."""
    study = load_study(run["result"])
    assert study.user_attrs["selection"]["rule"] == "smoothed3"
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert complete
    for t in complete:
        curve = t.user_attrs["curve"]
        assert t.value == pytest.approx(sum(curve[-3:]) / len(curve[-3:]))
        assert t.user_attrs["selected_epoch"] == len(curve) and len(t.user_attrs["val_loss"]) == len(curve)
    summary = run["result"].summary
    assert summary["selection"]["description"].startswith("each trial is scored by the mean")
    best = summary["best"]
    assert best["val_test_gap"] == pytest.approx(best["value"] - best["test"]["accuracy"])


def test_resuming_with_another_selection_rule_is_refused(run, tmp_path, capsys):
    import shutil

    from autotl.space import resolve_space_path

    out = tmp_path / "rule"
    shutil.copytree(run["root"] / "run", out)
    space = tmp_path / "quick-best.yaml"
    space.write_text(resolve_space_path("quick").read_text() + "\nselection: best\n")
    code = main(["search", str(run["data"]), "--out", str(out), "--study", "shared", "--space", str(space),
                 "--backbones", BACKBONES, "--epochs", "3", "--trials", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "was searched with another space" in err
    assert len(load_study(run["result"]).trials) == 5


def test_a_raising_observer_report_or_history_only_warns_in_one_line_with_what_to_do(split_folder, tmp_path,
                                                                                     monkeypatch):
    import warnings

    from autotl import AutotlWarning

    plugin = tmp_path / "loud.py"
    plugin.write_text("from autotl import hookimpl\n\n\n@hookimpl\ndef autotl_trial_finished(record):\n"
                      "    raise ValueError('observer broke')\n")

    def broken_report(*args, **kwargs):
        raise RuntimeError("no fonts")

    def broken_history(*args, **kwargs):
        raise OSError("read-only file system")

    monkeypatch.setattr("autotl.report.write_report", broken_report)
    monkeypatch.setattr("autotl.history.record_search", broken_history)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=1, epochs=1,
                               device="cpu", out=str(out), plugins=[str(plugin)], default_trials=0)
    assert sum(result.summary["trials"].values()) == 1 and (out / "summary.json").is_file()
    shown = [str(w.message) for w in seen if issubclass(w.category, AutotlWarning)]
    expected = [
        "plugin 'loud' raised in autotl_trial_finished: ValueError: observer broke — fix the plugin, or stop "
        "loading it with --block-plugin loud; the search goes on",
        f"could not write the report: RuntimeError: no fonts — the trials and best/ are saved; retry with "
        f"`autotl report {out}`",
        "could not record the search in the warm-start history: read-only file system — make that file writable "
        "or point $AUTOTL_HISTORY elsewhere; --warm-start off skips the history",
    ]
    for line in expected:
        assert line in shown, shown
    assert all("\n" not in s for s in shown)
