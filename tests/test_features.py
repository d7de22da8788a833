"""The frozen-feature cache: exact features, keys that never go stale, a memory bound, a shared
spill folder, and trials that learn the same with and without it."""
from __future__ import annotations

import pytest
import torch

from autotl.data import load_dataset
from autotl.features import FeatureCache, plan_split, verify_split
from autotl.freeze import set_trainable, trainable_groups
from autotl.tensors import to_tensors
from autotl.trainer import _autocast, fit
from helpers import build, tensors, trial_params

CPU = torch.device("cpu")


def split_for(model, depth):
    groups = trainable_groups(len(model.groups), freeze_depth=depth)
    set_trainable(model, groups)
    return plan_split(model, groups)


@pytest.fixture
def data(image_folder):
    return load_dataset(str(image_folder))


@pytest.mark.parametrize("backbone, depth, kind", [
    ("timm/test_resnet", 1.0, "probe"), ("timm/test_resnet", 0.6, "partial"), ("timm/test_vit", 0.5, "partial"),
    ("timm/test_vit", 1.0, "probe"), ("timm/test_convnext", 0.5, "partial"), ("timm/test_efficientnet", 0.5, "partial"),
])
def test_cached_features_are_bit_identical_to_a_fresh_forward_pass(plugins, data, backbone, depth, kind):
    model = build(plugins, backbone)
    split = split_for(model, depth)
    assert split is not None and split.kind == kind
    assert verify_split(model, split, model.data_config["input_size"]) is not None
    train, _ = tensors(data, model)
    cache = FeatureCache(max_mb=64)
    feats = cache.features(model, split, train, CPU, _autocast(CPU)[0])
    model.module.eval()
    with torch.no_grad():
        fresh = split.prefix(train.x)
    assert torch.equal(feats, fresh)
    again = cache.features(model, split, train, CPU, _autocast(CPU)[0])
    assert again is feats and cache.stats["hits"] == 1 and cache.stats["misses"] == 1


def test_unfrozen_networks_and_lora_are_not_split(plugins):
    model = build(plugins, "timm/test_resnet")
    assert split_for(model, 0.0) is None  # nothing frozen
    lora = build(plugins, "timm/test_vit", "lora", adapter_params={"rank": 4, "alpha": 8, "targets": "attn"})
    assert split_for(lora, 1.0) is None  # LoRA matrices train inside the frozen layers


def test_changed_weights_depth_or_transform_miss_the_cache(plugins, data):
    cache = FeatureCache(max_mb=64)
    torch.manual_seed(0)
    model = build(plugins, "timm/test_resnet")
    train, _ = tensors(data, model)
    autocast = _autocast(CPU)[0]
    split = split_for(model, 1.0)
    cache.features(model, split, train, CPU, autocast)
    torch.manual_seed(0)
    other = build(plugins, "timm/test_resnet")  # the same weights, built again: a hit
    cache.features(other, split_for(other, 1.0), train, CPU, autocast)
    assert cache.stats == {**cache.stats, "hits": 1, "misses": 1}
    cache.features(model, split_for(model, 0.6), train, CPU, autocast)  # another depth
    assert cache.stats["misses"] == 2
    with torch.no_grad():
        next(p for n, p in model.module.named_parameters() if n.startswith("conv1")).add_(1e-3)  # other weights
    cache.features(model, split_for(model, 1.0), train, CPU, autocast)
    assert cache.stats["misses"] == 3
    first = next(p for n, p in model.module.named_parameters() if n.startswith("conv1"))
    first.data = first.data + 1e-3  # new storage, the tensor's version counter unchanged: still a miss
    cache.features(model, split_for(model, 1.0), train, CPU, autocast)
    assert cache.stats["misses"] == 4
    shifted = to_tensors(data.train.items, data.train.labels, {**model.data_config, "mean": [0.4, 0.4, 0.4]})
    cache.features(model, split_for(model, 1.0), shifted, CPU, autocast)  # another transform
    assert cache.stats["misses"] == 5 and cache.stats["hits"] == 1


