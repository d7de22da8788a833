"""Where source weights come from: local files through timm, and the zoo that pretrain fills."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from autotl import get_plugin_manager
from autotl.cli import main


def test_timm_plugin_loads_a_local_weights_file(tmp_path, monkeypatch):
    import timm

    reference = timm.create_model("test_resnet", num_classes=1000)
    monkeypatch.setenv("AUTOTL_TIMM_WEIGHTS", str(tmp_path))
    save_file(reference.state_dict(), str(tmp_path / "test_resnet.safetensors"))
    source = get_plugin_manager().sources.get("timm/test_resnet")
    assert source.metadata["weights"] == str(tmp_path / "test_resnet.safetensors")
    net = source.build()
    assert torch.equal(net.conv1[0].weight, reference.conv1[0].weight)


def test_timm_source_factory_with_weights_and_random_init(tmp_path):
    import timm
    from autotl_timm import timm_source

    reference = timm.create_model("test_vit", img_size=32, num_classes=7)
    path = tmp_path / "vit.safetensors"
    save_file(reference.state_dict(), str(path))
    loaded = timm_source("acme/vit", "test_vit", weights=str(path), model_kwargs={"img_size": 32}).build()
    assert torch.equal(loaded.pos_embed, reference.pos_embed)
    random = timm_source("acme/vit", "test_vit", hub=False, model_kwargs={"img_size": 32}).build()
    assert not torch.equal(random.pos_embed, reference.pos_embed)


def test_hub_models_never_download_when_listed(plugins):
    source = plugins.sources.get("timm/resnet50.a1_in1k")
    assert source.metadata["weights"] == "hub" and source.build_untrained is not None


def test_pretrain_fills_the_zoo_and_the_zoo_registers_it(image_folder, tmp_path, capsys):
    zoo = tmp_path / "zoo"
    out = zoo / "colours-vit.safetensors"
    code = main(["pretrain", str(image_folder), "--backbone", "timm/test_vit", "--epochs", "2", "--out", str(out),
                 "--device", "cpu", "--lr", "0.003"])
    assert code == 0 and "val accuracy" in capsys.readouterr().out
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["architecture"] == "test_vit" and sidecar["model_kwargs"] == {"img_size": 32}
    assert sidecar["num_classes"] == 3 and sidecar["classes"] == ["cat", "dog", "owl"]
    assert sidecar["source_task"] == str(image_folder) and 0.0 <= sidecar["accuracy"] <= 1.0
    assert sidecar["data_config"]["input_size"] == [3, 32, 32]

    plugins = get_plugin_manager(zoo_dir=str(zoo))
    source = plugins.sources.get("zoo/colours-vit")
    assert plugins.sources.owner("zoo/colours-vit") == "autotl_zoo"
    assert source.source_task == str(image_folder)
    net = source.build()
    saved = load_file(str(out))
    assert torch.equal(net.head.weight, saved["head.weight"])  # the source classifier comes along
    assert torch.equal(net.blocks[0].attn.qkv.weight, saved["blocks.0.attn.qkv.weight"])


def test_zoo_skips_broken_sidecars(tmp_path):
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "orphan.json").write_text(json.dumps({"architecture": "test_vit", "num_classes": 2}))
    (tmp_path / "partial.json").write_text(json.dumps({"architecture": "test_vit"}))
    (tmp_path / "partial.safetensors").write_bytes(b"")
    with pytest.warns(UserWarning, match="zoo: skipped"):
        plugins = get_plugin_manager(zoo_dir=str(tmp_path))
    assert not [n for n in plugins.sources.names() if n.startswith("zoo/")]


def test_pretrain_needs_a_timm_architecture(image_folder, tmp_path):
    from autotl import UsageError, pretrain
    from conftest import FIXTURE_PLUGINS

    with pytest.raises(UsageError, match="has no timm architecture"):
        pretrain(str(image_folder), backbone="acme/tiny", out=str(tmp_path / "x.safetensors"), epochs=1,
                 plugins=[str(FIXTURE_PLUGINS / "custom_net.py")])
