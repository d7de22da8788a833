"""The CUDA path, run by benchmarks/gpu_check.sh on a machine with a GPU; skipped without one."""
from __future__ import annotations

import pytest
import torch

from autotl.data import load_dataset
from autotl.features import FeatureCache
from autotl.trainer import fit
from helpers import build, tensors, trial_params

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")


@pytest.fixture
def small(plugins, image_folder):
    data = load_dataset(str(image_folder))
    model = build(plugins, "timm/test_vit")
    return plugins, data, model, *tensors(data, model)


def test_fit_on_cuda_in_bf16_with_channels_last_returns_cpu_weights(small):
    _, _, model, train, val = small
    result = fit(model, train, val, trial_params(backbone="timm/test_vit", head_lr=5e-3), epochs=3,
                 metric="accuracy", device=CUDA)
    assert result.epochs_run == 3 and all(0 <= v <= 1 for v in result.curve)
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    assert torch.backends.cudnn.benchmark


def test_cached_probe_on_cuda_matches_uncached(small):
    plugins, data, _, _, _ = small
    curves = []
    for cache in (None, FeatureCache()):
        torch.manual_seed(0)
        model = build(plugins, "timm/test_resnet")
        train, val = tensors(data, model)
        curves.append(fit(model, train, val, trial_params(freeze_depth=1.0, head_lr=5e-3), epochs=3,
                          metric="accuracy", device=CUDA, seed=1, feature_cache=cache).curve)
    assert curves[0] == pytest.approx(curves[1], abs=0.05)  # bf16 autocast rounds both paths a little differently


def test_search_on_cuda_frees_memory_between_trials(tmp_path, split_folder):
    import autotl

    result = autotl.search(str(split_folder), space="quick", backbones="timm/test_vit,timm/test_resnet", trials=3,
                           epochs=2, device="cuda", out=str(tmp_path / "run"), report=False)
    assert result.summary["device"].startswith("cuda") and result.best is not None
    assert torch.cuda.memory_allocated() < 64 * 2**20
