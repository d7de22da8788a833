"""Greedy soup: the best trials of one backbone averaged into best/ when that scores higher on validation."""
from __future__ import annotations

import json

import optuna
import pytest
import torch

import autotl
from autotl.export import load_model
from autotl.soup import average, choose_ingredients
from conftest import FIXTURE_PLUGINS

BACKBONE = "timm/test_resnet"
#: Trials that differ only in their learning rate, from one fixed initialisation: soup material.
SPACE = """epochs: 4
adapters: [linear]
sampler: {name: random}
pruner: {name: none}
params:
  freeze_depth: 0.5
  head_lr: {low: 3.0e-3, high: 1.0e-2, log: true}
  backbone_lr_mult: 1.0
  batch_size: 16
  warmup_epochs: 0
"""


def test_average_is_uniform_over_floats_and_keeps_integer_buffers():
    a = {"w": torch.tensor([0.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0, 4.0]), "n": torch.tensor(7)}
    c = {"w": torch.tensor([4.0, 0.0]), "n": torch.tensor(9)}
    out = average([a, b, c])
    assert torch.allclose(out["w"], torch.tensor([2.0, 2.0])) and int(out["n"]) == 3


def test_greedy_keeps_each_candidate_that_does_not_lower_the_score_in_order():
    target = torch.tensor([1.0, 1.0])
    score = lambda s: -float((s["w"] - target).norm())  # noqa: E731  (closer to the target is better)
    first = {"w": torch.tensor([0.0, 2.0])}
    helps = {"w": torch.tensor([2.0, 0.0])}  # averaging with it lands on the target
    hurts = {"w": torch.tensor([9.0, 9.0])}
    neutral = {"w": torch.tensor([1.0, 1.0])}  # the average stays on the target
    chosen, single, soup = choose_ingredients(first, [hurts, helps, neutral], score, lambda a, b: a > b)
    assert chosen == [1, 2] and single == pytest.approx(-2 ** 0.5) and soup == pytest.approx(0.0)
    assert choose_ingredients(first, [hurts], score, lambda a, b: a > b)[0] == []


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A search that keeps 8 models and cooks no soup, then a resume of it that cooks one (seed 0 is a
    case where averaging helps: deterministic on the CPU)."""
    root = tmp_path_factory.mktemp("soup")
    data = "builtin:digits"
    space = root / "space.yaml"
    space.write_text(SPACE)
    common = dict(space=str(space), backbones=["fixed/test_resnet"], plugins=[str(FIXTURE_PLUGINS / "fixed_init.py")],
                  seed=0, device="cpu", out=str(root / "run"), study="soup", default_trials=0, warm_start="off")
    first = autotl.search(str(data), trials=8, soup=0, keep_top=8, **common)
    second = autotl.search(str(data), trials=1, soup=8, keep_top=1, **common)
    return {"root": root, "data": data, "first": first, "second": second}


@pytest.mark.slow
def test_a_search_records_its_soup_and_best_is_the_better_of_soup_and_trial(searched):
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    root = searched["root"]
    study = optuna.load_study(study_name="soup", storage=JournalStorage(JournalFileBackend(str(root / "run" / "study.journal"))))
    soup = study.user_attrs["soup"]
    assert soup["tried"] >= 2 and soup["trials"][0] == study.best_trial.number
    config = json.loads((root / "run" / "best" / "config.json").read_text())
    summary = searched["second"].summary
    assert not (root / "run" / "top").exists()  # back to --keep-top 1
    if soup["kept"]:
        assert soup["val"] > soup["single_val"] and len(soup["trials"]) >= 2
        assert config["soup"] == soup and summary["best"]["soup"] == soup
        assert config["format"] == "timm" and config["trial"] == study.best_trial.number
    else:
        assert "soup" not in config and summary["best"]["soup"] is None
    module, _ = load_model(str(root / "run" / "best"))  # the soup is one plain network
    assert soup["kept"], "this seeded search is one where the soup helps; if it stops helping, pick another seed"


@pytest.mark.slow
def test_the_soup_scores_what_it_claims_and_its_test_score_is_its_own(searched):
    """Validation through `autotl predict`'s model equals the recorded soup score; the test score is re-scored."""
    from autotl.data import load_dataset
    from autotl.tensors import to_tensors
    from autotl.trainer import evaluate

    root = searched["root"]
    module, config = load_model(str(root / "run" / "best"))
    dataset = load_dataset(searched["data"], autotl.get_plugin_manager())
    val = evaluate(module, to_tensors(dataset.val.items, dataset.val.labels, config["data_config"]),
                   torch.device("cpu"))["accuracy"]
    test = evaluate(module, to_tensors(dataset.test.items, dataset.test.labels, config["data_config"]),
                    torch.device("cpu"))["accuracy"]
    summary = searched["second"].summary
    if config.get("soup"):
        assert val == pytest.approx(config["soup"]["val"])
        assert summary["best"]["val_test_gap"] == pytest.approx(config["soup"]["val"] - test)
    assert summary["best"]["test"]["accuracy"] == pytest.approx(test)


def test_soup_zero_turns_it_off_and_a_negative_soup_is_refused(split_folder, tmp_path, capsys):
    from autotl.cli import main

    result = autotl.search(str(split_folder), space="quick", backbones=[BACKBONE], trials=3, epochs=2, device="cpu",
                           out=str(tmp_path / "off"), default_trials=0, soup=0)
    assert result.summary["best"]["soup"] is None
    with pytest.raises(SystemExit) as exit_info:
        main(["search", str(split_folder), "--soup", "-1"])
    assert exit_info.value.code == 2 and "--soup: expected a whole number >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_the_report_shows_the_soup_and_its_test_score(searched):
    from autotl.report import report

    _, facts = report(str(searched["root"] / "run"))
    best = facts["best"]
    assert best["soup"]["kept"] and best["test"]["accuracy"] == pytest.approx(
        searched["second"].summary["best"]["test"]["accuracy"])
    assert best["val_test_gap"]["val"] == pytest.approx(best["soup"]["val"])
    text = (searched["root"] / "run" / "report.md").read_text()
    assert "Greedy soup: the weights of trials" in text and "Best model (the soup)" in text
