"""Search quality: autotl's search against simpler ways to pick a transfer recipe, on offline digits tasks.

Sources: timm's tiny test_resnet, test_efficientnet and test_vit pretrained with ``autotl pretrain``
on ``builtin:digits-source`` (digits 0-4) into the zoo, as ``make demo`` does (missing ones are
pretrained, the rest reused). Tasks, all with target classes 5-9 and train/val/test splits:

- ``digits``: ``builtin:digits`` itself (15 train and 15 val images per class): disjoint classes.
- ``shift``: the same images and splits, inverted, upscaled to 32 px, rotated by 30-60 degrees and
  noised, written as a CSV + PNG folder under ``--work``: a domain shift from the sources.
- ``small``: 5 train and 10 val images per class (the test split of ``digits``), as a CSV + PNG folder.

Methods, each per task and seed, each choosing its final model by validation accuracy:

1. ``autotl``: ``autotl.search`` with ``--space`` (quick: TPE, Hyperband), ``default_trials=3``.
2. ``random``: the same space with ``sampler: random`` and ``pruner: none``; the same trial count.
3. ``fixed``: one run per backbone of a fixed published recipe (tllib: SGD, momentum 0.9, head lr 0.01,
   backbone 0.1x, weight decay 5e-4; full fine-tuning, batch 16), every knob fixed; the best backbone by
   val. ``--recipe autotl`` uses autotl's own default recipe (``autotl.defaults``) instead.
4. ``grid``: every backbone x freeze depth {0, 0.5, 1} x head_lr {1e-3, 3e-3, 1e-2} (other knobs as quick,
   backbone 0.1x, batch 16), unpruned: the "oracle" of this small space.
5. ``optuna``: what a user writes instead of autotl: ``optuna.create_study`` with ``TPESampler(seed)`` and
   ``HyperbandPruner``, an objective sampling the quick space's knobs and training with
   ``autotl.model.build_model`` + ``autotl.trainer.fit``; the best trial's weights, kept from ``fit``,
   scored on test with ``autotl.trainer.evaluate`` (no retraining).

The summary gives, per task and method: the test accuracy of the model chosen by val (mean over
seeds), the epochs trained, and the regret: the best test accuracy any method reached on that task
(any seed) minus the method's mean.

Command (about 15 minutes on 2 CPU cores with the defaults, see benchmarks/README.md):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_quality.py --threads 1 --append

Smaller: ``--tasks digits --seeds 0 --trials 6 --epochs 3``. Without ``--append`` the tables are only
printed; every run's numbers are also written to ``<work>/results.json``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import _common

HEADING = "Search quality (`benchmarks/search_quality.py`)"
TASKS = ("digits", "shift", "small")
METHODS = ("autotl", "random", "fixed", "grid", "optuna")
TASK_VERSION = 1  # bump when the task builders change, so old work folders are rebuilt

#: The fixed published recipe (method 3): tllib's fine-tuning defaults (shared/REFERENCES.md).
#: tllib names no batch size for this; 16 is the quick space's, so small targets get enough steps.
FIXED_RECIPE: Dict[str, Any] = {
    "strategy": "freeze_depth", "freeze_depth": 0.0, "optimizer": "sgd", "momentum": 0.9, "head_lr": 0.01,
    "backbone_lr": "multiplier", "backbone_lr_mult": 0.1, "weight_decay": 5.0e-4, "batch_size": 16,
    "schedule": "cosine", "warmup_epochs": 0, "label_smoothing": 0.0, "augmentation": "none",
}
#: The grid (method 4): every combination of these with every backbone; the other knobs fixed as below.
GRID_FREEZE = (0.0, 0.5, 1.0)
GRID_HEAD_LR = (1.0e-3, 3.0e-3, 1.0e-2)
GRID_FIXED: Dict[str, Any] = {"backbone_lr": "multiplier", "backbone_lr_mult": 0.1, "weight_decay": 0.01,
                              "batch_size": 16, "warmup_epochs": 0, "label_smoothing": 0.0}


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated tasks (default {','.join(TASKS)})")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated methods (default all: {','.join(METHODS)})")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    p.add_argument("--trials", type=int, default=20,
                   help="trials of autotl, random and optuna (default 20; fixed runs one per backbone, grid all 27)")
    p.add_argument("--epochs", type=int, default=8, help="max epochs per trial, every method (default 8)")
    p.add_argument("--space", default="quick", help="autotl's space; random search copies it (default quick)")
    p.add_argument("--default-trials", type=int, default=3, help="autotl's default_trials (default 3)")
    p.add_argument("--recipe", choices=("tllib", "autotl"), default="tllib",
                   help="the fixed method's recipe: tllib's published defaults (default), or autotl's own "
                        "default recipe (autotl.defaults.DEFAULT_RECIPE, what default_trials enqueues)")
    p.add_argument("--zoo", default=_common.default_zoo(), help="zoo folder (default $AUTOTL_ZOO or ~/.cache/autotl/zoo)")
    p.add_argument("--archs", default=",".join(_common.DEMO_ARCHS),
                   help="timm architectures pretrained into the zoo as digits-<arch> (default: the demo's three)")
    p.add_argument("--pretrain-epochs", type=int, default=6, help="epochs for missing zoo models (default 6)")
    p.add_argument("--work", default="runs/benchmarks/search_quality", help="folder for tasks, spaces and run folders")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (sets OMP_NUM_THREADS too)")
    p.add_argument("--no-feature-cache", action="store_true", help="pass feature_cache=False to autotl's searches")
    p.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    args.task_list = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seed_list = _common.parse_ints(args.seeds)
    bad = [t for t in args.task_list if t not in TASKS] + [m for m in args.method_list if m not in METHODS]
    if bad:
        p.error(f"unknown task or method {bad[0]!r}: tasks are {', '.join(TASKS)}; methods {', '.join(METHODS)}")
    if not (args.task_list and args.method_list and args.seed_list) or args.trials < 1 or args.epochs < 1:
        p.error("need a task, a method, a seed, --trials >= 1 and --epochs >= 1")
    if args.default_trials < 0:
        p.error("--default-trials must be >= 0")
    return args


# --------------------------------------------------------------------------------------------- tasks

def _write_task(folder: Path, splits: Mapping[str, Sequence[Any]], note: str) -> str:
    """Write (PIL image, label) rows per split as PNGs plus ``data.csv``; return the CSV path."""
    import csv

    if folder.exists():
        shutil.rmtree(folder)
    (folder / "images").mkdir(parents=True)
    with (folder / "data.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split"])
        for split, rows in splits.items():
            for i, (img, label) in enumerate(rows):
                rel = f"images/{split}-{i:04d}-{label}.png"
                img.save(folder / rel)
                writer.writerow([rel, label, split])
    counts = {s: len(r) for s, r in splits.items()}
    (folder / "task.json").write_text(json.dumps({"version": TASK_VERSION, "images": counts, "note": note}, indent=2))
    return str(folder / "data.csv")


def _digits_splits() -> Dict[str, List[Any]]:
    """builtin:digits (classes 5-9) as {split: [(grayscale PIL image, label), ...]}, in the plugin's order."""
    import autotl
    from autotl.data import load_dataset

    ds = load_dataset("builtin:digits", autotl.get_plugin_manager())
    return {split: [(img.convert("L"), ds.classes[int(y)]) for img, y in zip(s.images, s.labels)]
            for split, s in (("train", ds.train), ("val", ds.val), ("test", ds.test))}


