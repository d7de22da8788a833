"""Pruning: the same autotl search with the space's Hyperband pruner and with pruning off.

For each seed, two searches that differ only in the pruner: the space as it is (``quick``:
Hyperband, reduction factor 3) and a temporary copy of it with ``pruner: {name: none}``. Same seed,
space, trial count, epochs and data: the offline digits setup of ``make demo`` (tiny timm sources
pretrained on ``builtin:digits-source`` into the zoo, searched on ``builtin:digits``). The table
gives the epochs each trained (``summary.json`` ``epochs_total``), the best validation accuracy,
the test accuracy of that best trial, and the epochs saved by pruning. Goal: >= 50 % fewer epochs,
the same best within noise (one validation image is 1/75 = 0.013 on builtin:digits).

Command (about 1.5 minutes per seed on 2 CPU cores, see benchmarks/README.md):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/pruning.py --seeds 0,1 --threads 1 --append

Source models missing from ``--zoo`` (default: ``$AUTOTL_ZOO`` or ``~/.cache/autotl/zoo``, as
``make demo``) are pretrained first; the ones there are reused. Run folders go to ``--work``.
Without ``--append`` the tables are only printed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import _common

HEADING = "Pruning (`benchmarks/pruning.py`)"


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds, one search pair each (default 0,1)")
    p.add_argument("--trials", type=int, default=20, help="trials per search (default 20, as make demo)")
    p.add_argument("--epochs", type=int, default=8, help="max epochs per trial (default 8, as make demo)")
    p.add_argument("--space", default="quick", help="the space to copy (default quick)")
    p.add_argument("--data", default="builtin:digits", help="target data (default builtin:digits)")
    p.add_argument("--zoo", default=_common.default_zoo(), help="zoo folder (default $AUTOTL_ZOO or ~/.cache/autotl/zoo)")
    p.add_argument("--archs", default=",".join(_common.DEMO_ARCHS),
                   help="timm architectures pretrained into the zoo as digits-<arch> (default: the demo's three)")
    p.add_argument("--pretrain-epochs", type=int, default=6, help="epochs for missing zoo models (default 6)")
    p.add_argument("--work", default="runs/benchmarks/pruning", help="folder for the run folders")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (sets OMP_NUM_THREADS too)")
    p.add_argument("--default-trials", type=int, default=None,
                   help="pass default_trials=K to both searches (default: the library's default)")
    p.add_argument("--no-feature-cache", action="store_true", help="pass feature_cache=False to both searches")
    p.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    args.seed_list = _common.parse_ints(args.seeds)
    if not args.seed_list or args.trials < 1 or args.epochs < 1:
        p.error("need at least one seed, --trials >= 1 and --epochs >= 1")
    return args


def unpruned_space(space: str, work: Path) -> Path:
    """A copy of the space file with ``pruner: {name: none}``."""
    import yaml

    from autotl.space import resolve_space_path

    raw = yaml.safe_load(resolve_space_path(space).read_text()) or {}
    pruner = raw.get("pruner") or {"name": "hyperband"}
    if (pruner if isinstance(pruner, str) else pruner.get("name")) == "none":
        print(f"warning: space {space!r} already has pruning off; both searches will be the same", file=sys.stderr)
    raw["pruner"] = {"name": "none"}
    raw["description"] = f"{raw.get('description', '')} (copy of {space} with pruning off, benchmarks/pruning.py)".strip()
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{Path(space).stem}-nopruning.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_one(args: argparse.Namespace, space: str, backbones: List[str], seed: int, out: Path) -> Dict[str, Any]:
    import autotl

    if out.exists():
        shutil.rmtree(out)  # a fresh study every time; an old journal would be resumed
    extra: Dict[str, Any] = {}
    if args.default_trials is not None:
        extra["default_trials"] = args.default_trials
    if args.no_feature_cache:
        extra["feature_cache"] = False
    start = time.perf_counter()
    result = autotl.search(args.data, space=space, backbones=backbones, zoo=args.zoo, trials=args.trials,
                           epochs=args.epochs, seed=seed, device=args.device, out=str(out), report=False, **extra)
    wall = time.perf_counter() - start
    s = result.summary
    best = s.get("best") or {}
    test = (best.get("test") or {}).get("accuracy")
    return {"seed": seed, "epochs": int(s["epochs_total"]), "trials": dict(s["trials"]),
            "best_val": best.get("value"), "test": test, "backbone": best.get("backbone"),
            "freeze_depth": (best.get("params") or {}).get("freeze_depth"), "wall_s": wall,
            "val_images": s["dataset"]["images"]["val"]}


def fmt(x: Any, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    work = Path(args.work)
    backbones = _common.ensure_digits_zoo(args.zoo, [a.strip() for a in args.archs.split(",") if a.strip()],
                                          epochs=args.pretrain_epochs, device=args.device)
    off_space = str(unpruned_space(args.space, work))
    _common.warm_up(args.data, args.zoo)
    variants = {"hyperband": args.space, "none": off_space}
    runs: Dict[str, List[Dict[str, Any]]] = {"hyperband": [], "none": []}
    for i, seed in enumerate(args.seed_list):
        order = ("hyperband", "none") if i % 2 == 0 else ("none", "hyperband")  # alternate: fair to drift
        for name in order:
            print(f"seed {seed}: search with pruner {name} ({args.trials} trials, <= {args.epochs} epochs each)",
                  flush=True)
            r = run_one(args, variants[name], backbones, seed, work / f"seed{seed}-{name}")
            runs[name].append(r)
            print(f"  epochs {r['epochs']}, trials {r['trials']}, best val {fmt(r['best_val'])}, "
                  f"test {fmt(r['test'])} ({r['backbone']}), {r['wall_s']:.0f} s", flush=True)
    (work / "results.json").write_text(json.dumps(runs, indent=2))

    full = args.trials * args.epochs
    detail_rows = []
    for name in ("hyperband", "none"):
        for r in runs[name]:
            t = r["trials"]
            detail_rows.append([r["seed"], name, f"{t.get('complete', 0)}/{t.get('pruned', 0)}/{t.get('fail', 0)}",
                                f"{r['epochs']} / {full}", fmt(r["best_val"]), fmt(r["test"]),
                                f"{r['backbone']} @ {r['freeze_depth']}", f"{r['wall_s']:.0f}"])
    detail = _common.md_table(["seed", "pruner", "trials complete/pruned/fail", "epochs trained / max",
                               "best val acc", "its test acc", "best backbone @ freeze", "wall s"], detail_rows)
    pair_rows = []
    savings, dvals, dtests = [], [], []
    for hb, off in zip(runs["hyperband"], runs["none"]):
        saving = 1 - hb["epochs"] / off["epochs"] if off["epochs"] else float("nan")
        dval = hb["best_val"] - off["best_val"] if None not in (hb["best_val"], off["best_val"]) else None
        dtest = hb["test"] - off["test"] if None not in (hb["test"], off["test"]) else None
        savings.append(saving)
        if dval is not None:
            dvals.append(dval)
        if dtest is not None:
            dtests.append(dtest)
        pair_rows.append([hb["seed"], hb["epochs"], off["epochs"], f"{saving:.0%}", fmt(dval, "+.3f"),
                          fmt(dtest, "+.3f"), f"{hb['wall_s'] / off['wall_s']:.2f}"])
    if len(pair_rows) > 1:
        pair_rows.append(["mean", f"{statistics.mean(r['epochs'] for r in runs['hyperband']):.1f}",
                          f"{statistics.mean(r['epochs'] for r in runs['none']):.1f}",
                          f"{statistics.mean(savings):.0%}", fmt(statistics.mean(dvals) if dvals else None, "+.3f"),
                          fmt(statistics.mean(dtests) if dtests else None, "+.3f"),
                          f"{sum(r['wall_s'] for r in runs['hyperband']) / sum(r['wall_s'] for r in runs['none']):.2f}"])
    pairs = _common.md_table(["seed", "epochs, Hyperband", "epochs, no pruning", "epochs saved",
                              "Δ best val (HB − none)", "Δ its test (HB − none)", "wall ratio HB/none"], pair_rows)
    val_n = runs["hyperband"][0]["val_images"]
    notes = [f"`{args.data}`, space `{args.space}` (Hyperband) and its copy with `pruner: {{name: none}}`, "
             f"{args.trials} trials of up to {args.epochs} epochs, backbones {', '.join(backbones)}, "
             f"device {args.device}, seeds {args.seeds}. Goal: >= 50 % fewer epochs with the same best within "
             f"noise (one validation image = {1 / val_n:.3f} of val accuracy here)."]
    print()
    print(notes[0])
    print(pairs)
    print()
    print(detail)
    if args.append:
        _common.append_results(HEADING, _common.result_block(
            f"Hyperband vs no pruning, {args.data}, seeds {args.seeds}", args.device, [pairs, detail], notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
