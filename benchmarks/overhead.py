"""Overhead: autotl's training epoch against a plain, hand-written PyTorch loop.

Both sides train the same network (one timm backbone with autotl's ``linear`` head, deep-copied
from one initialisation) on the same random tensors, with the same batch size, batch order, torch
threads and precision, side by side in one process. The autotl side is the real
``autotl.trainer.fit`` on an ``AdaptedModel`` from ``autotl.model.build_model`` with a
``TrialParams`` at ``freeze_depth=0`` and no augmentation (so no feature cache is involved). The
plain side is a minimal AdamW + cross-entropy loop that, like ``fit``, scores the validation
tensors after every epoch. The two are interleaved (the order alternates) and repeated; the table
gives the median milliseconds per epoch of each and the median of the paired ratios
autotl / plain. Goal: ratio <= 1.05.

Commands (CPU default: timm's tiny test_resnet and test_vit at 32 px):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overhead.py --threads 1 --append
    .venv/bin/python benchmarks/overhead.py --append                    # torch's default threads

On a GPU machine:

    .venv/bin/python benchmarks/overhead.py --device cuda --models resnet18,vit_small_patch16_224 \\
        --size 224 --append

Without ``--append`` the table is only printed. Networks are created with ``pretrained=False``, so
nothing downloads.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import _common

HEADING = "Overhead (`benchmarks/overhead.py`)"


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="test_resnet,test_vit",
                   help="comma-separated timm architectures (default: test_resnet,test_vit)")
    p.add_argument("--size", type=int, default=32, help="input size in pixels (default 32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:i (default cpu)")
    p.add_argument("--images", type=int, default=512, help="training images (default 512)")
    p.add_argument("--val-images", type=int, default=128,
                   help="validation images scored after every epoch, on both sides (default 128)")
    p.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per timed run (default 3)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each side per model (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each side first (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (sets OMP_NUM_THREADS too); default: torch's own choice")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    if min(args.images, args.val_images, args.classes - 1, args.batch_size, args.epochs, args.repeats) < 1:
        p.error("--images, --val-images, --batch-size, --epochs and --repeats must be >= 1, --classes >= 2")
    return args


def make_net(arch: str, size: int):
    """A timm network without a classifier, random weights (nothing downloads), at ``size`` px."""
    import timm

    try:
        return timm.create_model(arch, pretrained=False, num_classes=0, img_size=size)
    except TypeError:  # convolutional networks take any input size and no img_size argument
        return timm.create_model(arch, pretrained=False, num_classes=0)


def batches(n: int, batch_size: int, generator) -> list:
    """The batch order ``autotl.trainer.fit`` uses: a seeded permutation, a trailing batch of 1 dropped."""
    import torch

    order = torch.randperm(n, generator=generator)
    chunks = list(order.split(max(1, min(batch_size, n))))
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks = chunks[:-1]
    return chunks


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_autotl(template, train, val, params, epochs: int, device) -> Tuple[float, List[float]]:
    """Seconds of one ``autotl.trainer.fit`` call, and the time stamp after each epoch."""
    from autotl.trainer import fit

    model = copy.deepcopy(template)
    stamps: List[float] = []
    sync(device)
    start = time.perf_counter()
    fit(model, train, val, params, epochs=epochs, metric="accuracy", device=device, seed=0,
        on_epoch=lambda *_: stamps.append(time.perf_counter()))
    sync(device)
    total = time.perf_counter() - start
    return total, [start] + stamps


def run_plain(template, train, val, params, epochs: int, device) -> Tuple[float, List[float]]:
    """The loop a user writes by hand: AdamW, cross-entropy, the same batches, a val pass per epoch."""
    import torch
    from torch import nn

    module = copy.deepcopy(template.module)
    stamps: List[float] = []
    sync(device)
    start = time.perf_counter()
    module.to(device)
    cuda = device.type == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    x, y = train.x.to(device), train.y.to(device)
    xv, yv = val.x.to(device), val.y.to(device)
    if cuda:  # the same precision and layout as autotl's fit on CUDA
        module.to(memory_format=torch.channels_last)
        x, xv = x.contiguous(memory_format=torch.channels_last), xv.contiguous(memory_format=torch.channels_last)
    amp_dtype = (torch.bfloat16 if bf16 else torch.float16) if cuda else None
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None

    def autocast():
        return torch.autocast(device_type="cuda", dtype=amp_dtype) if cuda else torch.autocast("cpu", enabled=False)

    optimizer = torch.optim.AdamW(module.parameters(), lr=params.head_lr, weight_decay=params.weight_decay)
    criterion = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        module.train()
        for idx in batches(len(y), params.batch_size, generator):
            idx = idx.to(device)
            with autocast():
                loss = criterion(module(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
        module.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad(), autocast():
            for s in range(0, len(yv), 256):
                correct += (module(xv[s:s + 256]).argmax(1) == yv[s:s + 256]).sum()
        _accuracy = float(correct) / len(yv)  # a real loop reads the metric every epoch
        stamps.append(time.perf_counter())
    sync(device)
    total = time.perf_counter() - start
    return total, [start] + stamps


def steady_epoch(stamps: List[float]) -> float:
    """Median seconds of epochs 2..E (setup and the first epoch's warm-up left out)."""
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:])]
    return statistics.median(gaps) if gaps else stamps[-1] - stamps[0]


