"""Cache: a linear-probe trial and a half-frozen trial, with and without the frozen-feature cache.

Each row trains one trial with ``autotl.trainer.fit`` side by side in one process: uncached (the
frozen layers run every epoch), cached on a cold cache (the trial computes its features once), and
cached on a warm cache (a later trial of the same source, depth and data: no forward pass through
the frozen layers at all). Each configuration is repeated and the median wall time is reported with
its ratio to the uncached run, and the validation curves are checked to agree. Goal: a cached linear
probe takes <= 0.2 of the uncached time.

Commands:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/feature_cache.py --threads 1 --append
    .venv/bin/python benchmarks/feature_cache.py --device cuda --models resnet50,vit_base_patch16_224 \\
        --size 224 --append                                              # on a GPU machine

Networks are created with ``pretrained=False`` (random weights; nothing downloads): the time a
forward pass costs does not depend on the weights.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import List

import _common

HEADING = "Feature cache (`benchmarks/feature_cache.py`)"


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet18,vit_tiny_patch16_224",
                   help="timm architectures (default resnet18,vit_tiny_patch16_224)")
    p.add_argument("--size", type=int, default=64, help="input size in pixels (default 64)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=int, default=256, help="training images (default 256)")
    p.add_argument("--val-images", type=int, default=64)
    p.add_argument("--epochs", type=int, default=8, help="epochs per trial (default 8)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--depths", default="1.0,0.5", help="freeze depths to time (default 1.0,0.5)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    return p.parse_args(argv)


def main(argv: List[str] | None = None) -> None:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    import timm
    import torch

    from autotl import TargetAdapter
    from autotl.features import FeatureCache
    from autotl.model import build_model
    from autotl.space import TrialParams
    from autotl.tensors import TensorSet
    from autotl.trainer import fit, resolve_device
    from autotl.types import SourceModel
    from autotl_heads import attach_linear

    device = resolve_device(args.device)
    adapter = TargetAdapter(name="linear", attach=attach_linear, exports_plain_timm=True)
    gen = torch.Generator().manual_seed(0)
    train = TensorSet(torch.randn(args.images, 3, args.size, args.size, generator=gen),
                      torch.randint(0, 10, (args.images,), generator=gen))
    val = TensorSet(torch.randn(args.val_images, 3, args.size, args.size, generator=gen),
                    torch.randint(0, 10, (args.val_images,), generator=gen))
    rows = []
    for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
        kwargs = {"img_size": args.size} if "vit" in arch or "deit" in arch else {}
        torch.manual_seed(0)
        weights = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs).state_dict()

        def build():
            net = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
            net.load_state_dict(weights)
            source = SourceModel(name=arch, build=lambda: net, data_config={"input_size": (3, args.size, args.size)})
            return build_model(source, adapter, 10, {})

        for depth in [float(d) for d in args.depths.split(",")]:
            params = TrialParams(backbone=arch, adapter="linear", freeze_depth=depth, head_lr=1e-3,
                                 backbone_lr="multiplier", backbone_lr_mult=0.1, layer_decay=None, weight_decay=0.05,
                                 batch_size=32, warmup_epochs=0, label_smoothing=0.0)
            times = {"uncached": [], "cold": [], "warm": []}
            curves = {}
            used, warm = "", None  # the cold run's cache, which the warm run reuses
            for _ in range(args.repeats):
                for mode in ("uncached", "cold", "warm"):
                    cache = None if mode == "uncached" else (FeatureCache(4096) if mode == "cold" else warm)
                    model = build()
                    start = time.perf_counter()
                    result = fit(model, train, val, params, epochs=args.epochs, metric="accuracy", device=device,
                                 seed=0, feature_cache=cache)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times[mode].append(time.perf_counter() - start)
                    curves[mode] = result.curve
                    if mode == "cold":
                        warm, used = cache, ",".join(result.feature_cache)
            base = statistics.median(times["uncached"])
            same = all(abs(a - b) < 1e-6 for a, b in zip(curves["uncached"], curves["warm"]))
            rows.append([arch, f"{depth:g}", used, f"{base:.2f}", f"{statistics.median(times['cold']):.2f}",
                         f"{statistics.median(times['warm']):.2f}", f"{statistics.median(times['cold']) / base:.3f}",
                         f"{statistics.median(times['warm']) / base:.3f}", "yes" if same else "NO"])
            print(rows[-1], flush=True)
    table = _common.md_table(["model", "freeze depth", "cut", "uncached s", "cached cold s", "cached warm s",
                              "cold / uncached", "warm / uncached", "same curve"], rows)
    print(table)
    if args.append:
        notes = [f"{args.images} train + {args.val_images} val images at {args.size} px, batch 32, {args.epochs} "
                 f"epochs, median of {args.repeats}. Cold: the trial computes its features; warm: a later trial "
                 "finds them cached. Goal: linear probe <= 0.2 of uncached."]
        _common.append_results(HEADING, _common.result_block("cached vs uncached trials", args.device, [table], notes))


if __name__ == "__main__":
    main()
