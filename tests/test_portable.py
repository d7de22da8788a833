"""A portable run folder: a plugin's timm network exports as plain timm and predicts without the plugin;
a model that truly needs its plugin names it, and the flag that loads it, and never imports it by itself;
``autotl adapters`` lists the adapters."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import autotl
from autotl import ModelError, get_plugin_manager
from autotl.cli import main
from conftest import FIXTURE_PLUGINS

#: A third party's timm networks, registered without ``architecture`` (the case that used to need the plugin).
BENCH = """
    import timm
    from autotl import SourceModel, hookimpl

    open({marker!r}, "a").write("imported\\n")  # proves whether this file ran

    @hookimpl
    def autotl_register_source_models(register):
        register(SourceModel(name="bench/test_resnet", data_config={{"input_size": (3, 32, 32)}},
                             build=lambda: timm.create_model("test_resnet", pretrained=False, num_classes=0)))
        register(SourceModel(name="bench/test_vit_32", data_config={{"input_size": (3, 32, 32)}},
                             build=lambda: timm.create_model("test_vit", pretrained=False, img_size=32)))
        register(SourceModel(name="bench/test_resnet_gelu", data_config={{"input_size": (3, 32, 32)}},
                             build=lambda: timm.create_model("test_resnet", pretrained=False, act_layer="gelu")))
