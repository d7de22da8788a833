"""The first-party target adapters (mlp, lora, bitfit, cosine): what trains, export, and search."""
from __future__ import annotations

import json
import re

import pytest
import torch

import autotl
from autotl import get_plugin_manager
from autotl.data import load_dataset
from autotl.export import load_model, merged_for_export, save_model
from autotl.freeze import set_trainable, trainable_groups
from autotl.model import build_model
from autotl.trainer import fit
from conftest import FIXTURE_PLUGINS
from helpers import tensors, trial_params

LORA = {"rank": 4, "alpha": 8, "dropout": 0.1, "targets": "attn_mlp"}
X = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def build(plugins, backbone, adapter, params=None, outputs=3):
    return build_model(plugins.sources.get(backbone), plugins.adapters.get(adapter), outputs, params or {})


def train_all(model):
    """Let every layer group train (freeze depth 0); return the names that then train."""
    set_trainable(model, trainable_groups(len(model.groups), freeze_depth=0.0))
    return {n for n, p in model.module.named_parameters() if p.requires_grad}


def lora_layers(module):
    """The names (relative to the wrapped network) of the layers peft put LoRA on."""
    return {re.sub(r"^base_model\.model\.", "", n) for n, m in module.named_modules() if hasattr(m, "lora_A")}


def logits(module, x=X):
    module.eval()
    with torch.no_grad():
        return module(x)


def test_builtin_adapters_register_through_the_public_hook(plugins):
    assert {"linear", "mlp", "lora", "bitfit", "cosine"} <= set(plugins.adapters.names())
    hooks = {row["name"]: row["hooks"] for row in plugins.describe()}
    for name in ("autotl_heads", "autotl_peft", "autotl_cosine"):
        assert hooks[name] == ["autotl_register_target_adapters"]
    lora = plugins.adapters.get("lora")
    assert lora.requires == ("peft",) and lora.exports_as == autotl.PLAIN_HEAD and lora.merge is not None
    assert set(lora.space) == {"rank", "alpha", "dropout", "targets"}
    assert plugins.adapters.get("mlp").space == {"hidden": {"choices": [256, 512]}, "dropout": {"low": 0.0, "high": 0.5}}


def test_plugins_load_without_importing_peft():
    import subprocess
    import sys

    code = "import sys, autotl; autotl.get_plugin_manager(); print('peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("backbone", ["timm/test_vit", "timm/test_resnet"])
def test_mlp_head_is_exactly_the_new_layers(plugins, backbone):
    model = build(plugins, backbone, "mlp", {"hidden": 256, "dropout": 0.2})
    width = model.module.backbone.feature_width
    assert model.head == {"head.0.weight", "head.0.bias", "head.3.weight", "head.3.bias"}
    assert model.module.head[0].weight.shape == (256, width) and model.module.head[2].p == 0.2
    assert logits(model.module).shape == (4, 3)
    assert not any(n.startswith(("backbone.fc", "backbone.head.")) for n in model.module.state_dict())
    assert train_all(model) == {n for n, _ in model.module.named_parameters()}
    set_trainable(model, ())  # a probe: only the head
    assert {n for n, p in model.module.named_parameters() if p.requires_grad} == model.head


def test_cosine_head_is_a_scaled_cosine(plugins):
    model = build(plugins, "timm/test_vit", "cosine", {"init_scale": 10.0})
    assert model.head == {"head.weight", "head.scale"}
    assert model.module.head.scale.item() == 10.0
    out = logits(model.module)
    features = model.module.backbone(X)
    expected = 10.0 * torch.nn.functional.cosine_similarity(features[:, None], model.module.head.weight[None], dim=-1)
    assert torch.allclose(out, expected, atol=1e-5) and out.abs().max() <= 10.0 + 1e-5
    set_trainable(model, ())
    assert {n for n, p in model.module.named_parameters() if p.requires_grad} == model.head


