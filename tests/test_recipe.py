"""The fine-tuning recipe: strategies (LP-FT, surgical), optimizers, schedules, augmentation,
mixup/cutmix, drop-path, gradient clipping, L2-SP and layer-wise decay."""
from __future__ import annotations

import pytest
import torch

from autotl.data import load_dataset
from autotl.freeze import frozen_group_count, set_trainable, trainable_groups
from autotl.regularize import L2SP, set_drop_path
from autotl.tensors import Augmentation, TensorCache
from autotl.trainer import fit, lp_epochs, make_optimizer
from helpers import build, one_epoch, tensors, trial_params

CPU = torch.device("cpu")


def trainable(model):
    return {n for n, p in model.module.named_parameters() if p.requires_grad}


def group_names(model, indices):
    return {n for i in indices for n in model.groups[i]}


@pytest.fixture
def small(plugins, image_folder):
    dataset = load_dataset(str(image_folder))
    model = build(plugins, "timm/test_vit")
    train, val = tensors(dataset, model)
    return plugins, dataset, model, train, val


def test_lp_ft_trains_the_head_alone_then_unfreezes_at_the_right_epoch(small):
    _, _, model, train, val = small
    seen = []
    params = trial_params(backbone="timm/test_vit", strategy="lp_ft", lp_fraction=0.5, freeze_depth=0.4)
    fit(model, train, val, params, epochs=4, metric="accuracy", device=CPU,
        on_epoch=lambda epoch, value, loss: seen.append(frozenset(trainable(model))))
    k = frozen_group_count(0.4, len(model.groups))
    frozen_part, upper = group_names(model, range(k)), group_names(model, range(k, len(model.groups)))
    assert frozen_part and upper
    assert seen[0] == seen[1] == model.head  # epochs 1-2: linear probe
    assert seen[2] == seen[3] == model.head | upper  # epochs 3-4: fine-tune above the freeze depth
    assert not seen[3] & frozen_part


@pytest.mark.parametrize("fraction, epochs, expected", [(0.25, 8, 2), (0.01, 8, 1), (0.9, 4, 3), (0.5, 1, 0)])
def test_lp_epochs_keep_at_least_one_epoch_for_each_phase(fraction, epochs, expected):
    assert lp_epochs(trial_params(strategy="lp_ft", lp_fraction=fraction), epochs) == expected
    assert lp_epochs(trial_params(strategy="freeze_depth"), epochs) == 0


def test_lp_ft_weights_move_only_in_the_head_during_the_probe(small):
    _, _, model, train, val = small
    before = {n: p.detach().clone() for n, p in model.module.named_parameters()}
    fit(model, train, val, trial_params(backbone="timm/test_vit", strategy="lp_ft", lp_fraction=0.5), epochs=2,
        metric="accuracy", device=CPU)
    # 2 epochs, 1 of them probing: the backbone moved only in the second
    moved = {n for n, p in model.module.named_parameters() if not torch.equal(before[n], p.detach())}
    assert model.head <= moved and moved - model.head


@pytest.mark.parametrize("position", [0.0, 0.5, 1.0])
def test_surgical_trains_exactly_one_group_and_the_head(plugins, position):
    model = build(plugins, "timm/test_resnet")
    n = len(model.groups)
    set_trainable(model, trainable_groups(n, strategy="surgical", surgical_group=position))
    group = {0.0: 0, 0.5: n // 2, 1.0: n - 1}[position]  # first, middle, last
    assert trainable(model) == model.head | set(model.groups[group])


def test_sgd_with_momentum_and_schedules(plugins):
    model = build(plugins)
    set_trainable(model, range(len(model.groups)))
    params = trial_params(optimizer="sgd", momentum=0.8, head_lr=0.1, warmup_epochs=0, schedule="linear")
    optimizer, scheduler = make_optimizer(model, params, epochs=4, steps_per_epoch=5)
    assert type(optimizer).__name__ == "SGD"
    assert all(g["momentum"] == 0.8 and g["nesterov"] for g in optimizer.param_groups)
    head = next(g for g in optimizer.param_groups if g.get("lr_scale", 1.0) == 1.0)
    lrs = []
    for step in (0, 10, 19):
        scheduler.step_update(num_updates=step)
        lrs.append(head["lr"])
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.05, rel=0.05) and lrs[2] < 0.01  # linear decay
    optimizer, scheduler = make_optimizer(model, trial_params(schedule="constant", head_lr=0.1, warmup_epochs=0),
                                          epochs=4, steps_per_epoch=5)
    head = next(g for g in optimizer.param_groups if g.get("lr_scale", 1.0) == 1.0)
    scheduler.step_update(num_updates=19)
    assert type(optimizer).__name__ == "AdamW" and head["lr"] == pytest.approx(0.1)


