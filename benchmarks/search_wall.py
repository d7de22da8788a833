"""Search wall time on small sets: this tree against an earlier commit, side by side.

Issue 12 moved images from memory to a decode-once data path; small sets must not get slower. This
runs the same ``autotl search`` command with this working tree and with ``--baseline REF`` (checked
out into a temporary ``git worktree``, imported through ``PYTHONPATH``, with its own first-party
plugins), one after the other, alternating which goes first, for every seed and task. Each run has
its own empty ``AUTOTL_HISTORY`` and the same zoo (``--zoo``, built if missing, like ``make
demo``). The table gives each arm's wall seconds (mean +- sd over seeds), the summed trial seconds
from the run's ``trials.csv``, the paired ratio this / baseline of the wall times, and the best
trial's test accuracy (a check that the new code searches as well, not only as fast).

Tasks: ``demo`` (``make demo``'s search: ``builtin:digits``, space quick, the digits zoo) and the
benchmark tasks of ``benchmarks/tasks.py`` (``digits-fewshot``, ``shift-fewshot``), searched with the
default space over the zoo.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_wall.py --baseline 2718202 --threads 1 --append

Without ``--append`` the table is only printed.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import _common
import tasks as bench_tasks

HEADING = "Search wall time on small sets (`benchmarks/search_wall.py`)"
ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="the git commit to compare with")
    p.add_argument("--tasks", default="demo,digits-fewshot,shift-fewshot")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--zoo", default=_common.default_zoo())
    p.add_argument("--work", default=str(ROOT / "runs" / "benchmarks" / "search_wall"))
    p.add_argument("--append", action="store_true")
    return p.parse_args(argv)


def task_command(task: str, work: Path, args: argparse.Namespace) -> List[str]:
    if task == "demo":
        return ["builtin:digits", "--space", "quick", "--backbones", "zoo/digits-*"]
    build = {"digits-fewshot": bench_tasks.digits_fewshot, "shift-fewshot": bench_tasks.shifted_fewshot}[task]
    return [build(work / "data"), "--space", "default", "--backbones", "zoo/digits-*"]


def run_arm(python_path: Optional[str], data_args: List[str], out: Path, seed: int, args: argparse.Namespace) -> Dict:
    env = {**os.environ, "AUTOTL_HISTORY": str(out / "history.jsonl"), "AUTOTL_ZOO": args.zoo}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    if python_path:
        env["PYTHONPATH"] = python_path
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "autotl", "search", *data_args, "--zoo", args.zoo, "--trials", str(args.trials),
           "--epochs", str(args.epochs), "--seed", str(seed), "--device", "cpu", "--out", str(out / "run"),
           "--study", f"wall-{seed}", "--quiet", "--no-report"]
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=str(out), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    with open(out / "run" / "trials.csv") as fh:
        trial_s = sum(float(r["seconds"] or 0) for r in csv.DictReader(fh))
    best = json.loads((out / "run" / "summary.json").read_text()).get("best") or {}
    test = (best.get("test") or {}).get("accuracy")
    return {"wall": wall, "trial_s": trial_s, "val": best.get("value"), "test": test}


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    _common.ensure_digits_zoo(args.zoo)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="autotl-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.baseline],
                   check=True, capture_output=True)
    try:
        arms = {"this tree": None, f"baseline {args.baseline}": f"{base}:{base / 'plugins'}"}
        rows = []
        for task in args.tasks.split(","):
            data_args = task_command(task, work, args)
            results: Dict[str, List[Dict]] = {name: [] for name in arms}
            for i, seed in enumerate(_common.parse_ints(args.seeds)):
                order = list(arms) if i % 2 == 0 else list(reversed(arms))
                for name in order:
                    results[name].append(run_arm(arms[name], data_args, work / task / name.split()[0] / str(seed),
                                                 seed, args))
                    print(f"{task} seed {seed} {name}: {results[name][-1]['wall']:.1f} s", flush=True)
            names = list(arms)
            ratios = [a["wall"] / b["wall"] for a, b in zip(results[names[0]], results[names[1]])]
            for name in names:
                walls = [r["wall"] for r in results[name]]
                trial_s = [r["trial_s"] for r in results[name]]
                tests = [r["test"] for r in results[name] if r["test"] is not None]
                rows.append([task, name, f"{statistics.mean(walls):.1f} ± {statistics.pstdev(walls):.1f}",
                             f"{statistics.mean(trial_s):.1f}",
                             f"{statistics.mean(ratios):.2f} ± {statistics.pstdev(ratios):.2f}" if name == names[0] else "",
                             f"{statistics.mean(tests):.3f} ± {statistics.pstdev(tests):.3f}" if tests else "–"])
        table = _common.md_table(["task", "arm", "wall s (mean ± sd)", "Σ trial s", "wall ratio this / baseline",
                                  "best trial's test accuracy"], rows)
        print(table)
        if args.append:
            notes = [f"{args.trials} trials of up to {args.epochs} epochs per search, seeds {args.seeds}, CPU; "
                     "goal: wall ratio <= 1.0 (no worse than the baseline) on every task."]
            _common.append_results(HEADING, _common.result_block(HEADING, "cpu", [table], notes))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)


if __name__ == "__main__":
    main()
