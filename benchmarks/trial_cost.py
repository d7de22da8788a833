"""Trial cost: autotl's fixed cost per trial against a hand-written Optuna script over the same trials.

A search of many short trials is dominated by what happens around training: the storage writes, the
sampler, the garbage collection, the heartbeat, the progress and plugin calls, the ``best/`` writes.
This script measures that cost on a tiny task, where it shows most, side by side in one process:

- ``autotl``: ``autotl.search`` with the space's defaults (``--space quick`` on ``builtin:digits``,
  ``timm/test_resnet``, 1 epoch, the default recipe trials, the default journal file, the soup's kept
  models), no report and no warm start. The search loop is timed with a ``Progress`` observer
  (``search_started`` to ``search_finished``: every trial, nothing before or after).
- ``optuna-journal`` (and ``optuna-memory``): a hand-written ``study.optimize(objective, n_trials=N)``
  with ``TPESampler(seed, n_startup_trials=5)`` and the same Hyperband pruner, on a ``JournalStorage``
  file as autotl's default (or Optuna's in-memory storage, the cheapest a script can have). Its
  objective does the same per-trial work with autotl's own building blocks, so the training is
  identical and only the orchestration differs: sample the same knobs (``space.suggest``), build the
  network (``build_model``), take the same tensors, train with ``autotl.trainer.fit`` reporting each
  epoch to the trial, and save the weights of a new best with ``safetensors``.

For each side: fixed cost per trial = (search-loop wall - sum of trial seconds) / trials, where a
trial's seconds are its objective's span (autotl: the ``seconds`` it stores; the script: timed the
same way around its objective). A second column takes only the training (time inside
``autotl.trainer.fit``, wrapped on both sides) as trial time, so bookkeeping moved into the trial
does not hide. Mean +- sd over seeds, and the ratio autotl / script. Goal: autotl <= 50 ms per trial.

Command:

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trial_cost.py --threads 1 --append
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import _common

HEADING = "Trial cost (`benchmarks/trial_cost.py`)"
GOAL_MS = 50.0
SIDES = ("autotl", "optuna-journal", "optuna-memory")


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="builtin:digits", help="dataset (default builtin:digits)")
    p.add_argument("--backbone", default="timm/test_resnet", help="source model (default timm/test_resnet)")
    p.add_argument("--space", default="quick", help="search space (default quick)")
    p.add_argument("--trials", type=int, default=40, help="trials per search (default 40)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per trial (default 1)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--sides", default=",".join(SIDES), help=f"which to run (default {','.join(SIDES)})")
    p.add_argument("--threads", type=int, default=None, help="torch threads (sets OMP_NUM_THREADS too)")
    p.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    args.seeds = _common.parse_ints(args.seeds)
    args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    if unknown := sorted(set(args.sides) - set(SIDES)):
        p.error(f"unknown side(s) {', '.join(unknown)}; choose from {', '.join(SIDES)}")
    if min(args.trials, args.epochs, len(args.seeds) or 0) < 1:
        p.error("--trials, --epochs and --seeds need at least 1")
    return args


class FitClock:
    """Wraps ``autotl.trainer.fit`` (both sides call it through the module) and sums its seconds."""

    def __init__(self) -> None:
        import autotl.trainer

        self.module, self.real, self.seconds = autotl.trainer, autotl.trainer.fit, 0.0

    def __enter__(self) -> "FitClock":
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return self.real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        self.module.fit = timed
        return self

    def __exit__(self, *exc: Any) -> None:
        self.module.fit = self.real


def run_autotl(args: argparse.Namespace, seed: int, work: Path) -> Dict[str, float]:
    import autotl
    from autotl.progress import Progress

    class LoopClock(Progress):
        def search_started(self, total: Any, timeout: Any) -> None:
            self.started = time.perf_counter()

        def search_finished(self) -> None:
            self.finished = time.perf_counter()

    clock = LoopClock()
    with FitClock() as fit:
        result = autotl.search(args.data, backbones=args.backbone, space=args.space, epochs=args.epochs,
                               trials=args.trials, device="cpu", seed=seed, out=str(work / f"autotl-{seed}"),
                               report=False, warm_start="off", progress=clock)
    trials = [t for t in result.trials]
    return {"trials": len(trials), "loop": clock.finished - clock.started, "trial_s": sum(t.seconds for t in trials),
            "fit_s": fit.seconds, "complete": sum(t.state == "complete" for t in trials)}


def run_script(args: argparse.Namespace, seed: int, work: Path, storage_kind: str) -> Dict[str, float]:
    """The hand-written search: Optuna's optimize over an objective built from autotl's parts."""
    import optuna
    import torch
    from safetensors.torch import save_file

    from autotl.config import RunConfig
    from autotl.driver import prepare
    from autotl.model import build_model
    from autotl.selection import Selection
    from autotl.tensors import Augmentation

    # The same plugins, space, data, tensors and feature cache a search builds (its study is not used).
    ctx = prepare(RunConfig.from_options(args.data, backbones=args.backbone, space=args.space, epochs=args.epochs,
                                         trials=args.trials, device="cpu", seed=seed, report=False, warm_start="off",
                                         out=str(work / f"ctx-{storage_kind}-{seed}")), create=False)
    outputs = ctx.task.num_outputs(ctx.dataset.classes)
    selection = Selection.from_section(ctx.space.file.selection)
    best_file = work / f"script-{storage_kind}-{seed}.safetensors"
    spans: List[float] = []
    best = {"value": None}

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        try:
            params = ctx.space.suggest(trial)
            torch.manual_seed(seed + trial.number)
            model = build_model(ctx.plugins.sources.get(params.backbone), ctx.plugins.adapters.get(params.adapter),
                                outputs, params.adapter_params)
            train = ctx.tensors.train(ctx.dataset.train, model.data_config, Augmentation.from_params(params))
            val = ctx.tensors.get(ctx.dataset.val, model.data_config)
            import autotl.trainer

            result = autotl.trainer.fit(model, train, val, params, epochs=ctx.space.epochs, metric=ctx.metric,
                                        task=ctx.task, labels=list(ctx.dataset.classes), device=ctx.device,
                                        seed=seed + trial.number, reporter=trial, feature_cache=ctx.features,
                                        selection=selection)
            for split in (train, val):
                if hasattr(split, "close"):
                    split.close()
            if result.pruned:
                raise optuna.TrialPruned()
            value = float(result.score)
            if best["value"] is None or value > best["value"]:
                best["value"] = value
                save_file({k: v.detach().cpu().contiguous() for k, v in result.state_dict.items()}, str(best_file))
            return value
        finally:
            spans.append(time.perf_counter() - start)

    if storage_kind == "journal":
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage: Any = JournalStorage(JournalFileBackend(str(work / f"script-{seed}.journal")))
    else:
        storage = None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=f"script-{seed}", storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=5),
                                pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=ctx.space.epochs,
                                                                      reduction_factor=3))
    with FitClock() as fit:
        start = time.perf_counter()
        study.optimize(objective, n_trials=args.trials, catch=(Exception,))
        loop = time.perf_counter() - start
    return {"trials": len(study.trials), "loop": loop, "trial_s": sum(spans), "fit_s": fit.seconds,
            "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)}


def per_trial(run: Dict[str, float]) -> Dict[str, float]:
    n = max(1, run["trials"])
    return {"fixed_ms": (run["loop"] - run["trial_s"]) / n * 1000, "outside_fit_ms": (run["loop"] - run["fit_s"]) / n * 1000}


def mean_sd(values: List[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def main(argv: List[str] | None = None) -> None:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    _common.warm_up(args.data, _common.default_zoo())
    runs: Dict[str, Dict[int, Dict[str, float]]] = {side: {} for side in args.sides}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i, seed in enumerate(args.seeds):
            order = args.sides if i % 2 == 0 else list(reversed(args.sides))  # alternate, so drift cancels
            for side in order:
                if side == "autotl":
                    run = run_autotl(args, seed, work)
                else:
                    run = run_script(args, seed, work, side.split("-", 1)[1])
                runs[side][seed] = {**run, **per_trial(run)}
                r = runs[side][seed]
                rows.append([side, seed, r["trials"], r["complete"], f"{r['loop']:.2f}", f"{r['trial_s']:.2f}",
                             f"{r['fit_s']:.2f}", f"{r['fixed_ms']:.1f}", f"{r['outside_fit_ms']:.1f}"])
                print(" | ".join(str(c) for c in rows[-1]), flush=True)
    rows.sort(key=lambda row: (args.sides.index(row[0]), row[1]))
    runs_table = _common.md_table(["side", "seed", "trials", "complete", "loop s", "Σ trial s", "Σ fit s",
                                   "fixed ms/trial", "outside fit ms/trial"], rows)
    summary, goal = [], []
    auto = runs.get("autotl", {})
    for side in args.sides:
        fixed = [r["fixed_ms"] for r in runs[side].values()]
        outside = [r["outside_fit_ms"] for r in runs[side].values()]
        ratio = ratio_fit = "—"
        if side != "autotl" and auto:
            ratio = mean_sd([auto[s]["fixed_ms"] / runs[side][s]["fixed_ms"] for s in args.seeds])
            ratio_fit = mean_sd([auto[s]["outside_fit_ms"] / runs[side][s]["outside_fit_ms"] for s in args.seeds])
        summary.append([side, len(fixed), mean_sd(fixed), mean_sd(outside), ratio, ratio_fit])
    if auto:
        mean = statistics.mean(r["fixed_ms"] for r in auto.values())
        goal.append(["autotl fixed cost per trial <= 50 ms", f"{mean:.1f} ms", "met" if mean <= GOAL_MS else "not met"])
    summary_table = _common.md_table(["side", "seeds", "fixed ms/trial (mean ± sd)", "outside fit ms/trial",
                                      "autotl / this (fixed)", "autotl / this (outside fit)"], summary)
    tables = [summary_table, runs_table] + ([_common.md_table(["goal", "measured", "result"], goal)] if goal else [])
    print("\n\n".join(tables))
    if args.append:
        notes = [f"`{args.data}`, `{args.backbone}`, space `{args.space}`, {args.trials} trials of {args.epochs} "
                 f"epoch(s) per search, seeds {', '.join(map(str, args.seeds))}, CPU. Fixed cost = (search-loop wall "
                 "- Σ trial seconds) / trials; outside fit = (search-loop wall - Σ seconds inside "
                 "autotl.trainer.fit) / trials. The script is `study.optimize` over a hand-written objective with "
                 "autotl's build_model, tensors and fit, on a JournalStorage file (`optuna-journal`) or Optuna's "
                 "in-memory storage (`optuna-memory`)."]
        _common.append_results(HEADING, _common.result_block("per-trial fixed cost, autotl vs a hand-written "
                                                             "Optuna script", "cpu", tables, notes))


if __name__ == "__main__":
    main()