def test_layer_decay_gives_each_vit_block_its_rate(plugins):
    model = build(plugins, "timm/test_vit")
    set_trainable(model, range(len(model.groups)))
    optimizer, _ = make_optimizer(model, trial_params(backbone_lr="layer_decay", backbone_lr_mult=None,
                                                      layer_decay=0.5, head_lr=1.0, warmup_epochs=0),
                                  epochs=2, steps_per_epoch=2)
    names = {id(p): n for n, p in model.module.named_parameters()}
    lr = {names[id(p)]: g["lr"] for g in optimizer.param_groups for p in g["params"]}
    depth = sum(1 for n in lr if n.startswith("blocks.") and n.endswith(".norm1.weight"))
    assert lr["head.weight"] == 1.0
    for i in range(depth):  # timm numbers the embedding layer 0, block i as i + 1, the head as depth + 1
        assert lr[f"blocks.{i}.attn.qkv.weight"] == pytest.approx(0.5 ** (depth - i))
    assert lr["patch_embed.proj.weight"] == pytest.approx(0.5 ** (depth + 1))


def test_l2sp_penalty_matches_a_hand_computation():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    reg = L2SP(net, ["0.weight", "0.bias"], weight=0.3)
    with torch.no_grad():
        net[0].weight += torch.tensor([[1.0, -2.0], [0.5, 0.0]])
        net[0].bias += torch.tensor([3.0, 0.0])
        net[1].weight += 100.0  # not anchored: no penalty
    expected = 0.5 * 0.3 * (1 + 4 + 0.25 + 0 + 9 + 0)
    assert reg.penalty(net).item() == pytest.approx(expected)
    net[0].bias.requires_grad_(False)  # a frozen parameter cannot move, so it is not penalised
    assert reg.penalty(net).item() == pytest.approx(0.5 * 0.3 * 5.25)


def test_l2sp_pulls_the_backbone_toward_its_pretrained_weights(small):
    plugins, dataset, _, _, _ = small
    drift = {}
    for mode in ("off", "on"):
        torch.manual_seed(0)
        model = build(plugins, "timm/test_vit")
        train, val = tensors(dataset, model)
        start = {n: p.detach().clone() for n, p in model.module.named_parameters() if n not in model.head}
        fit(model, train, val, trial_params(backbone="timm/test_vit", head_lr=1e-2, backbone_lr_mult=1.0, l2sp=mode,
                                            l2sp_weight=100.0 if mode == "on" else None, weight_decay=0.0),
            epochs=2, metric="accuracy", device=CPU)
        drift[mode] = sum((p.detach() - start[n]).pow(2).sum().item()
                          for n, p in model.module.named_parameters() if n in start)
    assert drift["on"] < 0.5 * drift["off"]


def test_gradient_clipping_bounds_each_update(small):
    _, _, model, train, val = small
    before = [p.detach().clone() for p in model.module.parameters()]
    params = trial_params(backbone="timm/test_vit", optimizer="sgd", momentum=0.5, head_lr=0.1, weight_decay=0.0,
                          warmup_epochs=0, schedule="constant", grad_clip=1e-3, batch_size=8)
    fit(model, train, val, params, epochs=1, metric="accuracy", device=CPU)
    steps = len(train) // 8
    moved = torch.sqrt(sum((p.detach() - b).pow(2).sum() for p, b in zip(model.module.parameters(), before)))
    assert 0 < moved.item() <= 0.1 * 1e-3 * steps * 3  # lr x clip x steps x (nesterov momentum 0.5 at most 3x)


def test_drop_path_rises_with_depth_and_keeps_the_weights(plugins):
    from timm.layers import DropPath

    model = build(plugins, "timm/test_vit")
    keys = set(model.module.state_dict())
    assert set_drop_path(model.module, 0.2) > 0
    rates = [m.drop_prob for m in model.module.modules() if isinstance(m, DropPath)]
    assert rates == sorted(rates) and max(rates) == pytest.approx(0.2)
    assert set(model.module.state_dict()) == keys
    assert set_drop_path(torch.nn.Sequential(torch.nn.Linear(2, 2)), 0.2) == 0  # nothing to set


def test_training_with_augmentation_mixup_and_cutmix(small, image_folder):
    plugins, dataset, model, _, val = small
    train = TensorCache().train(dataset.train, model.data_config, Augmentation(crop_scale=0.6, hflip=0.5))
    result = fit(model, train, val, trial_params(backbone="timm/test_vit", mixup_alpha=0.4, cutmix_alpha=1.0,
                                                 label_smoothing=0.1, batch_size=7),
                 epochs=2, metric="accuracy", device=CPU)
    assert result.epochs_run == 2 and all(loss == loss for loss in result.train_loss)  # odd batches handled


def test_augmentation_workers_are_chosen_by_size_and_machine_and_draw_the_same_images(plugins, image_folder):
    import dataclasses

    from autotl.tensors import loader_workers

    assert loader_workers(100, cpus=16) == 0 and loader_workers(50_000, cpus=2) == 0
    assert loader_workers(50_000, cpus=4) == 3 and loader_workers(50_000, cpus=64) == 8
    dataset = load_dataset(str(image_folder))
    model = build(plugins, "timm/test_vit")
    draws = []
    for workers in (1, 1):
        torch.manual_seed(5)
        stream = TensorCache().train(dataset.train, model.data_config, Augmentation(crop_scale=0.6, hflip=0.5))
        draws.append(one_epoch(dataclasses.replace(stream, workers=workers)))
    assert draws[0].shape == (len(dataset.train), 3, 32, 32) and torch.equal(draws[0], draws[1])
