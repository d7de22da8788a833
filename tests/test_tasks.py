"""Target tasks beyond multiclass: multi-label and regression CSVs through the same search,
report and predict."""
from __future__ import annotations

import csv
import json

import numpy as np
import optuna
import pytest
from PIL import Image

import autotl
import autotl.storage
from autotl.cli import main
from autotl.errors import DataError

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


def multilabel_csv(root, n=36, seed=0):
    """Images with up to two colour blobs; the labels are the colours present."""
    rng = np.random.RandomState(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        present = sorted(rng.choice(list(COLOURS), size=rng.randint(1, 3), replace=False))
        img = np.full((32, 32, 3), 128, dtype=np.uint8) + rng.randint(-20, 20, (32, 32, 3)).astype(np.uint8)
        for k, name in enumerate(present):
            img[4 + 14 * k:16 + 14 * k, 4:28] = COLOURS[name]
        Image.fromarray(img).save(root / f"img{i}.png")
        split = "test" if i >= n - 6 else ("val" if i >= n - 14 else "train")
        rows.append({"path": f"img{i}.png", "labels": ";".join(present), "split": split})
    path = root / "labels.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "labels", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def regression_csv(root, n=40, seed=0):
    """Grey images whose brightness is the target."""
    rng = np.random.RandomState(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        level = float(rng.uniform(20, 230))
        img = np.clip(level + rng.normal(0, 8, (32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / f"img{i}.png")
        rows.append({"path": f"img{i}.png", "target": f"{level / 10:.3f}", "split": "test" if i >= n - 6 else ""})
    path = root / "targets.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "target", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_multilabel_csv_loads_as_multi_hot_labels(tmp_path):
    from autotl.data import load_dataset

    ds = load_dataset(str(multilabel_csv(tmp_path / "ml")))
    assert ds.task == "multilabel" and ds.classes == ("blue", "green", "red")
    assert ds.train.labels.shape == (22, 3) and set(np.unique(ds.train.labels)) <= {0.0, 1.0}
    assert ds.train.labels.sum(1).min() >= 1 and ds.val_from == "given"
    assert ds.describe()["positives"] == {c: int(v) for c, v in zip(ds.classes, ds.train.labels.sum(0))}


def test_regression_csv_loads_numbers_and_splits_at_random(tmp_path):
    from autotl.data import load_dataset

    ds = load_dataset(str(regression_csv(tmp_path / "reg")))
    assert ds.task == "regression" and ds.classes == ("target",) and ds.val_from == "random"
    assert ds.train.labels.dtype == np.float32 and len(ds.train) + len(ds.val) == 34 and len(ds.test) == 6
    assert 2 <= ds.describe()["target"]["mean"] <= 23


@pytest.mark.parametrize("content, task, pattern", [
    ("path,label\na.png,cat\n", "regression", r"line 2 \('a.png'\): target 'cat' is not a finite number"),
    ("path,target\na.png,1\nb.png,1\nc.png,1\nd.png,1\n", "auto", r"every training target .* is 1"),
    ("path,labels\na.png,\nb.png,\n", "auto", r"no training image of .* has a label"),
    ("path,labels,split\na.png,x,train\nb.png,y,val\n", "auto", r"the val split has label\(s\) the train split lacks: 'y'"),
])
def test_bad_task_data(tmp_path, content, task, pattern):
    from autotl.data import load_dataset

    for name in "abcd":
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.png")
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_dataset(str(path), task=task)


def test_an_image_folder_is_multiclass(image_folder):
    from autotl.data import load_dataset

    with pytest.raises(DataError, match=r"holds multiclass labels, not multilabel ones — use a CSV with a labels"):
        load_dataset(str(image_folder), task="multilabel")


def test_a_metric_must_fit_the_task(tmp_path, capsys):
    path = regression_csv(tmp_path / "reg")
    assert main(["search", str(path), "--metric", "accuracy", "--backbones", "timm/test_vit", "--space", "quick"]) == 2
    assert "metric 'accuracy' does not apply to this regression data — use one of rmse, mae, r2" in capsys.readouterr().err
    assert main(["search", str(path), "--task", "multiclass", "--metric", "rmse"]) == 2
    assert "metric 'rmse' does not apply to a multiclass task" in capsys.readouterr().err


def test_regression_targets_are_standardised_for_training_and_mapped_back():
    import torch

    from autotl.tasks import make_task, task_from_config

    task = make_task("regression", np.array([10.0, 20.0, 30.0]))
    y = task.targets(np.array([10.0, 30.0]))
    assert torch.allclose(y, torch.tensor([-1.2247, 1.2247]), atol=1e-4)
    restored = task_from_config(task.export())
    assert restored.outputs(torch.tensor([[0.0], [1.2247449]])).tolist() == pytest.approx([20.0, 30.0], abs=1e-4)
    assert restored.score("mae", y.numpy(), np.array([12.0, 30.0])) == pytest.approx(1.0, abs=1e-4)
    assert restored.score("rmse", y.numpy(), np.array([12.0, 30.0])) == pytest.approx(np.sqrt(2.0), abs=1e-4)


def test_multilabel_metrics_on_a_constructed_case():
    from autotl.tasks import MultiLabelTask

    task = MultiLabelTask()
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=np.float32)
    perfect = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.6], [0.1, 0.3]])
    assert task.score("map", y, perfect) == 1.0 and task.score("macro_f1", y, perfect) == 1.0
    wrong = 1 - perfect
    assert task.score("micro_f1", y, wrong) == 0.0 and task.score("map", y, wrong) < 0.6
    rows = task.details(y, perfect, ["a", "b"])["rows"]
    assert [(r["label"], r["support"], r["f1"]) for r in rows] == [("a", 2, 1.0), ("b", 2, 1.0)]


