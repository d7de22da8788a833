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


def live_cuda_allocations() -> str:
    """Each CUDA allocation still alive, largest first, with the innermost Python frames that made it
    (recorded since ``torch.cuda.memory._record_memory_history`` was turned on): what a leak holds."""
    lines = []
    blocks = [b for seg in torch.cuda.memory._snapshot()["segments"] for b in seg["blocks"]
              if b["state"] == "active_allocated"]
    for block in sorted(blocks, key=lambda b: -b["size"])[:12]:
        frames = [f"{f['filename'].rsplit('/', 1)[-1]}:{f['line']} {f['name']}" for f in block.get("frames", [])
                  if f["filename"].endswith(".py")]
        lines.append(f"{block['size'] / 2**20:.2f} MiB: {' < '.join(frames[:6]) or 'made before recording began, or by a library'}")
    return "\n".join(lines)


def test_search_on_cuda_frees_memory_between_trials(tmp_path, split_folder):
    """Memory held after a search does not grow with its number of trials. The first, one-trial search
    pays the one-off costs that stay for the process (cuBLAS and cuBLASLt workspaces, one per stream,
    tens of MiB on Hopper); every later trial must give back what it took."""
    import autotl

    def search(name, trials):
        return autotl.search(str(split_folder), space="quick", backbones="timm/test_vit,timm/test_resnet",
                             trials=trials, epochs=2, device="cuda", out=str(tmp_path / name), report=False,
                             quiet=True)

    torch.cuda.memory._record_memory_history(stacks="python", max_entries=200_000)
    try:
        search("warm-up", 1)
        before = torch.cuda.memory_allocated()
        result = search("run", 4)
        after = torch.cuda.memory_allocated()
        held = live_cuda_allocations()
    finally:
        torch.cuda.memory._record_memory_history(enabled=None)
    print(f"CUDA memory held: {before / 2**20:.2f} MiB after one trial, {after / 2**20:.2f} MiB after four more\n{held}")
    assert result.summary["device"].startswith("cuda") and result.best is not None
    assert after - before < 2**20, held


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
