"""Data scale: autotl's data path on 2,000 to 50,000 JPEGs against a plain timm + PyTorch DataLoader loop.

For each size N, a synthetic image-folder dataset of N 256x256 RGB JPEGs (quality 90, 10 class
subfolders, a class-dependent grating, colour and blob under noise, so a model can learn it) is
generated once, deterministically from ``--seed``, and cached under ``--data-root``. Then two
subprocesses run on it, one at a time, and the parent measures each one's wall time and peak
resident memory (``os.wait4``: ``ru_maxrss`` of the child and of any children it reaped):

- autotl: ``python -m autotl search DIR --backbones timm/test_resnet --space quick --trials 2
  --epochs E --device cpu --out OUT --no-report --quiet --seed S --study NAME`` plus
  ``--autotl-args`` (e.g. ``--data-path stream --resident-mb 512``), with its own empty
  ``AUTOTL_HISTORY`` (no warm start). Each trial's seconds, epochs and parameters come from the run
  folder's Optuna journal. A trial's training throughput is its ``data`` user attribute
  (``train_images_per_s``, ``epoch_train_seconds``: training only, no validation) when autotl
  records one, else training images x epochs / the trial's seconds (which then include the
  preprocessing and the validation passes: the table marks such numbers with ``*``). The
  throughput compared is that of the trials that train like the plain loop: freeze depth 0 and
  batch 16 (the default-recipe trial always does).
- plain: this file with ``--plain DIR``: ``torchvision.datasets.ImageFolder`` + timm's evaluation
  transform (``create_transform(**resolve_data_config({"input_size": (3, S, S)}, model=net),
  is_training=False)``, as autotl preprocesses unaugmented trials; autotl's ``timm/test_resnet``
  source declares 32 px) + ``torch.utils.data.DataLoader`` (batch 16, shuffled, ``--workers``
  workers: by default as many as autotl would use here, ``persistent_workers`` when there are any,
  ``pin_memory`` only on CUDA); ``timm.create_model("test_resnet", num_classes=10)``, AdamW,
  cross-entropy, E epochs on a seeded 80 % of the images, the other 20 % scored after every epoch.

Tables: per size, each arm's peak RSS, its growth per added image from the previous size, wall
seconds, seconds per training epoch, training images/s and the throughput ratio autotl / plain;
then autotl's trials; then the goals: RSS growth <= 120 KB per added image from 2,000 to 10,000
images, peak RSS <= 3.5 GB at 10,000, training throughput >= 0.9x plain at every size.

Commands (see benchmarks/README.md for the time each size takes):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_scale.py --threads 1 --append
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_scale.py --threads 1 --sizes 2000,10000 \\
        --autotl-args "--data-path stream" --append
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/data_scale.py --threads 1 --sizes 200,400 --epochs 1   # smoke

Without ``--append`` the tables are only printed. Raw numbers go to ``<work>/results.json``.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import _common

HEADING = "Data scale (`benchmarks/data_scale.py`)"
DATA_VERSION = 1  # bump when the generator changes, so cached datasets are rebuilt
SIDE, QUALITY, CLASSES = 256, 90, 10
VAL_FRACTION = 0.2
BATCH = 16
BACKBONE = "timm/test_resnet"
INPUT_SIZE = 32  # plugins/autotl_timm: TEST_DATA_CONFIG of the timm/test_* sources
GOAL_GROWTH_KB = 120.0
GOAL_RSS_MB_AT_10K = 3.5 * 1024
GOAL_RATIO = 0.9


# --------------------------------------------------------------------------- the synthetic datasets

_PALETTE = ((1.0, 0.3, 0.3), (0.3, 1.0, 0.3), (0.3, 0.3, 1.0), (1.0, 1.0, 0.3), (1.0, 0.3, 1.0),
            (0.3, 1.0, 1.0), (1.0, 0.65, 0.3), (0.65, 0.3, 1.0), (0.3, 0.65, 0.65), (0.8, 0.8, 0.8))


def synth_image(seed: int, index: int, label: int, side: int = SIDE):
    """One image of class ``label``: an oriented grating (angle, frequency and colour by class, random
    phase), a blob whose size grows with the class, coarse and fine noise. Deterministic in (seed, index)."""
    import numpy as np

    rng = np.random.default_rng([seed, index])
    axis = np.linspace(0.0, 1.0, side, endpoint=False, dtype=np.float32)
    xx, yy = axis[None, :], axis[:, None]
    theta = label * math.pi / CLASSES + float(rng.normal(0.0, 0.08))
    freq = (4.0 + 1.5 * (label % 5)) * float(rng.uniform(0.9, 1.1))
    k = np.float32(2 * math.pi * freq)
    wave = np.sin(k * math.cos(theta) * xx + k * math.sin(theta) * yy + np.float32(rng.uniform(0, 2 * math.pi)))
    cx, cy = (float(v) for v in rng.uniform(0.2, 0.8, 2))
    inv = np.float32(-1.0 / (2 * (0.06 + 0.015 * label) ** 2))  # the blob grows with the class
    blob = np.exp((xx - np.float32(cx)) ** 2 * inv) * np.exp((yy - np.float32(cy)) ** 2 * inv)
    color = np.asarray(_PALETTE[label], dtype=np.float32) * np.float32(rng.uniform(0.8, 1.2))
    # Channels first, where numpy's broadcasting is fast; (H, W, 3) for Pillow at the end.
    img = ((70.0 * wave + 120.0)[None] * (color / 1.6)[:, None, None]
           + (80.0 * blob)[None] * (1.2 - color)[:, None, None])
    coarse = rng.standard_normal((3, side // 32, side // 32), dtype=np.float32) * np.float32(10.0)
    img += np.repeat(np.repeat(coarse, 32, axis=1), 32, axis=2)
    img += rng.standard_normal((side, side), dtype=np.float32)[None] * np.float32(12.0)
    return np.ascontiguousarray(np.clip(img, 0, 255).astype(np.uint8).transpose(1, 2, 0))


def ensure_dataset(root: Path, n: int, seed: int) -> Path:
    """The image folder of ``n`` images (``c0/`` .. ``c9/``), generated once; reused when complete."""
    from PIL import Image

    folder = root / f"synth-{n}-s{seed}-{SIDE}px-q{QUALITY}-v{DATA_VERSION}"
    marker = folder / "dataset.json"
    if marker.is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for c in range(CLASSES):
        (partial / f"c{c}").mkdir(parents=True)
    start = time.perf_counter()
    print(f"generating {n} images in {folder} ...", flush=True)
    for i in range(n):
        label = i % CLASSES
        Image.fromarray(synth_image(seed, i, label)).save(partial / f"c{label}" / f"{i:06d}.jpg", quality=QUALITY)
        if (i + 1) % 5000 == 0:
            print(f"  {i + 1}/{n} ({time.perf_counter() - start:.0f} s)", flush=True)
    (partial / "dataset.json").write_text(json.dumps(
        {"images": n, "seed": seed, "side": SIDE, "quality": QUALITY, "classes": CLASSES, "version": DATA_VERSION,
         "generated_s": round(time.perf_counter() - start, 1)}))
    partial.rename(folder)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*.jpg")) / 2 ** 20
    print(f"generated {n} images ({size_mb:.0f} MB) in {time.perf_counter() - start:.0f} s", flush=True)
    return folder


def split_sizes(n: int) -> tuple:
    """Training and validation images of an ``n``-image folder (both arms hold out 20 %)."""
    n_val = int(round(VAL_FRACTION * n))
    return n - n_val, n_val


def autotl_workers(n_train: int) -> int:
    """The DataLoader workers autotl would use for ``n_train`` training images on this machine."""
    try:
        from autotl.tensors import loader_workers
        return int(loader_workers(n_train))
    except Exception:  # the rule as autotl.tensors.loader_workers had it when this script was written
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return 0 if n_train < 2000 or cpus <= 2 else min(8, cpus - 1)


# --------------------------------------------------------------------------- the plain arm (subprocess)

def draft_loader(path: str, side: int):
    """ImageFolder's loader with Pillow's JPEG draft mode: decode at the smallest 1/2, 1/4 or 1/8 scale
    that still covers ``side`` pixels (what a hand-tuned loop may do; ``--plain-draft``)."""
    from PIL import Image

    with Image.open(path) as img:
        img.draft("RGB", (side, side))
        return img.convert("RGB")


def plain_main(args: argparse.Namespace) -> None:
    """A hand-written timm + PyTorch loop over the image folder; its numbers go to ``--plain-json``."""
    _common.set_threads(args.threads)
    start = time.perf_counter()
    import resource

    import timm
    import torch
    from timm.data import create_transform, resolve_data_config
    from torch import nn
    from torch.utils.data import DataLoader, random_split
    from torchvision.datasets import ImageFolder

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    root = Path(args.plain)
    root = root / "train" if (root / "train").is_dir() else root
    torch.manual_seed(args.seed)
    probe = ImageFolder(str(root))
    model = timm.create_model(args.model, pretrained=False, num_classes=len(probe.classes)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    cfg = resolve_data_config({"input_size": (3, args.input_size, args.input_size)}, model=model, use_test_size=False)
    transform = create_transform(**cfg, is_training=False)
    loader = {}
    if args.plain_draft:  # the smallest side timm's eval resize needs: floor(input / crop_pct)
        loader = {"loader": functools.partial(draft_loader, side=int(math.floor(args.input_size / cfg["crop_pct"])))}
    full = ImageFolder(str(root), transform=transform, **loader)
    n_val = int(round(VAL_FRACTION * len(full)))
    train_set, val_set = random_split(full, [len(full) - n_val, n_val],
                                      generator=torch.Generator().manual_seed(args.seed))
    workers = args.workers
    common = dict(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                              drop_last=len(train_set) % args.batch_size == 1,  # BatchNorm cannot train on 1 image
                              generator=torch.Generator().manual_seed(args.seed), **common)
    val_loader = DataLoader(val_set, batch_size=256, shuffle=False, **common)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    setup_s = time.perf_counter() - start
    train_s: List[float] = []
    val_s: List[float] = []
    val_acc: List[float] = []
    trained = 0
    for epoch in range(args.epochs):
        model.train()
        t0 = time.perf_counter()
        seen = 0
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cuda:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
        if cuda:
            torch.cuda.synchronize()
        train_s.append(time.perf_counter() - t0)
        trained += seen
        model.eval()
        t0 = time.perf_counter()
        correct = total = 0
        with torch.inference_mode(), autocast:
            for x, y in val_loader:
                pred = model(x.to(device, non_blocking=True)).argmax(1).cpu()
                correct += int((pred == y).sum())
                total += len(y)
        val_s.append(time.perf_counter() - t0)
        val_acc.append(correct / max(1, total))
        print(f"plain epoch {epoch + 1}/{args.epochs}: train {train_s[-1]:.2f} s ({seen / train_s[-1]:.0f} img/s), "
              f"val {val_s[-1]:.2f} s, acc {val_acc[-1]:.3f}", flush=True)
    out = {"train_images": len(train_set), "val_images": len(val_set), "workers": workers, "draft": args.plain_draft,
           "input_size": list(cfg["input_size"]), "data_config": {k: (list(v) if isinstance(v, tuple) else v)
                                                                  for k, v in cfg.items()},
           "setup_s": setup_s, "epoch_train_seconds": train_s, "epoch_val_seconds": val_s, "val_accuracy": val_acc,
           "train_images_per_s": trained / sum(train_s) if sum(train_s) > 0 else None,
           "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "torch_threads": torch.get_num_threads()}
    Path(args.plain_json).write_text(json.dumps(out, indent=2))


# --------------------------------------------------------------------------- running and reading the arms

def run_measured(cmd: Sequence[str], log: Path, env: Dict[str, str]) -> Dict[str, float]:
    """Run ``cmd`` to its end; its wall seconds and peak RSS (MB, the child and the children it reaped)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        fh.write("$ " + shlex.join(cmd) + "\n")
        fh.flush()
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
        raise SystemExit(f"{shlex.join(cmd)} exited with {proc.returncode}; the end of {log}:\n{tail}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss is in KB on Linux


def child_env(args: argparse.Namespace, history: Optional[Path] = None) -> Dict[str, str]:
    env = dict(os.environ)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    if history is not None:
        env["AUTOTL_HISTORY"] = str(history)
    return env


def read_trials(out: Path) -> List[Dict[str, Any]]:
    """Each trial of the run folder's study: state, params, epochs, seconds and the ``data`` attribute."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    summary = json.loads((out / "summary.json").read_text())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
    study = optuna.load_study(study_name=summary["study"], storage=storage)
    trials = []
    for t in study.trials:
        ua = t.user_attrs
        params = ua.get("params") or dict(t.params)
        trials.append({"number": t.number, "state": t.state.name.lower(),
                       "freeze_depth": params.get("freeze_depth"), "batch_size": params.get("batch_size"),
                       "epochs": int(ua.get("epochs_run", len(t.intermediate_values))),
                       "seconds": float(ua.get("seconds", 0.0)), "data": ua.get("data"),
                       "feature_cache": ua.get("feature_cache"), "origin": ua.get("origin")})
    return trials


def trial_throughput(trial: Dict[str, Any], n_train: int) -> Dict[str, Any]:
    """Training images/s and seconds per training epoch of one trial, and where they came from."""
    data = trial.get("data") if isinstance(trial.get("data"), dict) else None
    epochs = max(1, trial["epochs"])
    if data and (data.get("train_images_per_s") or data.get("epoch_train_seconds")):
        per_epoch = [float(s) for s in data.get("epoch_train_seconds") or []]
        ips = data.get("train_images_per_s")
        ips = float(ips) if ips else n_train * len(per_epoch) / sum(per_epoch)
        epoch_s = statistics.mean(per_epoch) if per_epoch else n_train / ips
        return {"images_per_s": ips, "epoch_s": epoch_s, "trained": n_train * (len(per_epoch) or epochs),
                "train_s": sum(per_epoch) if per_epoch else n_train * epochs / ips,
                "path": data.get("path", "not recorded"), "from": "data"}
    seconds = trial["seconds"]
    return {"images_per_s": n_train * epochs / seconds if seconds > 0 else None, "epoch_s": seconds / epochs,
            "trained": n_train * epochs, "train_s": seconds, "path": "not recorded", "from": "trial seconds"}


def matches_plain(trial: Dict[str, Any]) -> bool:
    """Trains like the plain loop: every layer (freeze depth 0), batches of 16."""
    try:
        return float(trial["freeze_depth"]) == 0.0 and int(trial["batch_size"]) == BATCH
    except (TypeError, ValueError):
        return False


def autotl_command() -> List[str]:
    """The ``autotl`` console script next to this Python (``python -m autotl`` if there is none)."""
    script = Path(sys.executable).parent / "autotl"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "autotl"]


def run_autotl(args: argparse.Namespace, data: Path, n: int, repeat: int, work: Path) -> Dict[str, Any]:
    out = work / f"n{n}" / f"r{repeat}" / "autotl"
    shutil.rmtree(out, ignore_errors=True)  # a fresh study each time (an existing one would be resumed)
    history = out.parent / "history.jsonl"
    history.unlink(missing_ok=True)
    cmd = [*autotl_command(), "search", str(data), "--backbones", BACKBONE, "--space", args.space,
           "--trials", str(args.trials), "--epochs", str(args.epochs), "--device", args.device, "--out", str(out),
           "--no-report", "--quiet", "--seed", str(args.seed + repeat), "--study", f"data-scale-{n}-r{repeat}",
           *shlex.split(args.autotl_args)]
    measured = run_measured(cmd, out.parent / "autotl.log", child_env(args, history))
    summary = json.loads((out / "summary.json").read_text())
    n_train = int(summary["dataset"]["images"]["train"])
    trials = read_trials(out)
    for t in trials:
        t.update(trial_throughput(t, n_train) if t["state"] in ("complete", "pruned") else {})
    timed = [t for t in trials if t.get("images_per_s")]
    matched = [t for t in timed if matches_plain(t)] or timed
    trained, train_s = sum(t["trained"] for t in matched), sum(t["train_s"] for t in matched)
    data_config = None
    try:
        data_config = json.loads((out / "best" / "config.json").read_text()).get("data_config")
    except (OSError, ValueError):
        pass
    return {**measured, "n_train": n_train, "trials": trials, "matched": [t["number"] for t in matched],
            "images_per_s": trained / train_s if train_s > 0 else None,
            "epoch_s": statistics.mean(t["epoch_s"] for t in matched) if matched else None,
            "from": "data" if matched and all(t["from"] == "data" for t in matched) else "trial seconds",
            "paths": sorted({t["path"] for t in matched}), "elapsed_s": summary.get("elapsed_s"),
            "epochs_total": summary.get("epochs_total"), "data_config": data_config, "command": shlex.join(cmd)}


def run_plain(args: argparse.Namespace, data: Path, n: int, repeat: int, work: Path) -> Dict[str, Any]:
    folder = work / f"n{n}" / f"r{repeat}"
    folder.mkdir(parents=True, exist_ok=True)
    result_file = folder / "plain.json"
    result_file.unlink(missing_ok=True)
    workers = args.workers if args.workers is not None else autotl_workers(split_sizes(n)[0])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--plain", str(data), "--plain-json", str(result_file),
           "--epochs", str(args.epochs), "--batch-size", str(BATCH), "--workers", str(workers),
           "--input-size", str(args.input_size), "--model", args.model, "--device", args.device,
           "--seed", str(args.seed + repeat)]
    if args.plain_draft:
        cmd.append("--plain-draft")
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    measured = run_measured(cmd, folder / "plain.log", child_env(args))
    result = json.loads(result_file.read_text())
    return {**measured, **result, "n_train": result["train_images"], "images_per_s": result["train_images_per_s"],
            "epoch_s": statistics.mean(result["epoch_train_seconds"]), "command": shlex.join(cmd)}


# --------------------------------------------------------------------------- tables

def np_list(value: Any) -> List[Any]:
    """A data-config value as a list, for comparing tuples, lists and scalars alike."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _stat(values: Sequence[Optional[float]], fmt: str) -> str:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(values) if values else None


def ratio_of(rep: Dict[str, Any]) -> Optional[float]:
    """autotl's training throughput over the plain loop's, in one repeat."""
    a, p = rep["autotl"]["images_per_s"], rep["plain"]["images_per_s"]
    return a / p if a and p else None


def growth_kb(runs: Dict[int, List[Dict[str, Any]]], arm: str, lo: int, hi: int) -> List[float]:
    """Peak-RSS growth per added image from ``lo`` to ``hi`` images, KB, one value per repeat."""
    return [(b[arm]["peak_rss_mb"] - a[arm]["peak_rss_mb"]) * 1024 / (hi - lo) for a, b in zip(runs[lo], runs[hi])]


def build_tables(runs: Dict[int, List[Dict[str, Any]]]) -> List[str]:
    """The per-size tables, autotl's trials, and the goals."""
    sizes = sorted(runs)
    tables = []
    for i, n in enumerate(sizes):
        reps = runs[n]
        a0, p0 = reps[0]["autotl"], reps[0]["plain"]
        paths = ", ".join(sorted({p for r in reps for p in r["autotl"]["paths"]}))
        star = "*" if any(r["autotl"]["from"] != "data" for r in reps) else ""
        caption = (f"**{n:,} images** ({a0['n_train']:,} train for autotl, {p0['n_train']:,} for plain; "
                   f"autotl data path: {paths}; plain loader workers: {p0['workers']}; autotl trials compared: "
                   f"{', '.join('#' + str(t) for t in a0['matched']) or 'none'})")
        rows = []
        for arm in ("autotl", "plain"):
            growth = _stat(growth_kb(runs, arm, sizes[i - 1], n), ".0f") if i else "–"
            ratio = _stat([ratio_of(r) for r in reps], ".2f")
            mark = star if arm == "autotl" else ""
            rows.append([arm, _stat([r[arm]["peak_rss_mb"] for r in reps], ".0f"), growth,
                         _stat([r[arm]["wall_s"] for r in reps], ".1f"),
                         _stat([r[arm]["epoch_s"] for r in reps], ".2f") + mark,
                         _stat([r[arm]["images_per_s"] for r in reps], ".0f") + mark,
                         ratio + mark if arm == "autotl" else "1"])
        header = ["arm", "peak RSS MB", "RSS growth KB/image", "wall s", "train epoch s", "train images/s",
                  "autotl / plain"]
        tables.append(caption + "\n\n" + _common.md_table(header, rows))

    trial_rows = []
    for n in sizes:
        for r, rep in enumerate(runs[n]):
            for t in rep["autotl"]["trials"]:
                trial_rows.append([f"{n:,}", r, t["number"], t["state"], t["freeze_depth"], t["batch_size"],
                                   t["epochs"], f"{t['seconds']:.1f}", t.get("path", "–"),
                                   f"{t['images_per_s']:.0f}" if t.get("images_per_s") else "–", t.get("from", "–"),
                                   "yes" if matches_plain(t) else "no"])
    tables.append(_common.md_table(["images", "repeat", "trial", "state", "freeze", "batch", "epochs", "seconds",
                                    "data path", "train images/s", "from", "like plain"], trial_rows))
    tables.append(_common.md_table(["goal", "measured (autotl)", "result"], goal_rows(runs)))
    return tables


def goal_rows(runs: Dict[int, List[Dict[str, Any]]]) -> List[List[str]]:
    sizes = sorted(runs)
    rows = []
    if 2000 in runs and 10000 in runs:
        g = _mean(growth_kb(runs, "autotl", 2000, 10000))
        rows.append([f"RSS growth <= {GOAL_GROWTH_KB:.0f} KB per added image, 2,000 -> 10,000", f"{g:.0f} KB/image",
                     "met" if g <= GOAL_GROWTH_KB else "**not met**"])
    elif len(sizes) >= 2:
        g = _mean(growth_kb(runs, "autotl", sizes[0], sizes[1]))
        rows.append([f"RSS growth <= {GOAL_GROWTH_KB:.0f} KB per added image, 2,000 -> 10,000",
                     f"{g:.0f} KB/image from {sizes[0]:,} to {sizes[1]:,} images",
                     "not measured (needs sizes 2000 and 10000); at these sizes: "
                     + ("met" if g <= GOAL_GROWTH_KB else "not met")])
    else:
        rows.append([f"RSS growth <= {GOAL_GROWTH_KB:.0f} KB per added image, 2,000 -> 10,000", "–",
                     "not measured (needs sizes 2000 and 10000)"])
    if 10000 in runs:
        rss = _mean([r["autotl"]["peak_rss_mb"] for r in runs[10000]])
        rows.append(["peak RSS <= 3.5 GB at 10,000 images", f"{rss / 1024:.2f} GB",
                     "met" if rss <= GOAL_RSS_MB_AT_10K else "**not met**"])
    else:
        rows.append(["peak RSS <= 3.5 GB at 10,000 images", "–", "not measured (needs size 10000)"])
    ratios = {n: _mean([ratio_of(r) for r in runs[n]]) for n in sizes}
    shown = ", ".join(f"{n:,}: {v:.2f}x" if v is not None else f"{n:,}: –" for n, v in ratios.items())
    ok = all(v is not None and v >= GOAL_RATIO for v in ratios.values())
    star = any(r["autotl"]["from"] != "data" for n in sizes for r in runs[n])
    rows.append([f"training throughput >= {GOAL_RATIO}x plain at every size", shown + (" *" if star else ""),
                 "met" if ok else "**not met**"])
    return rows


# --------------------------------------------------------------------------- main

def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2000,10000,50000", help="dataset sizes in images (default 2000,10000,50000)")
    p.add_argument("--data-root", default=str(Path("~/.cache/autotl/bench_data").expanduser()),
                   help="where the generated datasets are cached (default ~/.cache/autotl/bench_data)")
    p.add_argument("--epochs", type=int, default=2, help="epochs per trial and for the plain loop (default 2)")
    p.add_argument("--trials", type=int, default=2, help="autotl trials (default 2)")
    p.add_argument("--space", default="quick", help="autotl search space (default quick)")
    p.add_argument("--repeats", type=int, default=1, help="runs of each arm per size; mean ± sd when > 1 (default 1)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed, and the runs' seed (+ the repeat)")
    p.add_argument("--autotl-args", default="", metavar='"FLAGS"',
                   help='extra flags for `autotl search`, e.g. "--data-path stream --resident-mb 512" (one flag '
                        'alone needs the = form: --autotl-args=--data-path=stream)')
    p.add_argument("--workers", type=int, default=None,
                   help="the plain loop's DataLoader workers (default: as many as autotl would use here)")
    p.add_argument("--input-size", type=int, default=INPUT_SIZE,
                   help=f"the plain loop's input side in px (default {INPUT_SIZE}, as autotl's timm/test_resnet)")
    p.add_argument("--plain-draft", action="store_true",
                   help="let the plain loop decode JPEGs with Pillow's draft mode (reduced scale), as autotl may")
    p.add_argument("--model", default="test_resnet", help="the plain loop's timm architecture (default test_resnet)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for both arms (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of both arms (sets OMP_NUM_THREADS too)")
    p.add_argument("--work", default="runs/benchmarks/data_scale", help="run folders, logs and results.json")
    p.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    p.add_argument("--plain", metavar="DIR", help=argparse.SUPPRESS)  # internal: run the plain arm on DIR
    p.add_argument("--plain-json", metavar="FILE", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=BATCH, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size_list = sorted(set(_common.parse_ints(args.sizes)))
    if args.plain is None and (not args.size_list or min(args.size_list) < 5 * CLASSES):
        p.error(f"--sizes must name sizes of at least {5 * CLASSES} images")
    if min(args.epochs, args.trials, args.repeats) < 1:
        p.error("--epochs, --trials and --repeats must be >= 1")
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be >= 0")
    return args


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    if args.plain is not None:
        plain_main(args)
        return
    _common.set_threads(args.threads)
    work = Path(args.work).resolve()
    root = Path(args.data_root).expanduser().resolve()
    started = time.perf_counter()
    runs: Dict[int, List[Dict[str, Any]]] = {}
    for n in args.size_list:
        data = ensure_dataset(root, n, args.seed)
        runs[n] = []
        for r in range(args.repeats):
            order = ("autotl", "plain") if r % 2 == 0 else ("plain", "autotl")  # alternate who goes first
            rep: Dict[str, Any] = {}
            for arm in order:
                rep[arm] = (run_autotl if arm == "autotl" else run_plain)(args, data, n, r, work)
                print(f"{n} images, repeat {r}, {arm}: {rep[arm]['wall_s']:.1f} s wall, "
                      f"peak RSS {rep[arm]['peak_rss_mb']:.0f} MB, "
                      f"{rep[arm]['images_per_s'] or float('nan'):.0f} train images/s", flush=True)
            runs[n].append(rep)
    (work / "results.json").write_text(json.dumps({str(n): v for n, v in runs.items()}, indent=1, default=str))
    a0, p0 = runs[args.size_list[0]][0]["autotl"], runs[args.size_list[0]][0]["plain"]
    plain_cfg = p0["data_config"]
    auto_cfg = a0["data_config"] or {}
    differ = {k: (auto_cfg[k], plain_cfg[k]) for k in auto_cfg
              if k in plain_cfg and np_list(auto_cfg[k]) != np_list(plain_cfg[k])}
    tables = build_tables(runs)
    for t in tables:
        print("\n" + t)
    epochs = f"{args.epochs} epoch{'s' if args.epochs != 1 else ''}"
    extra = f" {args.autotl_args}" if args.autotl_args else ""
    side = "x".join(map(str, p0["input_size"][1:]))
    decode = "JPEGs decoded in Pillow's draft mode" if args.plain_draft else "JPEGs decoded at full size"
    notes = [
        f"Synthetic {SIDE}x{SIDE} JPEGs (quality {QUALITY}, {CLASSES} classes, seed {args.seed}). autotl: "
        f"`autotl search DIR --backbones {BACKBONE} --space {args.space} --trials {args.trials} --epochs "
        f"{args.epochs} --device {args.device} --no-report --quiet{extra}`. Plain: ImageFolder + timm's eval "
        f"transform at {side} px + DataLoader (workers: per size, above; {decode}), {args.model}, AdamW, batch "
        f"{BATCH}, {epochs} on 80 % of the images, the other 20 % scored every epoch.",
        "Peak RSS: `ru_maxrss` of each subprocess from `os.wait4` (the largest single process: the arm's own, or a "
        "loader worker it reaped; not their sum). Wall: the whole subprocess, start-up and imports included. "
        f"Throughput: autotl's trials that train like the plain loop (freeze depth 0, batch {BATCH}), training only "
        "(no validation), from the trial's `data` attribute; * marks numbers from the trial's seconds instead (they "
        "include preprocessing and validation, so they understate autotl). "
        f"{args.repeats} repeat{'s, mean ± sd' if args.repeats > 1 else ''}; total wall "
        f"{time.perf_counter() - started:.0f} s."]
    if differ:
        notes.append(f"**Warning:** autotl and the plain loop preprocess differently (autotl, plain): {differ}; "
                     "the throughputs are not comparable (see --input-size).")
    elif auto_cfg:
        notes.append(f"Both arms preprocess with the same data config: {json.dumps(plain_cfg)}.")
    print("\n" + "\n\n".join(notes))
    if args.append:
        _common.append_results(HEADING, _common.result_block(
            f"sizes {', '.join(f'{n:,}' for n in args.size_list)}", args.device, tables, notes))


if __name__ == "__main__":
    main()
