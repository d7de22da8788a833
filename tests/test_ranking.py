"""Choosing sources before training: `autotl rank`, the ranking as the search's prior, --preselect,
the report's predicted-vs-achieved view, and warm starts from the search history."""
from __future__ import annotations

import json

import optuna

import autotl
import autotl.storage
from autotl.cli import main
from conftest import FIXTURE_PLUGINS

RANKED = str(FIXTURE_PLUGINS / "ranked.py")


def trials_of(out):
    summary = json.loads((out / "summary.json").read_text())
    return optuna.load_study(study_name=summary["study"], storage=autotl.storage.make_storage(None, out)).trials


def test_rank_command_scores_every_backbone(split_folder, tmp_path, capsys):
    out = tmp_path / "rank"
    assert main(["rank", str(split_folder), "--backbones", "timm/test_vit,timm/test_resnet,acme/learner,acme/blind",
                 "--plugin", RANKED, "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    header, *rows = [line for line in printed.splitlines() if line.strip()][:5]
    assert header.split()[:5] == ["rank", "backbone", "logme", "knn", "hscore"]
    data = json.loads((out / "rank.json").read_text())
    assert sorted(data["order"]) == ["acme/blind", "acme/learner", "timm/test_resnet", "timm/test_vit"]
    assert data["order"][-1] == "acme/blind"  # features that ignore the image predict nothing
    assert set(data["scores"]["acme/learner"]) == {"logme", "knn", "hscore"}
    assert all(data["seconds"][n]["features"] >= 0 for n in data["order"])
    assert data["rank"]["acme/blind"] == 4


def test_the_ranking_decides_which_backbones_get_the_first_trials(split_folder, tmp_path):
    for rank, first in ((True, "acme/learner"), (False, "acme/blind")):
        out = tmp_path / f"run{rank}"
        autotl.search(str(split_folder), space="quick", backbones="acme/learner,acme/blind", trials=1, epochs=1,
                      device="cpu", out=str(out), plugins=[RANKED], default_trials=1, rank=rank, report=False,
                      warm_start="off")
        trial = trials_of(out)[0]
        assert trial.params["backbone"] == first and trial.user_attrs["origin"] == "default recipe"
    assert (tmp_path / "runTrue" / "rank.json").is_file() and not (tmp_path / "runFalse" / "rank.json").exists()


def test_preselect_keeps_only_the_best_ranked_backbones(split_folder, tmp_path):
    out = tmp_path / "run"
    result = autotl.search(str(split_folder), space="quick", backbones="acme/learner,acme/blind,timm/test_resnet",
                           trials=4, epochs=1, device="cpu", out=str(out), plugins=[RANKED], preselect=1,
                           report=False)
    order = json.loads((out / "rank.json").read_text())["order"]
    assert {t.params["backbone"] for t in trials_of(out)} == {order[0]}
    assert result.report["header"]["budget"]["backbones"] == [order[0]]


def test_the_report_puts_the_predicted_rank_beside_the_achieved_metric(split_folder, tmp_path):
    out = tmp_path / "run"
    # One epoch per trial: nothing can be pruned, so every backbone's recipe trial completes (only the
    # first recipe trial is protected from the pruner).
    result = autotl.search(str(split_folder), space="quick", backbones="acme/learner,acme/blind,timm/test_resnet",
                           trials=5, epochs=1, device="cpu", out=str(out), plugins=[RANKED], default_trials=3,
                           seed=1)
    facts = result.report
    ranks = json.loads((out / "rank.json").read_text())["rank"]
    predicted = {n: e["predicted_rank"] for n, e in facts["by_backbone"].items()}
    assert predicted == {n: ranks[n] for n in facts["by_backbone"]}
    assert facts["ranking"]["backbones"] == 3 and -1.0 <= facts["ranking"]["tau"] <= 1.0
    assert "Kendall's tau" in (out / "report.md").read_text()


def write_history(path, entries):
    path.write_text("\n".join(json.dumps(e) for e in entries) + "\n")


def entry(study, n_train, trials):
    return {"study": study, "metric": "accuracy",
            "meta": {"task": "multiclass", "n_train": n_train, "n_classes": 3, "image_side": 32.0, "channels": 3,
                     "logme": {}},
            "trials": [{"params": p, "value": v} for p, v in trials]}


def test_warm_start_takes_the_most_similar_search_and_skips_missing_backbones(split_folder, tmp_path, monkeypatch):
    history = tmp_path / "history.jsonl"
    monkeypatch.setenv("AUTOTL_HISTORY", str(history))
    close = entry("close", 30, [({"backbone": "acme/gone", "adapter": "linear", "head_lr": 0.004}, 0.99),
                                ({"backbone": "timm/test_resnet", "adapter": "linear", "head_lr": 0.00777,
                                  "freeze_depth": 0.5}, 0.9)])
    far = entry("far", 50_000, [({"backbone": "timm/test_vit", "adapter": "linear", "head_lr": 0.0005}, 0.95)])
    write_history(history, [far, close])
    out = tmp_path / "run"
    autotl.search(str(split_folder), space="quick", backbones="timm/test_vit,timm/test_resnet", trials=1, epochs=1,
                  device="cpu", out=str(out), default_trials=0, rank=False, report=False)
    trials = trials_of(out)
    assert trials[0].user_attrs["origin"] == "warm start: close"
    assert trials[0].params["backbone"] == "timm/test_resnet"  # acme/gone is no longer registered: skipped
    assert abs(trials[0].params["head_lr"] - 0.00777) < 1e-12 and trials[0].params["freeze_depth"] == 0.5
    lines = history.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[-1])["study"] == json.loads((out / "summary.json").read_text())["study"]


def test_warm_start_by_name_and_off(split_folder, tmp_path, monkeypatch, capsys):
    history = tmp_path / "history.jsonl"
    monkeypatch.setenv("AUTOTL_HISTORY", str(history))
    write_history(history, [entry("far", 50_000, [({"backbone": "timm/test_vit", "adapter": "linear",
                                                    "head_lr": 0.0005}, 0.95)])])
    common = dict(space="quick", backbones="timm/test_vit", trials=1, epochs=1, device="cpu", default_trials=0,
                  rank=False, report=False)
    autotl.search(str(split_folder), out=str(tmp_path / "named"), warm_start="far", **common)
    assert trials_of(tmp_path / "named")[0].user_attrs["origin"] == "warm start: far"
    autotl.search(str(split_folder), out=str(tmp_path / "off"), warm_start="off", **common)
    assert "origin" not in trials_of(tmp_path / "off")[0].user_attrs
    assert main(["search", str(split_folder), "--warm-start", "nosuch", "--backbones", "timm/test_vit", "--space",
                 "quick", "--out", str(tmp_path / "bad")]) == 2
    assert "--warm-start nosuch: no such study in" in capsys.readouterr().err


def test_auto_warm_start_ignores_searches_that_are_too_different(split_folder, tmp_path, monkeypatch):
    history = tmp_path / "history.jsonl"
    monkeypatch.setenv("AUTOTL_HISTORY", str(history))
    write_history(history, [entry("far", 50_000, [({"backbone": "timm/test_vit", "adapter": "linear",
                                                    "head_lr": 0.0005}, 0.95)])])
    out = tmp_path / "run"
    autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=1, epochs=1, device="cpu",
                  out=str(out), default_trials=0, rank=False, report=False)
    assert "origin" not in trials_of(out)[0].user_attrs
