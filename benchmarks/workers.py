"""Workers: trials per hour of one search with 1 and with 2 worker processes, one thread each.

The same search (the offline digits demo's sources on ``builtin:digits``, a fixed recipe with
pruning off so every trial costs the same, the feature cache off so trials do real work) runs
first in one process with one torch thread, then as ``--workers 2`` (each worker gets
cpus // workers = 1 thread on a 2-core machine), side by side in one invocation. Wall time covers
the whole search, worker start-up included. Goal: 2 workers >= 1.8x the trials per hour of 1.

Command:

    .venv/bin/python benchmarks/workers.py --append
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import List

import _common

HEADING = "Workers (`benchmarks/workers.py`)"
SPACE = """epochs: {epochs}
pruner: none
sampler: random
params:
  freeze_depth: {{choices: [0.0, 0.5]}}
  head_lr: {{low: 1.0e-3, high: 1.0e-2, log: true}}
  batch_size: 16
  warmup_epochs: 0
"""


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    p.add_argument("--zoo", default=None)
    p.add_argument("--append", action="store_true")
    return p.parse_args(argv)


def main(argv: List[str] | None = None) -> None:
    args = parse_args(argv)
    _common.set_threads(1)
    import autotl

    zoo = args.zoo or _common.default_zoo()
    sources = _common.ensure_digits_zoo(zoo)
    rows, rates = [], {}
    with tempfile.TemporaryDirectory() as work:
        space = Path(work) / "space.yaml"
        space.write_text(SPACE.format(epochs=args.epochs))
        for n in [int(w) for w in args.workers.split(",")]:
            start = time.perf_counter()
            result = autotl.search("builtin:digits", space=str(space), backbones=",".join(sources), zoo=zoo,
                                   trials=args.trials, workers=n, device="cpu", out=str(Path(work) / f"w{n}"),
                                   report=False, default_trials=0, feature_cache=False, seed=0)
            wall = time.perf_counter() - start
            done = sum(result.summary["trials"].values())
            rates[n] = done / wall * 3600
            rows.append([n, done, f"{wall:.1f}", f"{rates[n]:.0f}", f"{rates[n] / rates[min(rates)]:.2f}"])
            print(rows[-1], flush=True)
    table = _common.md_table(["workers", "trials", "wall s", "trials per hour", "ratio to 1 worker"], rows)
    print(table)
    if args.append:
        notes = [f"`builtin:digits`, sources {', '.join(sources)}, {args.trials} trials of {args.epochs} epochs, "
                 "random sampler, no pruning, feature cache off, one torch thread per worker; wall time includes "
                 "starting the workers. Goal: 2 workers >= 1.8x."]
        _common.append_results(HEADING, _common.result_block("trials per hour, 1 vs 2 workers", "cpu", [table], notes))


if __name__ == "__main__":
    main()
