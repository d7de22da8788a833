"""Transferability: do the scores predict fine-tuned accuracy, what do they cost, and do the ranking
prior and warm starts lower the regret of a small search?

On the search-quality tasks (``digits-fewshot``, ``shift-fewshot``, ``digits-4shot``; see ``tasks.py``) and five sources (the
three tiny timm models pretrained on digits 0-4 with ``autotl pretrain``, and two random-init ones):

1. ``autotl rank`` scores every source (LogME, k-NN, H-score, combined), and each source is
   fine-tuned once with the default recipe; the table gives Kendall's tau between each score and the
   fine-tuned test accuracy, per task;
2. the cost of ranking a source (its forward pass and the three scores) against one fine-tuning epoch;
3. the test accuracy and regret of a 6-trial search: plain TPE (no ranking, no default trials, no
   warm start), with the ranking prior (the default recipe first on the best-ranked sources), and with
   the ranking prior plus a warm start from a 20-trial search of another task.

Command:

    .venv/bin/python benchmarks/transferability.py --threads 2 --append
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Dict, List

import _common

HEADING = "Transferability (`benchmarks/transferability.py`)"
RANDOM_SOURCES = ("timm/test_resnet", "timm/test_vit")
WARM_FROM = {"digits-fewshot": "digits-4shot", "shift-fewshot": "digits-fewshot", "digits-4shot": "digits-fewshot"}
FIXED = """epochs: {epochs}
pruner: none
params:
  strategy: lp_ft
  lp_fraction: 0.2
  freeze_depth: 0.0
  head_lr: 2.0e-3
  backbone_lr_mult: 0.1
  weight_decay: 0.05
  batch_size: 16
  warmup_epochs: 0
  label_smoothing: 0.1
"""


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(WARM_FROM))
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--small-budget", type=int, default=6, help="trials of the small searches (default 6)")
    p.add_argument("--work", default="runs/benchmarks/transferability")
    p.add_argument("--zoo", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--append", action="store_true")
    return p.parse_args(argv)


def main(argv: List[str] | None = None) -> None:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    import autotl
    from autotl.api import rank
    from autotl.scores import kendall_tau
    from tasks import TASKS

    work = Path(args.work)
    zoo = args.zoo or _common.default_zoo()
    sources = list(_common.ensure_digits_zoo(zoo)) + list(RANDOM_SOURCES)
    every = {name: TASKS[name](work) for name in WARM_FROM}  # a warm start may come from a task not measured here
    tasks = {t: every[t] for t in args.tasks.split(",") if t}
    seeds = [int(s) for s in args.seeds.split(",")]
    space = work / "fixed.yaml"
    space.write_text(FIXED.format(epochs=args.epochs))
    tau_rows, cost_rows, regret_rows = [], [], []
    for task, data in tasks.items():
        ranking, _ = rank(data, backbones=",".join(sources), out=str(work / task / "rank"), device="cpu",
                                     zoo=zoo)
        tuned: Dict[str, float] = {}
        epoch_s: List[float] = []
        for name in sources:
            r = autotl.search(data, space=str(space), backbones=name, trials=1, device="cpu", zoo=zoo, report=False,
                              out=str(work / task / "tuned" / name.replace("/", "_")), default_trials=0, rank=False,
                              warm_start="off")
            tuned[name] = (r.summary["best"]["test"] or {}).get("accuracy") if r.summary["best"] else 0.0
            epoch_s.append(r.trials[0].seconds / max(1, r.trials[0].epochs_run))
        names = [n for n in ranking.order]
        truth = [tuned[n] for n in names]
        row = [task]
        for score in ("logme", "knn", "hscore"):
            row.append(f"{kendall_tau([ranking.scores[n][score] for n in names], truth):+.2f}")
        row.append(f"{kendall_tau([-i for i in range(len(names))], truth):+.2f}")
        row.append(", ".join(f"{n.split('/')[-1]} {tuned[n]:.2f}" for n in sorted(tuned, key=tuned.get, reverse=True)))
        tau_rows.append(row)
        rank_s = statistics.mean(sum(ranking.seconds[n].values()) for n in names)
        cost_rows.append([task, f"{rank_s:.2f}", f"{statistics.mean(epoch_s):.2f}",
                          f"{rank_s / statistics.mean(epoch_s):.2f}"])
        results: Dict[str, List[float]] = {"plain": [], "prior": [], "prior + warm start": []}
        for seed in seeds:
            common = dict(space="quick", backbones=",".join(sources), trials=args.small_budget, epochs=args.epochs,
                          device="cpu", zoo=zoo, report=False, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                os.environ["AUTOTL_HISTORY"] = str(Path(tmp) / "history.jsonl")
                plain = autotl.search(data, out=str(work / task / f"plain-{seed}"), rank=False, default_trials=0,
                                      warm_start="off", **common)
                prior = autotl.search(data, out=str(work / task / f"prior-{seed}"), warm_start="off", **common)
                autotl.search(every[WARM_FROM[task]],
                              out=str(work / task / f"history-{seed}"), space="quick", backbones=",".join(sources),
                              trials=20, epochs=args.epochs, device="cpu", zoo=zoo, report=False, seed=seed + 100)
                warm = autotl.search(data, out=str(work / task / f"warm-{seed}"), warm_start="auto", **common)
            for key, r in (("plain", plain), ("prior", prior), ("prior + warm start", warm)):
                results[key].append((r.summary["best"]["test"] or {}).get("accuracy") if r.summary["best"] else 0.0)
        best = max(max(v) for v in results.values())
        best = max(best, max(tuned.values()))
        for key, values in results.items():
            regret_rows.append([task, key, args.small_budget, f"{statistics.mean(values):.3f}",
                                " ".join(f"{v:.3f}" for v in values), f"{best - statistics.mean(values):.3f}"])
        print(tau_rows[-1], cost_rows[-1], regret_rows[-3:], flush=True)
    tables = [
        _common.md_table(["task", "tau LogME", "tau k-NN", "tau H-score", "tau combined", "fine-tuned test acc"],
                         tau_rows),
        _common.md_table(["task", "ranking s per source", "one fine-tuning epoch s", "ratio"], cost_rows),
        _common.md_table(["task", "search", "trials", "test acc (mean)", "per seed", "regret"], regret_rows),
    ]
    for t in tables:
        print(t)
    if args.append:
        notes = [f"Sources: {', '.join(sources)} (the last two random-init). Fine-tuned accuracy: one run of a fixed "
                 f"LP-FT recipe, {args.epochs} epochs, per source. Kendall's tau over the five sources, between "
                 "each score and that accuracy. Small searches: space quick, seeds " + args.seeds + "; the warm "
                 "start comes from a 20-trial search of " + ", ".join(f"{k}<-{v}" for k, v in WARM_FROM.items())
                 + "; regret = the best test accuracy seen on the task in this run minus the mean."]
        _common.append_results(HEADING, _common.result_block("scores vs fine-tuned accuracy, cost, small-budget "
                                                             "regret", "cpu", tables, notes))


if __name__ == "__main__":
    main()