def test_multilabel_search_report_and_predict(tmp_path, capsys):
    path = multilabel_csv(tmp_path / "ml")
    out = tmp_path / "run"
    assert main(["search", str(path), "--space", "quick", "--backbones", "timm/test_vit", "--trials", "3",
                 "--epochs", "3", "--device", "cpu", "--out", str(out), "--seed", "0"]) == 0
    assert "Leaderboard (map on val;" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "map" and summary["direction"] == "maximize"
    assert set(summary["best"]["test"]) == {"map", "macro_f1", "micro_f1"}
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["task"] == "multilabel" and config["threshold"] == 0.5 and config["classes"] == ["blue", "green", "red"]
    facts = json.loads((out / "report.json").read_text())
    assert facts["header"]["dataset"]["task"] == "multilabel"
    assert facts["best"]["details"]["kind"] == "per_label" and facts["best"]["details"]["split"] == "test"
    assert "confusion_matrix" not in facts["figures"]["drawn"] and not facts["figures"]["skipped"].get("confusion_matrix")
    assert "| label | support | F1 at 0.5 | AP |" in (out / "report.md").read_text()
    rows = autotl.predict(str(out), [str(tmp_path / "ml" / "img0.png")], device="cpu")
    assert set(rows[0]) == {"path", "labels", "p_blue", "p_green", "p_red"}
    chosen = {c for c in ("blue", "green", "red") if rows[0][f"p_{c}"] >= 0.5}
    assert set(filter(None, rows[0]["labels"].split(";"))) == chosen


def test_regression_search_minimises_and_predicts_numbers(tmp_path, capsys):
    path = regression_csv(tmp_path / "reg")
    out = tmp_path / "run"
    assert main(["search", str(path), "--space", "quick", "--backbones", "timm/test_vit", "--trials", "3",
                 "--epochs", "3", "--device", "cpu", "--out", str(out), "--seed", "0", "--metric", "mae"]) == 0
    printed = capsys.readouterr().out
    assert "Leaderboard (mae on val;" in printed
    study = optuna.load_study(study_name=json.loads((out / "summary.json").read_text())["study"],
                              storage=autotl.storage.make_storage(None, out))
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    facts = json.loads((out / "report.json").read_text())
    assert [r["trial"] for r in facts["leaderboard"]] == [t.number for t in sorted(complete, key=lambda t: (t.value, t.number))]
    assert facts["best"]["trial"] == study.best_trial.number and facts["header"]["direction"] == "minimize"
    assert facts["best"]["details"]["kind"] == "scatter" and "predictions" in facts["figures"]["drawn"]
    config = json.loads((out / "best" / "config.json").read_text())
    assert config["task"] == "regression" and config["num_classes"] == 1
    rows = autotl.predict(str(out), [str(tmp_path / "reg" / f"img{i}.png") for i in range(34, 40)], device="cpu")
    preds = np.array([r["prediction"] for r in rows])
    with open(path) as fh:
        truth = np.array([float(r["target"]) for r in csv.DictReader(fh)][34:])
    assert np.mean(np.abs(preds - truth)) == pytest.approx(facts["best"]["test"]["mae"], rel=1e-4)
    assert main(["predict", str(out), str(tmp_path / "reg" / "img0.png")]) == 0
    assert "prediction" in capsys.readouterr().out