def test_the_memory_bound_holds_and_evictions_spill_to_a_shared_folder(tmp_path):
    cache = FeatureCache(max_mb=1, spill_dir=tmp_path / "spill")
    blocks = {f"k{i}": torch.full((100_000,), float(i)) for i in range(6)}  # 0.4 MB each
    for key, t in blocks.items():
        assert cache.put(key, t)
        assert cache.bytes <= 2**20
    assert cache.stats["spilled"] == 4 and len(list((tmp_path / "spill").glob("*.safetensors"))) == 4
    assert not cache.put("huge", torch.zeros(300_000))  # alone bigger than the bound: not kept
    worker = FeatureCache(max_mb=1, spill_dir=tmp_path / "spill")  # another process, the same folder
    assert torch.equal(worker.get("k0"), blocks["k0"]) and worker.stats["disk_hits"] == 1
    assert worker.get("never") is None
    assert not list((tmp_path / "spill").glob(".*tmp"))  # no half-written files left behind


def test_the_spill_folder_is_bounded_too(tmp_path):
    cache = FeatureCache(max_mb=0.5, spill_dir=tmp_path, spill_max_mb=1)
    for i in range(10):
        cache.put(f"k{i}", torch.zeros(100_000))  # 0.4 MB each
    assert sum(p.stat().st_size for p in tmp_path.glob("*.safetensors")) <= 2**20


@pytest.mark.parametrize("backbone, depth", [("timm/test_vit", 1.0), ("timm/test_vit", 0.5),
                                             ("timm/test_resnet", 0.6)])
def test_a_cached_trial_learns_exactly_like_an_uncached_one(plugins, data, backbone, depth):
    curves, caches = [], []
    for cache in (None, FeatureCache(max_mb=64)):
        torch.manual_seed(0)
        model = build(plugins, backbone)
        train, val = tensors(data, model)
        result = fit(model, train, val, trial_params(backbone=backbone, freeze_depth=depth, head_lr=5e-3),
                     epochs=3, metric="accuracy", device=CPU, seed=3, feature_cache=cache)
        curves.append(result.curve)
        caches.append(result.feature_cache)
    assert caches[0] == ["off"] and caches[1][0] in ("probe", "partial@" + caches[1][0].split("@")[-1])
    assert caches[1][0] != "off" and curves[0] == pytest.approx(curves[1], abs=1e-6)


def test_lp_ft_caches_each_phase_and_uncacheable_trials_say_why(plugins, data):
    model = build(plugins, "timm/test_resnet")
    train, val = tensors(data, model)
    result = fit(model, train, val, trial_params(strategy="lp_ft", lp_fraction=0.5, freeze_depth=0.6), epochs=2,
                 metric="accuracy", device=CPU, feature_cache=FeatureCache())
    assert result.feature_cache == ["probe", "partial@3"]
    result = fit(build(plugins, "timm/test_resnet"), train, val, trial_params(freeze_depth=1.0, drop_path=0.1),
                 epochs=1, metric="accuracy", device=CPU, feature_cache=FeatureCache())
    assert result.feature_cache == ["drop_path"]


def test_search_uses_the_cache_by_default_and_the_flag_turns_it_off(split_folder, tmp_path):
    import optuna

    import autotl
    import autotl.storage

    space = tmp_path / "space.yaml"
    space.write_text("epochs: 2\npruner: none\nparams:\n  freeze_depth: 1.0\n")
    for flag, expected in ((True, ["probe"]), (False, ["off"])):
        result = autotl.search(str(split_folder), space=str(space), backbones="timm/test_vit", trials=2,
                               device="cpu", out=str(tmp_path / f"run{flag}"), feature_cache=flag, report=False,
                               default_trials=0)
        study = optuna.load_study(study_name=result.study, storage=autotl.storage.make_storage(None, tmp_path / f"run{flag}"))
        assert [t.user_attrs["feature_cache"] for t in study.trials] == [expected, expected]
