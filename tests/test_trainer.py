"""The fine-tuning loop: pruning stops a trial, NaN fails it, the CPU run is deterministic."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from autotl import SourceModel, TrialError
from autotl.data import load_dataset
from autotl.model import build_model
from autotl.trainer import fit, resolve_device
from helpers import build, fit_paused, tensors, trial_params

CPU = torch.device("cpu")


class PruneAfter:
    """A reporter (like an Optuna trial) that asks to prune after ``n`` reports."""

    def __init__(self, n):
        self.n, self.reports = n, []

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return len(self.reports) >= self.n


@pytest.fixture
def small(plugins, image_folder):
    return plugins, load_dataset(str(image_folder))


def test_pruning_stops_the_trial_early(small):
    plugins, dataset = small
    model = build(plugins)
    train, val = tensors(dataset, model)
    reporter = PruneAfter(2)
    result = fit(model, train, val, trial_params(), epochs=6, metric="accuracy", device=CPU, reporter=reporter)
    assert result.pruned and result.epochs_run == 2
    assert [s for s, _ in reporter.reports] == [1, 2]
    assert len(result.curve) == 2


def test_fit_learns_and_keeps_the_best_epoch(small):
    plugins, dataset = small
    model = build(plugins, "timm/test_vit")  # LayerNorm: no running statistics to warm up from random init
    train, val = tensors(dataset, model)
    result = fit(model, train, val, trial_params(head_lr=5e-3), epochs=5, metric="balanced_accuracy", device=CPU)
    assert result.epochs_run == 5 and not result.pruned
    assert result.best_value == max(result.curve) and result.curve[result.best_epoch] == result.best_value
    assert result.best_value > 0.5  # three colour classes are easy
    assert set(result.state_dict) == set(model.module.state_dict())


def test_same_seed_same_training_on_cpu(small):
    plugins, dataset = small
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build(plugins)
        train, val = tensors(dataset, model)
        runs.append(fit(model, train, val, trial_params(), epochs=2, metric="accuracy", device=CPU, seed=7))
    assert runs[0].curve == runs[1].curve
    assert all(torch.equal(runs[0].state_dict[k], runs[1].state_dict[k]) for k in runs[0].state_dict)


class NaNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3 * 32 * 32, 8)

    def forward(self, x):
        return self.lin(x.flatten(1)) * float("nan")


def test_nan_loss_fails_the_trial_with_a_clear_reason(small):
    plugins, dataset = small
    source = SourceModel(name="t/nan", build=NaNNet, data_config={"input_size": (3, 32, 32)})
    model = build_model(source, plugins.adapters.get("linear"), 3, {})
    train, val = tensors(dataset, model)
    with pytest.raises(TrialError, match="training loss became nan at epoch 1.*lower head_lr"):
        fit(model, train, val, trial_params(), epochs=2, metric="accuracy", device=CPU)


def test_failing_build_is_a_trial_error(plugins):
    def boom():
        raise OSError("weights missing")

    with pytest.raises(TrialError, match="source model 't/boom' failed to build: OSError: weights missing"):
        build_model(SourceModel(name="t/boom", build=boom), plugins.adapters.get("linear"), 3, {})


@pytest.mark.parametrize("spec, pattern", [
    ("tpu", "is not a device"),
    ("cuda:7" if torch.cuda.is_available() else "cuda", "CUDA"),
])
def test_bad_device(spec, pattern):
    from autotl import UsageError

    with pytest.raises(UsageError, match=pattern):
        resolve_device(spec)


def test_auto_device_falls_back_to_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == CPU


def test_an_epoch_is_split_into_equal_batches_not_a_ragged_tail(plugins, tmp_path):
    """20 images in batches of at most 16 train as 10 + 10, not 16 + a noisy batch of 4."""
    from conftest import make_folder

    dataset = load_dataset(str(make_folder(tmp_path / "d", per_class=10, classes=("a", "b"))), val_fraction=0.5)
    model = build(plugins, outputs=2)
    train, val = tensors(dataset, model)
    assert len(train) == 10
    seen = []
    handle = model.module.register_forward_pre_hook(lambda _m, args: seen.append(len(args[0])))
    fit(model, train, val, trial_params(batch_size=6), epochs=2, metric="accuracy", device=CPU)
    handle.remove()
    train_batches = [n for n in seen if n != len(val)]  # the rest are validation passes
    assert train_batches == [5, 5, 5, 5]  # ceil(10 / 6) = 2 equal batches per epoch; old code: 6 + 4


@pytest.mark.parametrize("changes, pause_at, rule", [
    ({}, 2, None),
    # Augmented views streamed through loader workers, mixup, LP-FT's switch after the pause, the best epoch kept.
    ({"hflip": 0.5, "translate": 0.125, "mixup_alpha": 0.4, "strategy": "lp_ft", "lp_fraction": 0.5}, 1, "best"),
    ({"strategy": "lp_ft", "lp_fraction": 0.25, "drop_path": 0.1, "warmup_epochs": 1}, 3, "smoothed"),
])
def test_a_paused_then_resumed_fit_equals_an_uninterrupted_one_bit_for_bit(small, tmp_path, changes, pause_at, rule):
    from autotl.selection import Selection
    from autotl.tensors import TensorCache

    plugins, dataset = small
    params = trial_params(backbone="timm/test_vit", **changes)
    straight, resumed = fit_paused(plugins, dataset, params, 4, pause_at, tmp_path, TensorCache(),
                                   Selection(rule) if rule else None)
    assert not resumed.paused and resumed.epochs_run == straight.epochs_run == 4
    assert resumed.curve == straight.curve and resumed.train_loss == straight.train_loss
    assert resumed.val_loss == straight.val_loss and resumed.best_epoch == straight.best_epoch
    assert resumed.score == straight.score and resumed.lp_epochs == straight.lp_epochs
    assert set(resumed.state_dict) == set(straight.state_dict)
    assert all(torch.equal(resumed.state_dict[k], straight.state_dict[k]) for k in straight.state_dict)