def measure_model(arch: str, args: argparse.Namespace, device, adapter) -> Dict[str, Any]:
    import torch

    from autotl import SourceModel
    from autotl.model import build_model
    from autotl.space import TrialParams
    from autotl.tensors import TensorSet

    size = args.size
    source = SourceModel(name=f"bench/{arch}", build=lambda: make_net(arch, size),
                         data_config={"input_size": (3, size, size)}, architecture=arch)
    torch.manual_seed(0)
    template = build_model(source, adapter, args.classes, {}, net=make_net(arch, size))
    gen = torch.Generator().manual_seed(1)
    train = TensorSet(x=torch.randn(args.images, 3, size, size, generator=gen),
                      y=torch.randint(0, args.classes, (args.images,), generator=gen))
    val = TensorSet(x=torch.randn(args.val_images, 3, size, size, generator=gen),
                    y=torch.randint(0, args.classes, (args.val_images,), generator=gen))
    # autotl's recipe reduced to what the plain loop does: full fine-tuning, AdamW, one learning rate
    # for every parameter, no warmup, no smoothing, no augmentation.
    params = TrialParams(backbone=source.name, adapter="linear", freeze_depth=0.0, head_lr=1e-3,
                         backbone_lr="multiplier", backbone_lr_mult=1.0, layer_decay=None, weight_decay=0.05,
                         batch_size=args.batch_size, warmup_epochs=0, label_smoothing=0.0)
    sides: Dict[str, Callable] = {"autotl": run_autotl, "plain": run_plain}
    for _ in range(args.warmup):
        for fn in sides.values():
            fn(template, train, val, params, args.epochs, device)
    times: Dict[str, List[float]] = {"autotl": [], "plain": []}
    steady: Dict[str, List[float]] = {"autotl": [], "plain": []}
    for r in range(args.repeats):
        order = ("autotl", "plain") if r % 2 == 0 else ("plain", "autotl")
        for name in order:
            total, stamps = sides[name](template, train, val, params, args.epochs, device)
            times[name].append(total / args.epochs)
            steady[name].append(steady_epoch(stamps))
        print(f"  {arch} repeat {r + 1}/{args.repeats}: autotl {times['autotl'][-1] * 1e3:.1f} ms/epoch, "
              f"plain {times['plain'][-1] * 1e3:.1f} ms/epoch", flush=True)
    ratios = [a / p for a, p in zip(times["autotl"], times["plain"])]
    steady_ratios = [a / p for a, p in zip(steady["autotl"], steady["plain"])]
    params_m = sum(p.numel() for p in template.module.parameters()) / 1e6
    return {"model": arch, "params_m": params_m, "autotl_ms": statistics.median(times["autotl"]) * 1e3,
            "plain_ms": statistics.median(times["plain"]) * 1e3, "ratio": statistics.median(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios), "steady_ratio": statistics.median(steady_ratios)}


def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    import torch

    import autotl
    from autotl.trainer import resolve_device

    device = resolve_device(args.device)
    adapter = autotl.get_plugin_manager().adapters.get("linear")
    steps = len(batches(args.images, args.batch_size, torch.Generator().manual_seed(0)))
    print(f"overhead: {args.models} at {args.size}px on {device}, {args.images} images, batch {args.batch_size} "
          f"({steps} steps/epoch), {args.epochs} epochs x {args.repeats} repeats; "
          f"{_common.machine_summary(str(device))}", flush=True)
    rows = []
    for arch in [m.strip() for m in args.models.split(",") if m.strip()]:
        r = measure_model(arch, args, device, adapter)
        rows.append([r["model"], f"{r['params_m']:.2f}", f"{args.size}px", str(device), args.batch_size,
                     f"{r['autotl_ms']:.1f}", f"{r['plain_ms']:.1f}",
                     f"**{r['ratio']:.3f}**" if r["ratio"] > 1.05 else f"{r['ratio']:.3f}",
                     f"{r['ratio_min']:.3f}–{r['ratio_max']:.3f}", f"{r['steady_ratio']:.3f}"])
    table = _common.md_table(["model", "params (M)", "input", "device", "batch", "autotl ms/epoch",
                              "plain ms/epoch", "ratio", "ratio range", "ratio, epochs 2+"], rows)
    notes = [f"{args.images} random training images, {args.val_images} validation images scored after every "
             f"epoch on both sides, {args.classes} classes, {steps} steps per epoch, {args.epochs} epochs per run, "
             f"median of {args.repeats} interleaved repeats after {args.warmup} warm-up run(s). "
             "ms/epoch = the whole call (setup included) / epochs; ratio = median of the paired autotl/plain "
             "ratios (goal <= 1.05; bold when above); the last column leaves setup and the first epoch out."]
    print()
    print(notes[0])
    print(table)
    if args.append:
        _common.append_results(HEADING, _common.result_block(
            f"autotl fit() vs a plain loop, {args.models} at {args.size}px, {device}", str(device), [table], notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