"""

#: A network timm did not build: its model needs this plugin to be rebuilt.
ACME = """
    import torch
    from torch import nn
    from autotl import SourceModel, hookimpl

    open({marker!r}, "a").write("imported\\n")  # proves whether this file ran

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(8, 10)

        def forward(self, x):
            return self.classifier(torch.flatten(self.pool(self.stem(x)), 1))

    @hookimpl
    def autotl_register_source_models(register):
        register(SourceModel(name="acme/tiny", build=TinyNet, head="classifier",
                             data_config={{"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}}))
"""

SEARCH = dict(space="quick", trials=2, epochs=1, device="cpu", report=False, quiet=True, rank=False, soup=0,
              warm_start="off", default_trials=0)


def write_plugin(folder: Path, name: str, body: str) -> Path:
    """A plugin file that appends to ``<name>.imported`` each time it is imported."""
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(body.format(marker=str(folder / f"{name}.imported"))))
    return path


def test_a_plugin_timm_network_without_architecture_exports_plain_timm_and_predicts_without_the_plugin(
        split_folder, tmp_path, capsys):
    plugin = write_plugin(tmp_path, "bench", BENCH)
    run = tmp_path / "run"
    autotl.search(str(split_folder), backbones="bench/test_resnet", out=str(run), plugins=[str(plugin)], **SEARCH)
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["format"] == "timm" and config["architecture"] == "test_resnet"
    assert config["source_model"] == "bench/test_resnet" and "plugins" not in config
    marker = tmp_path / "bench.imported"
    marker.unlink()
    capsys.readouterr()
    assert main(["predict", str(run), str(split_folder / "test"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count(".png") == 18 and not marker.exists()  # predicted without the plugin, which never ran
    code = f"""
import json, timm, safetensors.torch
cfg = json.load(open({str(run / 'best' / 'config.json')!r}))
model = timm.create_model(cfg["architecture"], num_classes=cfg["num_classes"], **cfg["model_kwargs"])
model.load_state_dict(safetensors.torch.load_file({str(run / 'best' / 'model.safetensors')!r}))
print("loaded")
"""
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() \
        == "loaded"


@pytest.mark.parametrize("backbone, architecture, fmt", [
    ("bench/test_resnet", "test_resnet", "timm"),
    ("bench/test_vit_32", "test_vit", "autotl"),    # img_size=32 changes pos_embed's shape: not plain test_vit
    ("bench/test_resnet_gelu", None, "autotl"),     # act_layer changes the layers, not the weights: not plain
])
def test_a_timm_network_is_detected_only_when_plain_timm_rebuilds_it(tmp_path, backbone, architecture, fmt):
    from autotl.export import save_model
    from autotl.model import build_model

    plugins = get_plugin_manager([str(write_plugin(tmp_path, "bench", BENCH))])
    source, adapter = plugins.sources.get(backbone), plugins.adapters.get("linear")
    model = build_model(source, adapter, 3, {})
    assert model.architecture == architecture
    config = save_model(str(tmp_path / "best"), model.module.state_dict(), source=source, adapter=adapter,
                        adapter_params={}, classes=["a", "b", "c"], data_config=model.data_config,
                        architecture=model.architecture, plugins=plugins)
    assert config["format"] == fmt
    if fmt == "autotl":  # it still loads, through its plugin
        module, _ = autotl.export.load_model(str(tmp_path / "best"), plugins)
        assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in model.module.parameters())


def test_a_model_that_needs_its_plugin_names_it_and_the_flag_and_never_imports_the_stored_path(
        split_folder, tmp_path, capsys):
    plugin = write_plugin(tmp_path, "acme", ACME)
    run = tmp_path / "run"
    autotl.search(str(split_folder), backbones="acme/tiny", out=str(run), plugins=[str(plugin)], **SEARCH)
    config = json.loads((run / "best" / "config.json").read_text())
    value = str(plugin.resolve())
    assert config["format"] == "autotl"
    assert config["plugins"] == {"source_model": {"plugin": "acme", "from": "--plugin", "value": value},
                                 "adapter": {"plugin": "autotl_heads", "from": "built-in"}}
    assert config["load"].endswith(f"--plugin {value}")
    marker = tmp_path / "acme.imported"
    marker.unlink()
    capsys.readouterr()
    assert main(["predict", str(run), str(split_folder / "test"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err == (f"error: model in {run / 'best'} needs source model 'acme/tiny' from plugin 'acme' "
                   f"(loaded with --plugin {value}) — rerun with --plugin {value}\n")
    with pytest.raises(ModelError, match="from plugin 'acme'"):
        autotl.export.load_model(str(run))
    assert not marker.exists()  # the path in config.json was named, never imported
    assert main(["predict", str(run), str(split_folder / "test"), "--device", "cpu", "--plugin", value]) == 0
    assert marker.exists()  # the marker works: passing the plugin does import it


def test_the_missing_plugin_message_fits_how_it_was_loaded(tmp_path):
    from autotl.export import load_model, save_model
    from autotl.model import build_model

    folder = tmp_path / "plugins"
    folder.mkdir()
    folder.chmod(0o755)
    write_plugin(folder, "acme", ACME)
    plugins = get_plugin_manager(plugins_dir=str(folder))
    assert plugins.origins["acme"] == {"from": "--plugins-dir", "value": str(folder.resolve())}
    assert plugins.origins["autotl_heads"] == {"from": "built-in"}
    source, adapter = plugins.sources.get("acme/tiny"), plugins.adapters.get("mlp")
    model = build_model(source, adapter, 2, {"hidden": 256, "dropout": 0.0})
    best = tmp_path / "best"
    save_model(str(best), model.module.state_dict(), source=source, adapter=adapter,
               adapter_params={"hidden": 256, "dropout": 0.0}, classes=["a", "b"], data_config=model.data_config,
               plugins=plugins)
    with pytest.raises(ModelError) as info:
        load_model(str(best), get_plugin_manager())
    assert str(info.value).endswith(f"(loaded with --plugins-dir {folder.resolve()}) — rerun with --plugins-dir "
                                    f"{folder.resolve()}")
    with pytest.raises(ModelError, match="from the built-in plugin 'autotl_heads'.* — do not pass --block-plugin "
                                         "autotl_heads"):
        load_model(str(best), get_plugin_manager([str(folder / "acme.py")], blocked=["autotl_heads"]))
    config = json.loads((best / "config.json").read_text())
    config["plugins"]["source_model"] = {"plugin": "acme", "from": "entry point", "value": "acme_pkg.plugin",
                                         "package": "acme-pkg"}
    (best / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="an installed entry point \\(package 'acme-pkg'\\).* — install it"):
        load_model(str(best), get_plugin_manager())
    del config["plugins"]  # written by an older autotl
    (best / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as info:
        load_model(str(best), get_plugin_manager())
    assert "source model 'acme/tiny', which no loaded plugin registers — rerun with --plugin" in str(info.value)
    assert "\n" not in str(info.value)


def test_adapters_command_lists_each_adapter_with_its_plugin_knobs_and_what_trains(capsys):
    assert main(["adapters", "--plugin", str(FIXTURE_PLUGINS / "custom_net.py")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "plugin", "knobs", "trains", "export"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert {"linear", "mlp", "lora", "bitfit", "cosine", "dropout_linear"} <= set(rows)
    assert "autotl_heads" in rows["linear"] and "linear head + unfrozen backbone" in rows["linear"]
    assert "hidden {256, 512}; dropout [0.0, 0.5]" in rows["mlp"]
    assert "autotl_peft" in rows["lora"] and "rank {4, 8, 16}" in rows["lora"]
    assert "LoRA matrices + linear head" in rows["lora"] and "merged, plain timm" in rows["lora"]
    assert "backbone biases + linear head" in rows["bitfit"]
    assert "autotl_cosine" in rows["cosine"] and "init_scale = 10.0" in rows["cosine"]
    assert "custom_net" in rows["dropout_linear"] and " ? " in rows["dropout_linear"]  # it does not say what trains

    from autotl.api import list_adapters, load_plugins

    by_name = {r["name"]: r for r in list_adapters(load_plugins())}
    assert by_name["lora"]["params"]["rank"] == {"choices": [4, 8, 16]} and by_name["lora"]["requires"] == ["peft"]
    assert by_name["linear"]["knobs"] == "none" and by_name["mlp"]["export"] == "autotl"
