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


def test_a_fit_paused_and_resumed_on_cuda_goes_on_where_it_stopped(plugins, image_folder, tmp_path):
    """The checkpoint holds CPU tensors; resuming on CUDA must put the weights, the optimizer's moments
    and the RNG back on the device. bf16 kernels are not bit-deterministic, so the curves agree within
    rounding rather than bit for bit (the CPU test checks that)."""
    from autotl.tensors import TensorCache
    from helpers import fit_paused

    params = trial_params(backbone="timm/test_vit", head_lr=5e-3, strategy="lp_ft", lp_fraction=0.5)
    straight, resumed = fit_paused(plugins, load_dataset(str(image_folder)), params, 4, 2, tmp_path,
                                   TensorCache(), device="cuda")
    assert resumed.epochs_run == straight.epochs_run == 4 and resumed.lp_epochs == straight.lp_epochs
    assert resumed.curve == pytest.approx(straight.curve, abs=0.1)
    assert resumed.train_loss == pytest.approx(straight.train_loss, rel=0.05)
    assert all(t.device.type == "cpu" for t in resumed.state_dict.values())


def test_promotion_search_on_cuda_pauses_and_continues_trials(tmp_path, split_folder):
    from test_promotion import promotion_search

    result = promotion_search(split_folder, tmp_path, trials=9, device="cuda")
    assert result.summary["device"].startswith("cuda")
    assert any(r.lineage and len(r.lineage) > 1 for r in result.trials)  # a paused trial went on
    assert any(r.state == "complete" and r.epochs_run == 9 for r in result.trials)
    assert torch.cuda.memory_allocated() < 64 * 2**20
