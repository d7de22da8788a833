"""Freeze depth, the BatchNorm policy, and learning-rate groups."""
from __future__ import annotations

import pytest
import torch

from autotl import get_plugin_manager
from autotl.data import load_dataset
from autotl.freeze import apply_freeze_depth, frozen_group_count
from autotl.trainer import fit, make_optimizer
from conftest import FIXTURE_PLUGINS
from helpers import build, tensors, trial_params


def trainable(model):
    return {n for n, p in model.module.named_parameters() if p.requires_grad}


def test_groups_run_input_to_output_and_exclude_the_head(plugins):
    model = build(plugins)
    assert len(model.groups) == 5
    assert model.groups[0][0].startswith("conv1")
    assert model.head == frozenset({"fc.weight", "fc.bias"})
    assert not model.head & {n for g in model.groups for n in g}


@pytest.mark.parametrize("depth, frozen_groups", [(0.0, 0), (0.5, 3), (1.0, 5)])
def test_freeze_depth_decides_what_trains(plugins, depth, frozen_groups):
    model = build(plugins)
    apply_freeze_depth(model, depth)
    expected = model.head | {n for g in model.groups[frozen_groups:] for n in g}
    assert trainable(model) == expected
    if depth == 1.0:
        assert trainable(model) == model.head  # a linear probe
    if depth == 0.0:
        assert trainable(model) == {n for n, _ in model.module.named_parameters()}


def test_frozen_group_count_rounds_halves_up():
    assert [frozen_group_count(d, 4) for d in (0, 0.1, 0.125, 0.5, 0.9, 1)] == [0, 0, 1, 2, 4, 4]


def test_vit_root_parameters_are_in_the_first_group(plugins):
    model = build(plugins, "timm/test_vit")
    assert {"cls_token", "pos_embed"} <= set(model.groups[0])
    apply_freeze_depth(model, 0.2)
    assert "cls_token" not in trainable(model)


def test_frozen_batchnorm_statistics_do_not_move(plugins, image_folder):
    model = build(plugins)
    dataset = load_dataset(str(image_folder))
    train, val = tensors(dataset, model)
    before = {n: b.clone() for n, b in model.module.named_buffers() if "running_mean" in n}
    fit(model, train, val, trial_params(freeze_depth=0.6), epochs=1, metric="accuracy", device=torch.device("cpu"))
    frozen_prefixes = {n.rsplit(".", 1)[0] for g in model.groups[:3] for n in g}
    moved = {n for n, b in model.module.named_buffers() if n in before and not torch.equal(before[n], b)}
    frozen_bn = {n for n in before if n.rsplit(".", 1)[0] in frozen_prefixes}
    assert frozen_bn and not (moved & frozen_bn)
    assert moved  # the trainable blocks' statistics did update


def _lrs(model, params, scheduler_steps=None):
    optimizer, scheduler = make_optimizer(model, params, epochs=3, steps_per_epoch=4)
    if scheduler_steps:
        scheduler.step_update(num_updates=scheduler_steps)
    names = {id(p): n for n, p in model.module.named_parameters()}
    return {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}


def test_multiplier_gives_backbone_a_fraction_of_the_head_rate(plugins):
    model = build(plugins)
    apply_freeze_depth(model, 0.0)
    lrs = _lrs(model, trial_params(head_lr=1e-2, backbone_lr_mult=0.1), scheduler_steps=5)
    head = lrs["fc.weight"]
    assert lrs["fc.bias"] == pytest.approx(head)
    assert lrs["layer1.0.conv1.weight"] == pytest.approx(0.1 * head)
    assert 0 < head < 1e-2  # the cosine schedule has started decaying


def test_layer_decay_grows_toward_the_head(plugins):
    model = build(plugins)
    apply_freeze_depth(model, 0.0)
    lrs = _lrs(model, trial_params(head_lr=1e-2, backbone_lr="layer_decay", backbone_lr_mult=None, layer_decay=0.5))
    stem, l1, l4, head = (lrs["conv1.0.weight"], lrs["layer1.0.conv1.weight"], lrs["layer4.0.conv1.weight"],
                          lrs["fc.weight"])
    assert stem < l1 < l4 < head
    assert l4 == pytest.approx(0.5 * head)


def test_frozen_parameters_are_not_in_the_optimizer(plugins):
    model = build(plugins)
    apply_freeze_depth(model, 1.0)
    assert set(_lrs(model, trial_params())) == set(model.head)


def test_custom_network_uses_declared_layer_groups_and_head():
    plugins = get_plugin_manager([str(FIXTURE_PLUGINS / "custom_net.py")])
    model = build(plugins, "acme/tiny", "dropout_linear", outputs=3, adapter_params={"dropout": 0.1})
    assert [g[0].split(".")[1] for g in model.groups] == ["stem", "block"]
    assert all(n.startswith("1.") for n in model.head)  # the adapter's Sequential head
    assert "0.classifier.weight" not in dict(model.module.named_parameters())  # source classifier removed
    apply_freeze_depth(model, 0.5)
    assert not any(n.startswith("0.stem") for n in trainable(model))
    assert any(n.startswith("0.block") for n in trainable(model))
    lrs = _lrs(model, trial_params(freeze_depth=0.0, backbone_lr="layer_decay", layer_decay=0.5, head_lr=1.0))
    assert lrs["0.block.0.weight"] == pytest.approx(lrs["1.1.weight"] * 0.5)


def test_backbone_rate_applies_from_the_first_step_without_warmup(plugins):
    model = build(plugins)
    apply_freeze_depth(model, 0.0)
    lrs = _lrs(model, trial_params(head_lr=1e-2, backbone_lr_mult=0.0, warmup_epochs=0))
    assert lrs["fc.weight"] == pytest.approx(1e-2)
    assert lrs["layer1.0.conv1.weight"] == 0.0  # a multiplier of 0 means a frozen rate, not the head's


def test_feature_width_is_what_the_headless_network_returns(plugins):
    from autotl.model import build_model

    source = plugins.sources.get("timm/mobilenetv3_large_100.ra_in1k")
    model = build_model(source, plugins.adapters.get("linear"), 4, {}, net=source.build_untrained())
    backbone_width = model.module.get_classifier().in_features
    assert backbone_width == 1280 and model.module.feature_width == 1280  # timm's num_features says 960