def _shifted(img: Any, rng: Any) -> Any:
    """Upscale to 32 px, invert, rotate by 30-60 degrees (white fill), add Gaussian noise."""
    import numpy as np
    from PIL import Image, ImageOps

    g = ImageOps.invert(img.resize((32, 32), Image.BILINEAR))
    g = g.rotate(float(rng.uniform(30, 60)), resample=Image.BILINEAR, fillcolor=255)
    arr = np.asarray(g, dtype=np.float32) + rng.normal(0.0, 24.0, size=(32, 32))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def build_tasks(work: Path, names: Sequence[str]) -> Dict[str, str]:
    """The data spec of each task; the CSV tasks are (re)written under ``work/tasks`` when missing or stale."""
    import numpy as np

    specs: Dict[str, str] = {}
    base = None
    for name in names:
        if name == "digits":
            specs[name] = "builtin:digits"
            continue
        folder = work / "tasks" / name
        meta = folder / "task.json"
        if meta.is_file() and json.loads(meta.read_text()).get("version") == TASK_VERSION:
            specs[name] = str(folder / "data.csv")
            continue
        base = base or _digits_splits()
        if name == "shift":
            rng = np.random.RandomState(0)
            splits = {s: [(_shifted(img, rng), y) for img, y in rows] for s, rows in base.items()}
            note = "builtin:digits 5-9 inverted, 32 px, rotated 30-60 degrees, Gaussian noise sd 24"
        else:  # small
            def first(rows: Sequence[Any], k: int) -> List[Any]:
                seen: Dict[str, int] = {}
                keep = []
                for img, y in rows:
                    seen[y] = seen.get(y, 0) + 1
                    if seen[y] <= k:
                        keep.append((img, y))
                return keep
            splits = {"train": first(base["train"], 5), "val": first(base["val"], 10), "test": base["test"]}
            note = "builtin:digits 5-9 with 5 train and 10 val images per class; its test split"
        print(f"writing task {name!r} to {folder}", flush=True)
        specs[name] = _write_task(folder, splits, note)
    return specs


