"""Selection rules: how a trial's epochs become its score and which epoch's weights it keeps."""
from __future__ import annotations

import pytest
import torch

from autotl.data import load_dataset
from autotl.selection import Selection
from autotl.space import load_space_file
from autotl.trainer import fit
from helpers import build, tensors, trial_params

CPU = torch.device("cpu")
CURVE = [0.5, 0.9, 0.7, 0.8, 0.6]


def test_best_takes_the_best_epoch_and_breaks_ties_by_validation_loss():
    rule = Selection("best")
    assert rule.score(CURVE, 1) == (0.9, 1)
    assert rule.is_better_epoch(0.8, 0.3, (0.8, 0.5), maximize=True)  # same score, lower loss
    assert not rule.is_better_epoch(0.8, 0.6, (0.8, 0.5), maximize=True)
    assert not rule.is_better_epoch(0.7, 0.1, (0.8, 0.5), maximize=True)
    assert rule.is_better_epoch(1.5, 0.9, (2.0, 0.1), maximize=False)  # e.g. rmse
    assert rule.keeps_best_epoch


def test_last_and_smoothed_score_the_end_of_the_curve_and_keep_the_last_weights():
    assert Selection("last").score(CURVE, 1) == (0.6, 4)
    value, epoch = Selection("smoothed", window=3).score(CURVE, 1)
    assert value == pytest.approx((0.7 + 0.8 + 0.6) / 3) and epoch == 4
    assert Selection("smoothed", window=10).score(CURVE[:2], 1)[0] == pytest.approx(0.7)  # shorter than the window
    assert not Selection("last").keeps_best_epoch and not Selection("smoothed").keeps_best_epoch


@pytest.mark.parametrize("rule", [Selection("best"), Selection("last"), Selection("smoothed", window=2)])
def test_fit_scores_by_the_rule_and_keeps_the_matching_weights(plugins, image_folder, rule):
    dataset = load_dataset(str(image_folder))
    model = build(plugins, "timm/test_vit")
    train, val = tensors(dataset, model)
    result = fit(model, train, val, trial_params(head_lr=5e-3), epochs=4, metric="accuracy", device=CPU,
                 selection=rule)
    assert len(result.val_loss) == len(result.curve) == 4 and result.best_value == max(result.curve)
    expected, epoch = rule.score(result.curve, result.best_epoch)
    assert result.score == pytest.approx(expected) and result.selected_epoch == epoch
    final = model.module.state_dict()
    same_as_final = all(torch.equal(result.state_dict[k], final[k].cpu()) for k in final)
    if rule.keeps_best_epoch and result.best_epoch < 3:
        assert not same_as_final
    if not rule.keeps_best_epoch:
        assert same_as_final and epoch == 3


def test_the_default_rule_and_a_files_own_rule(tmp_path):
    assert dict(load_space_file("default").selection) == {"name": "smoothed", "window": 3}
    path = tmp_path / "space.yaml"
    path.write_text("selection: best\n")
    assert Selection.from_section(load_space_file(str(path)).selection) == Selection("best")
