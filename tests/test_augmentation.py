"""Augmentation as independent components: crop scale, flip, shift, RandAugment/TrivialAugment.

Nothing is implied: a policy without ``hflip`` never flips, which digits and text need.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from autotl.data import load_dataset
from autotl.errors import SpaceError
from autotl.space import load_space_file
from autotl.streaming import StreamSet
from autotl.tensors import Augmentation, TensorCache, eval_transform, train_transform
from helpers import build, one_epoch, trial_params

CONFIG = {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3, "interpolation": "bilinear",
          "crop_pct": 1.0}


def arrow() -> Image.Image:
    """An image whose left half is white and right half black: a flip swaps them."""
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    a[:, :16] = 255
    return Image.fromarray(a)


def draws(aug: Augmentation, n: int = 200, image: Image.Image = None):
    transform = train_transform(CONFIG, aug)
    random.seed(0)
    torch.manual_seed(0)
    image = image or arrow()
    return [transform(image) for _ in range(n)]


def left_minus_right(x: torch.Tensor) -> float:
    return float(x[:, :, :16].mean() - x[:, :, 16:].mean())


def test_no_component_means_no_augmentation_and_the_fixed_tensors():
    assert not Augmentation().active and train_transform(CONFIG, Augmentation()) is None
    assert not Augmentation.from_params(trial_params()).active
    for aug in (Augmentation(crop_scale=0.5), Augmentation(hflip=0.5), Augmentation(translate=0.1),
                Augmentation(policy="randaugment"), Augmentation(policy="trivialaugment")):
        assert aug.active


def ramp() -> Image.Image:
    """Dark on the left, bright on the right: any crop or shift keeps that order, a flip reverses it."""
    row = np.linspace(0, 255, 32).astype(np.uint8)
    return Image.fromarray(np.repeat(np.repeat(row[None, :, None], 32, 0), 3, 2))


def flip_steps(transform) -> list:
    """The names of every step (and every RandAugment op) of a composed transform that flips."""
    names = []
    for step in transform.transforms:
        names += [type(step).__name__] + [op.name for op in getattr(step, "ops", ())]
    return [n for n in names if "flip" in n.lower() or "mirror" in n.lower()]


@pytest.mark.parametrize("aug", [Augmentation(translate=0.1), Augmentation(crop_scale=0.3),
                                 Augmentation(crop_scale=0.08, translate=0.25)])
def test_geometric_jitter_without_hflip_never_flips(aug):
    assert all(left_minus_right(x) < 0 for x in draws(aug, image=ramp()))


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_a_policy_without_hflip_has_no_flip_in_it(policy):
    # RandAugment's own ops (invert, solarize, ...) change intensities, so check what it can do: no flip.
    assert flip_steps(train_transform(CONFIG, Augmentation(policy=policy, crop_scale=0.5, translate=0.1))) == []
    assert flip_steps(train_transform(CONFIG, Augmentation(policy=policy, hflip=0.5))) == ["RandomHorizontalFlip"]


def test_hflip_flips_at_its_probability():
    signs = [left_minus_right(x) > 0 for x in draws(Augmentation(hflip=0.5), n=400)]
    assert 0.35 < 1 - sum(signs) / len(signs) < 0.65
    assert all(left_minus_right(x) < 0 for x in draws(Augmentation(hflip=1.0), n=20))


def test_translate_shifts_by_at_most_its_fraction_of_the_side():
    rng = np.random.RandomState(0)
    image = Image.fromarray(rng.randint(0, 255, (32, 32, 3)).astype(np.uint8))
    reference = eval_transform(CONFIG)(image)
    shifts = set()
    for x in draws(Augmentation(translate=0.1), n=60, image=image):  # round(0.1 * 32) = 3 px
        found = [(dy, dx) for dy in range(-3, 4) for dx in range(-3, 4)
                 if torch.allclose(x[:, 3 + dy:29 + dy, 3 + dx:29 + dx], reference[:, 3:29, 3:29])]
        assert found, "every draw is the image shifted by at most 3 px"
        shifts.add(found[0])
    assert len(shifts) > 10  # and the shifts vary


def test_crop_scale_crops_and_resizes_while_no_crop_keeps_the_evaluation_view():
    rng = np.random.RandomState(1)
    image = Image.fromarray(rng.randint(0, 255, (40, 40, 3)).astype(np.uint8))
    reference = eval_transform(CONFIG)(image)
    cropped = draws(Augmentation(crop_scale=0.2), n=20, image=image)
    assert all(x.shape == reference.shape for x in cropped)
    assert sum(not torch.allclose(x, reference) for x in cropped) >= 19
    flipped_only = draws(Augmentation(hflip=1.0), n=3, image=image)
    assert all(torch.allclose(x, torch.flip(reference, dims=[2])) for x in flipped_only)


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_policies_never_ask_for_an_impossible_operation_and_magnitude_matters(policy):
    """timm's magnitudes reach 10 by default, where Posterize keeps 0 bits and Pillow raises."""
    image = Image.new("RGB", (32, 32), (120, 60, 200))
    strong = draws(Augmentation(policy=policy, magnitude=9), n=1500, image=image)
    weak = draws(Augmentation(policy=policy, magnitude=1), n=300, image=image)
    base = eval_transform(CONFIG)(image)
    change = lambda xs: float(torch.stack([(x - base).abs().mean() for x in xs]).mean())  # noqa: E731
    assert change(strong) > change(weak)


def test_components_come_from_the_trial_params_and_draw_new_images_every_epoch(plugins, image_folder):
    params = trial_params(crop_scale=0.5, hflip=0.0, translate=0.1, augmentation="trivialaugment", aug_magnitude=5)
    aug = Augmentation.from_params(params)
    assert aug == Augmentation(crop_scale=0.5, hflip=0.0, translate=0.1, policy="trivialaugment", magnitude=5)
    dataset = load_dataset(str(image_folder))
    model = build(plugins, "timm/test_vit")
    cache = TensorCache()
    plain = cache.get(dataset.train, model.data_config)
    assert cache.train(dataset.train, model.data_config, Augmentation()) is plain
    augmented = cache.train(dataset.train, model.data_config, aug)
    assert isinstance(augmented, StreamSet) and augmented.augmented and len(augmented) == len(plain)
    torch.manual_seed(0)
    a, b = one_epoch(augmented), one_epoch(augmented)
    assert a.shape == plain.x.shape and not torch.equal(a, b) and not torch.equal(a, plain.x)


def test_a_space_with_the_retired_light_level_says_what_replaces_it(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("params:\n  augmentation: {choices: [none, light]}\n")
    with pytest.raises(SpaceError, match="crop_scale: 0.6 and hflip: 0.5"):
        load_space_file(str(path))


def test_aug_magnitude_applies_only_under_a_policy(tmp_path):
    import optuna

    from autotl import get_plugin_manager
    from autotl.space import resolve_space

    path = tmp_path / "space.yaml"
    path.write_text("backbones: ['timm/test_resnet']\nparams:\n  augmentation: {choices: [none, randaugment]}\n"
                    "  aug_magnitude: {low: 1, high: 9, when: {augmentation: randaugment}}\n"
                    "  hflip: {choices: [0.0, 0.5]}\n  translate: {choices: [0.0, 0.1]}\n")
    space = resolve_space(load_space_file(str(path)), get_plugin_manager())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        params = space.suggest(study.ask())
        assert (params.aug_magnitude is None) == (params.augmentation == "none")
        seen.add((params.augmentation, params.hflip, params.translate))
    assert len(seen) == 8