# -------------------------------------------------------------------------------------------- spaces

def write_yaml(path: Path, raw: Mapping[str, Any]) -> str:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(raw), sort_keys=False))
    return str(path)


def make_spaces(args: argparse.Namespace, work: Path, backbones: Sequence[str]) -> Dict[str, str]:
    """The space files of methods 1-4 (autotl's is ``--space`` itself)."""
    import yaml

    from autotl.space import resolve_space_path

    raw = yaml.safe_load(resolve_space_path(args.space).read_text()) or {}
    random_space = {**raw, "sampler": {"name": "random"}, "pruner": {"name": "none"},
                    "description": f"copy of {args.space} with random sampling and no pruning"}
    common = {"epochs": args.epochs, "min_epochs": 1, "backbones": {"include": list(backbones)},
              "adapters": ["linear"], "sampler": {"name": "random"}, "pruner": {"name": "none"}}
    fixed = {"description": f"the {args.recipe} fine-tuning recipe, every knob fixed", **common,
             "params": fixed_recipe(args.recipe)}
    grid = {"description": "backbone x freeze depth x head_lr, for an exhaustive grid", **common,
            "params": {"freeze_depth": {"choices": list(GRID_FREEZE)}, "head_lr": {"choices": list(GRID_HEAD_LR)},
                       **GRID_FIXED}}
    d = work / "spaces"
    return {"autotl": args.space, "random": write_yaml(d / "random.yaml", random_space),
            "fixed": write_yaml(d / "fixed.yaml", fixed), "grid": write_yaml(d / "grid.yaml", grid)}


def fixed_recipe(name: str) -> Dict[str, Any]:
    """The fixed method's knobs: tllib's defaults, or autotl's default recipe where this autotl has one."""
    if name == "tllib":
        return dict(FIXED_RECIPE)
    try:
        from autotl.defaults import DEFAULT_RECIPE
    except ImportError:
        raise SystemExit("--recipe autotl: this autotl has no autotl.defaults.DEFAULT_RECIPE; use --recipe tllib")
    from autotl.space import CORE_PARAMS

    return {k: v for k, v in DEFAULT_RECIPE.items() if k in CORE_PARAMS}


# ----------------------------------------------------------------------------------- library support

def library_enqueues_defaults() -> bool:
    """Whether this autotl queues the default recipe itself (``autotl.defaults.enqueue_default_trials``)."""
    import importlib.util

    return importlib.util.find_spec("autotl.defaults") is not None