def test_bitfit_trains_only_biases_and_the_head(plugins):
    model = build(plugins, "timm/test_vit", "bitfit")
    assert model.head == {"head.weight", "head.bias"}
    names = {n for n, _ in model.module.named_parameters()}
    assert train_all(model) == model.head | {n for n in names if n.endswith("bias")}
    assert "blocks.0.attn.qkv.bias" in train_all(model) and "blocks.0.attn.qkv.weight" not in train_all(model)
    # freeze depth still applies: frozen groups keep their biases frozen too
    set_trainable(model, trainable_groups(len(model.groups), freeze_depth=0.5))
    trained = {n for n, p in model.module.named_parameters() if p.requires_grad}
    assert "patch_embed.proj.bias" not in trained and "blocks.5.mlp.fc2.bias" in trained


@pytest.mark.parametrize("targets, expected", [
    ("attn", {f"blocks.{i}.attn.{m}" for i in range(6) for m in ("qkv", "proj")}),
    ("attn_mlp", {f"blocks.{i}.{m}" for i in range(6) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}),
    ("all", {f"blocks.{i}.{m}" for i in range(6) for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")}),
])
def test_lora_targets_on_a_vit_never_touch_the_patch_embedding_or_head(plugins, targets, expected):
    model = build(plugins, "timm/test_vit", "lora", {**LORA, "targets": targets})
    assert lora_layers(model.module) == expected  # not patch_embed.proj, though its name ends in proj
    lora_a = model.module.get_submodule("base_model.model.blocks.0.attn.qkv").lora_A["default"]
    assert lora_a.weight.shape[0] == 4  # rank
    head = {"base_model.model.head.weight", "base_model.model.head.bias"}
    assert model.head == head | {n for n, _ in model.module.named_parameters() if "lora_" in n}
    assert train_all(model) == model.head  # only the LoRA matrices and the head, at any freeze depth


def test_lora_on_a_cnn_falls_back_to_every_conv_of_the_body(plugins):
    model = build(plugins, "timm/test_resnet", "lora", {**LORA, "targets": "attn"})
    layers = lora_layers(model.module)
    fresh = plugins.sources.get("timm/test_resnet").build()
    convs = {n for n, m in fresh.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert layers and all(n.startswith("layer") for n in layers)  # no stem (conv1.*), no fc
    assert layers == {n for n in convs if n.startswith("layer")}
    assert {n for n in train_all(model) if "lora_" not in n} == {"base_model.model.fc.weight", "base_model.model.fc.bias"}


@pytest.mark.parametrize("backbone", ["timm/test_vit", "timm/test_resnet"])
def test_lora_fit_moves_only_lora_and_head_and_merges_to_plain_timm(plugins, image_folder, backbone):
    """Base weights and BatchNorm statistics stay put; merged, the network predicts as before."""
    import timm

    model = build(plugins, backbone, "lora", LORA)
    module = model.module
    before = {n: t.clone() for n, t in module.state_dict().items()}
    train, val = tensors(load_dataset(str(image_folder)), model)
    params = trial_params(backbone=backbone, adapter="lora", adapter_params=LORA, head_lr=1e-2)
    result = fit(model, train, val, params, epochs=2, metric="accuracy", device=torch.device("cpu"))
    after = module.state_dict()
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    lora = {n for n in before if "lora_" in n}
    assert moved <= lora | model.head  # base weights and BatchNorm statistics unchanged
    moved_b, all_b = {n for n in moved if "lora_B" in n}, {n for n in lora if "lora_B" in n}
    if backbone == "timm/test_vit":
        assert moved_b == all_b  # every B (initialised to zero) has learnt something
    else:  # random-init timm ResNets zero the last BatchNorm of each residual branch, so only the
        assert moved_b  # downsample paths get a gradient here; pretrained weights have no such zeros

    module.load_state_dict(result.state_dict)
    unmerged = logits(module, val.x[:8])
    state, target, target_params = merged_for_export(module, result.state_dict, plugins.adapters.get("lora"),
                                                     plugins.adapters, LORA)
    assert target.name == "linear" and target_params == {}
    assert not any("lora_" in k or "base_layer" in k for k in state)
    source = plugins.sources.get(backbone)
    plain = timm.create_model(source.architecture, num_classes=3, **source.model_kwargs)
    plain.load_state_dict(state, strict=True)
    assert torch.allclose(logits(plain, val.x[:8]), unmerged, atol=1e-5)


def test_lora_on_a_network_without_timm_head_api_merges_to_the_linear_model(image_folder):
    plugins = get_plugin_manager([str(FIXTURE_PLUGINS / "custom_net.py")])
    model = build(plugins, "acme/tiny", "lora", {**LORA, "targets": "attn"})
    assert lora_layers(model.module) == {"backbone.block.0"}  # the stem and the new head are left alone
    assert {n for n in train_all(model) if "lora_" not in n} == {"base_model.model.head.weight",
                                                                  "base_model.model.head.bias"}
    with torch.no_grad():
        for n, p in model.module.named_parameters():
            if "lora_B" in n:
                p.normal_()  # as if trained: the merge then has something to fold in
    state = model.module.state_dict()
    unmerged = logits(model.module)
    merged, target, _ = merged_for_export(model.module, state, plugins.adapters.get("lora"), plugins.adapters, LORA)
    linear = build(plugins, "acme/tiny", "linear")
    linear.module.load_state_dict(merged, strict=True)
    assert target.name == "linear" and torch.allclose(logits(linear.module), unmerged, atol=1e-5)


@pytest.mark.parametrize("adapter, params", [("mlp", {"hidden": 512, "dropout": 0.1}), ("cosine", {"init_scale": 10.0})])
def test_head_adapters_export_as_autotl_format_and_reload(plugins, tmp_path, adapter, params):
    source = plugins.sources.get("timm/test_vit")
    model = build(plugins, "timm/test_vit", adapter, params)
    config = save_model(str(tmp_path / "best"), model.module.state_dict(), source=source,
                        adapter=plugins.adapters.get(adapter), adapter_params=params, classes=["a", "b", "c"],
                        data_config=model.data_config)
    assert config["format"] == "autotl" and config["adapter"] == adapter and config["adapter_params"] == params
    module, _ = load_model(str(tmp_path / "best"), plugins)
    assert torch.allclose(logits(module), logits(model.module), atol=1e-6)


@pytest.mark.slow
def test_lora_search_exports_plain_timm_and_predicts(split_folder, tmp_path):
    space = tmp_path / "lora.yaml"
    space.write_text("epochs: 2\nadapters: [lora]\nbackbones: ['timm/test_vit']\npruner: none\n"
                     "params:\n  head_lr: 0.01\n  batch_size: 16\n  warmup_epochs: 0\n")
    result = autotl.search(str(split_folder), space=str(space), trials=2, seed=0, device="cpu",
                           out=str(tmp_path / "run"))
    assert all(r.adapter == "lora" and r.state == "complete" for r in result.trials)
    assert {"lora.rank", "lora.alpha", "lora.dropout", "lora.targets"} <= set(result.best["params"])
    config = json.loads((tmp_path / "run" / "best" / "config.json").read_text())
    assert config["format"] == "timm" and config["adapter"] == "linear" and config["adapter_params"] == {}
    assert config["params"]["adapter"] == "lora"  # the trial's own params still say how it was trained
    rows = autotl.predict(str(tmp_path / "run"), [str(split_folder / "test")], device="cpu")
    accuracy = sum(r["label"] == r["path"].split("/")[-2] for r in rows) / len(rows)
    assert len(rows) == 18 and accuracy == pytest.approx(result.best["test"]["accuracy"])


def test_an_adapter_whose_requirement_is_missing_is_dropped_with_a_warning(split_folder, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("epochs: 1\nadapters: [linear, needs_missing]\nbackbones: ['timm/test_resnet']\n"
                     "pruner: none\nparams:\n  batch_size: 16\n  warmup_epochs: 0\n")
    with pytest.warns(UserWarning, match=r"adapter 'needs_missing' needs no_such_module_xyz.*pip install no_such_module_xyz"):
        result = autotl.search(str(split_folder), space=str(space), trials=2, seed=0, device="cpu",
                               out=str(tmp_path / "run"), plugins=[str(FIXTURE_PLUGINS / "needs_missing.py")])
    assert [r.adapter for r in result.trials] == ["linear", "linear"]
    assert all(r.state == "complete" for r in result.trials)


@pytest.mark.parametrize("backbone_lr", ["multiplier", "layer_decay"])
def test_lora_parameters_get_the_head_rate_under_either_backbone_rule(plugins, backbone_lr):
    from autotl.freeze import optimizer_param_groups

    model = build(plugins, "timm/test_vit", "lora", LORA)
    train_all(model)
    groups = optimizer_param_groups(model, weight_decay=0.01, backbone_lr=backbone_lr, backbone_lr_mult=0.1,
                                    layer_decay=0.5)
    names = {id(p): n for n, p in model.module.named_parameters()}
    in_groups = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(in_groups) == sorted(model.head)  # frozen base weights are not in the optimizer
    assert all(g["lr_scale"] == 1.0 for g in groups)


def test_the_worked_example_in_the_docs_is_the_plugin_source():
    from pathlib import Path

    import autotl_cosine

    root = Path(__file__).resolve().parents[1]
    section = (root / "docs" / "plugins.md").read_text().split("## Worked example: `autotl_cosine`", 1)[1]
    source = {line.split("#", 1)[0].strip() for line in Path(autotl_cosine.__file__).read_text().splitlines()}
    blocks = [b.split("```", 1)[0] for b in section.split("```python")[1:]]
    assert len(blocks) == 4
    for block in blocks:
        for line in block.splitlines():
            code = line.split("#", 1)[0].strip()
            assert not code or code in source, f"docs/plugins.md worked example: {code!r} is not in autotl_cosine"


def test_the_core_takes_the_plain_head_from_whichever_plugin_registers_one(tmp_path, split_folder):
    """With autotl_heads blocked, a plugin's own ``plain_head=True`` adapter serves ranking, pretraining,
    a space without ``adapters`` (and its recipe) and LoRA's export."""
    from autotl.defaults import recipe_params
    from autotl.heads import plain_head_adapter
    from autotl.space import SpaceFile, load_space_file, resolve_space

    (tmp_path / "acme_head.py").write_text(
        "from autotl import TargetAdapter, hookimpl\nfrom autotl_heads import attach_linear\n"
        "@hookimpl\ndef autotl_register_target_adapters(register):\n"
        "    register(TargetAdapter(name='acme/head', attach=attach_linear, exports_plain_timm=True,\n"
        "                           plain_head=True))\n")
    plugins = get_plugin_manager([str(tmp_path / "acme_head.py")], blocked=["autotl_heads"])
    assert "linear" not in plugins.adapters
    for needed_for in ("ranking", "pretraining"):
        assert plain_head_adapter(plugins, needed_for).name == "acme/head"
    (tmp_path / "bare.yaml").write_text("epochs: 1\n")
    bare = load_space_file(str(tmp_path / "bare.yaml"))
    assert isinstance(bare, SpaceFile) and bare.adapters == ()
    space = resolve_space(bare, plugins, ["timm/test_vit"])
    assert space.adapters == ("acme/head",) and space.plain_head == "acme/head"
    assert recipe_params(space, "timm/test_vit")["adapter"] == "acme/head"
    lora_params = {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": "attn"}
    lora = plugins.adapters.get("lora")
    model = build(plugins, "timm/test_vit", "lora", lora_params)
    _, target, kept = merged_for_export(model.module, model.module.state_dict(), lora, plugins, lora_params)
    assert target.name == "acme/head" and kept == {}
    (tmp_path / "empty.yaml").write_text("adapters: []\n")
    with pytest.raises(autotl.SpaceError, match="adapters: the list is empty — list at least one adapter, or leave "
                                                "adapters out for the plain linear head"):
        load_space_file(str(tmp_path / "empty.yaml"))