def default_recipe_params(space: str, backbones: Sequence[str], k: int) -> List[Dict[str, Any]]:
    """Workaround for ``default_trials``: autotl's default recipe (its knobs' documented defaults), put
    into the space's ranges (clipped, or the nearest choice), on the first ``k`` backbones."""
    from autotl.space import CORE_PARAMS, load_space_file

    file = load_space_file(space)
    recipe: Dict[str, Any] = {"adapter": file.adapters[0]}
    for spec in file.params:
        if spec.kind == "fixed" or spec.when:
            continue
        default = CORE_PARAMS[spec.name][1]
        if spec.kind == "categorical":
            if default in spec.choices:
                value = default
            else:
                numeric = [c for c in spec.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
                value = min(numeric, key=lambda c: abs(c - default)) if numeric and isinstance(default, (int, float)) \
                    else spec.choices[0]
        else:
            value = min(max(default, spec.low), spec.high)
        recipe[spec.optuna_name or spec.name] = value
    return [{"backbone": b, **recipe} for b in list(backbones)[:k]]


def search(data: str, out: Path, *, queue: Sequence[Mapping[str, Any]] = (), **options: Any) -> Any:
    """``autotl.search`` into a fresh run folder; with ``queue``, those params are the first trials.

    autotl has no option to enqueue given trials, so the study is created first in the run folder's
    journal (with the user attrs autotl sets on a new study) and the search resumes it.
    """
    import autotl

    if out.exists():
        shutil.rmtree(out)
    if queue:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        out.mkdir(parents=True)
        storage = JournalStorage(JournalFileBackend(str(out / "study.journal")))
        study = optuna.create_study(study_name="bench", storage=storage, direction="maximize")
        study.set_user_attr("autotl_version", autotl.__version__)
        study.set_user_attr("metric", "accuracy")
        for params in queue:
            study.enqueue_trial(dict(params))
        options["study"] = "bench"
    return autotl.search(data, out=str(out), report=False, **options)


def chosen(result: Any) -> Dict[str, Any]:
    s = result.summary
    best = s.get("best") or {}
    params = best.get("params") or {}
    return {"val": best.get("value"), "test": (best.get("test") or {}).get("accuracy"), "epochs": int(s["epochs_total"]),
            "trials": sum(s["trials"].values()), "backbone": best.get("backbone"),
            "freeze_depth": params.get("freeze_depth"), "head_lr": params.get("head_lr")}


# ------------------------------------------------------------------------------------------- methods

def run_autotl(ctx: Dict[str, Any], data: str, seed: int, out: Path) -> Dict[str, Any]:
    args, k = ctx["args"], ctx["args"].default_trials
    options = dict(ctx["common"], space=ctx["spaces"]["autotl"], trials=args.trials, seed=seed)
    if ctx["library_defaults"] or k == 0:
        r = chosen(search(data, out, default_trials=k, **options))
    else:  # workaround: enqueue the default recipe ourselves
        queue = default_recipe_params(ctx["spaces"]["autotl"], ctx["backbones"], k)
        r = chosen(search(data, out, queue=queue, default_trials=0, **options))
    return r


def run_random(ctx: Dict[str, Any], data: str, seed: int, out: Path) -> Dict[str, Any]:
    return chosen(search(data, out, space=ctx["spaces"]["random"], trials=ctx["args"].trials, seed=seed,
                         default_trials=0, **ctx["common"]))


def run_fixed(ctx: Dict[str, Any], data: str, seed: int, out: Path) -> Dict[str, Any]:
    runs = []
    for i, b in enumerate(ctx["backbones"]):
        opts = dict(ctx["common"], backbones=[b])
        runs.append(chosen(search(data, out / f"backbone{i}", space=ctx["spaces"]["fixed"], trials=1, seed=seed,
                                  default_trials=0, **opts)))
    done = [r for r in runs if r["val"] is not None]
    best = max(done, key=lambda r: r["val"]) if done else runs[0]  # max keeps the first of equal values
    return {**best, "epochs": sum(r["epochs"] for r in runs), "trials": sum(r["trials"] for r in runs)}


def run_grid(ctx: Dict[str, Any], data: str, seed: int, out: Path) -> Dict[str, Any]:
    queue = [{"backbone": b, "adapter": "linear", "freeze_depth": f, "head_lr": lr}
             for b, f, lr in itertools.product(ctx["backbones"], GRID_FREEZE, GRID_HEAD_LR)]
    return chosen(search(data, out, queue=queue, space=ctx["spaces"]["grid"], trials=len(queue), seed=seed,
                         default_trials=0, **ctx["common"]))


def run_optuna(ctx: Dict[str, Any], data: str, seed: int, out: Path) -> Dict[str, Any]:
    """The hand-written alternative: plain Optuna around autotl's model builder and trainer."""
    import optuna
    import torch

    import autotl
    from autotl.data import load_dataset
    from autotl.model import build_model
    from autotl.space import TrialParams
    from autotl.tensors import to_tensors
    from autotl.trainer import evaluate, fit, resolve_device

    args = ctx["args"]
    plugins = autotl.get_plugin_manager(zoo_dir=args.zoo)
    dataset = load_dataset(data, plugins, seed=seed)
    adapter = plugins.adapters.get("linear")
    device = resolve_device(args.device)
    cache: Dict[Any, Any] = {}

    def tensors(split: str, cfg: Mapping[str, Any]) -> Any:
        key = (split, json.dumps(cfg, sort_keys=True, default=str))
        if key not in cache:
            s = getattr(dataset, split)
            cache[key] = to_tensors(s.images, s.labels, cfg)
        return cache[key]

    best: Dict[str, Any] = {"value": None}
    spent = {"epochs": 0}

    def objective(trial: optuna.Trial) -> float:
        backbone = trial.suggest_categorical("backbone", list(ctx["backbones"]))
        params = TrialParams(
            backbone=backbone, adapter="linear",
            freeze_depth=trial.suggest_categorical("freeze_depth", [0.0, 0.5, 1.0]),
            head_lr=trial.suggest_float("head_lr", 3e-4, 1e-2, log=True), backbone_lr="multiplier",
            backbone_lr_mult=trial.suggest_float("backbone_lr_mult", 0.03, 1.0, log=True), layer_decay=None,
            weight_decay=0.01, batch_size=trial.suggest_categorical("batch_size", [8, 16]), warmup_epochs=0,
            label_smoothing=0.0)
        torch.manual_seed(seed + trial.number)
        model = build_model(plugins.sources.get(backbone), adapter, len(dataset.classes), {})
        result = fit(model, tensors("train", model.data_config), tensors("val", model.data_config), params,
                     epochs=args.epochs, metric="accuracy", device=device, seed=seed + trial.number, reporter=trial)
        spent["epochs"] += result.epochs_run
        if result.pruned:
            raise optuna.TrialPruned()
        if best["value"] is None or result.best_value > best["value"]:
            best.update(value=result.best_value, state=result.state_dict, backbone=backbone,
                        freeze_depth=params.freeze_depth, head_lr=params.head_lr)
        return result.best_value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=args.epochs,
                                                                      reduction_factor=3))
    study.optimize(objective, n_trials=args.trials)
    test = None
    if best["value"] is not None and dataset.test is not None:
        model = build_model(plugins.sources.get(best["backbone"]), adapter, len(dataset.classes), {})
        model.module.load_state_dict(best["state"])
        test = evaluate(model.module, tensors("test", model.data_config), device)["accuracy"]
    return {"val": best["value"], "test": test, "epochs": spent["epochs"], "trials": len(study.trials),
            "backbone": best.get("backbone"), "freeze_depth": best.get("freeze_depth"), "head_lr": best.get("head_lr")}


RUNNERS = {"autotl": run_autotl, "random": run_random, "fixed": run_fixed, "grid": run_grid, "optuna": run_optuna}


# ------------------------------------------------------------------------------------------- report

def fmt(x: Any, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def summarize(results: List[Dict[str, Any]], args: argparse.Namespace) -> List[str]:
    rows, detail = [], []
    for task in args.task_list:
        mine = [r for r in results if r["task"] == task]
        tests = [r["test"] for r in mine if r["test"] is not None]
        best_known = max(tests) if tests else None
        for method in args.method_list:
            runs = [r for r in mine if r["method"] == method]
            if not runs:
                continue
            t = [r["test"] for r in runs if r["test"] is not None]
            mean = statistics.mean(t) if t else None
            regret = best_known - mean if None not in (best_known, mean) else None
            rows.append([task, method, fmt(statistics.mean(r["trials"] for r in runs), ".0f"),
                         f"{fmt(mean)} ({', '.join(fmt(x) for x in t)})", fmt(statistics.mean(r["epochs"] for r in runs), ".0f"),
                         fmt(regret), fmt(statistics.mean(r["seconds"] for r in runs), ".0f")])
            for r in runs:
                lr = fmt(r["head_lr"], ".2g") if r["head_lr"] is not None else "—"
                detail.append([task, r["seed"], method, fmt(r["val"]), fmt(r["test"]), r["epochs"],
                               f"{r['backbone']} @ {r['freeze_depth']}, lr {lr}"])
    summary = _common.md_table(["task", "method", "trials", "test acc: mean (per seed)", "epochs", "regret",
                                "wall s"], rows)
    details = _common.md_table(["task", "seed", "method", "val acc", "test acc", "epochs",
                                "chosen: backbone @ freeze, head lr"], detail)
    return [summary, details]


def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    backbones = _common.ensure_digits_zoo(args.zoo, [a.strip() for a in args.archs.split(",") if a.strip()],
                                          epochs=args.pretrain_epochs, device=args.device)
    specs = build_tasks(work, args.task_list)
    _common.warm_up(specs[args.task_list[0]], args.zoo)
    library_defaults = library_enqueues_defaults()
    common: Dict[str, Any] = {"backbones": backbones, "zoo": args.zoo, "epochs": args.epochs, "device": args.device}
    if args.no_feature_cache:
        common["feature_cache"] = False
    ctx = {"args": args, "backbones": backbones, "spaces": make_spaces(args, work, backbones), "common": common,
           "library_defaults": library_defaults}
    print(f"search quality: tasks {args.task_list}, methods {args.method_list}, seeds {args.seed_list}, "
          f"{args.trials} trials x {args.epochs} epochs; default trials: "
          f"{'autotl' if library_defaults else 'enqueued by this script (autotl ignores default_trials)'}",
          flush=True)
    results: List[Dict[str, Any]] = []
    started = time.perf_counter()
    for task in args.task_list:
        for seed in args.seed_list:
            for method in args.method_list:
                t0 = time.perf_counter()
                r = RUNNERS[method](ctx, specs[task], seed, work / "runs" / f"{task}-seed{seed}-{method}")
                r.update(task=task, seed=seed, method=method, seconds=time.perf_counter() - t0)
                results.append(r)
                (work / "results.json").write_text(json.dumps(results, indent=2))
                print(f"{task} seed {seed} {method:7s}: val {fmt(r['val'])} test {fmt(r['test'])} "
                      f"epochs {r['epochs']} ({r['trials']} trials, {r['backbone']} @ {r['freeze_depth']}) "
                      f"{r['seconds']:.0f} s [total {time.perf_counter() - started:.0f} s]", flush=True)
    tables = summarize(results, args)
    notes = [f"Tasks {', '.join(args.task_list)}; seeds {args.seeds}; {args.trials} trials (autotl, random, optuna), "
             f"one per backbone (fixed), {len(backbones) * len(GRID_FREEZE) * len(GRID_HEAD_LR)} (grid); up to "
             f"{args.epochs} epochs per trial; space `{args.space}`; backbones {', '.join(backbones)}; "
             f"device {args.device}; fixed recipe: {args.recipe}; default_trials={args.default_trials} "
             f"({'autotl' if library_defaults else 'enqueued by the script: autotl ignored the option'}). "
             "Test accuracy of the model each method chose by val; regret = the best test accuracy any method "
             "reached on the task minus the method's mean. Total wall: "
             f"{time.perf_counter() - started:.0f} s."]
    print()
    print(notes[0])
    for table in tables:
        print()
        print(table)
    if args.append:
        _common.append_results(HEADING, _common.result_block(
            f"{len(args.method_list)} methods on {', '.join(args.task_list)}", args.device, tables, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
