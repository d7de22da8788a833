"""The ``autotl`` command: parse, call the API, turn errors into one line and an exit code.

Only argparse and the light public package are imported at start-up, so ``--help`` and
``--version`` answer without importing torch.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, Optional, Sequence

from . import __version__
from .errors import AutotlError, UsageError
from .fmt import text_table

EPILOG = "Docs: docs/user-guide.md. Errors print one line; add --debug for the traceback."


def _int_at_least(low: int):
    """An argparse type: a whole number of at least ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _plugin_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("plugins")
    g.add_argument("--plugin", action="append", default=[], metavar="PATH_OR_MODULE",
                   help="load a plugin module or .py file (repeatable)")
    g.add_argument("--plugins-dir", metavar="DIR", help="load every .py file in DIR as a plugin")
    g.add_argument("--block-plugin", action="append", default=[], metavar="NAME", help="do not load plugin NAME")
    g.add_argument("--zoo", metavar="DIR", help="model zoo folder (default: $AUTOTL_ZOO or ~/.cache/autotl/zoo)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autotl", description="AutoML for transfer learning.", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"autotl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _plugin_options()

    s = sub.add_parser("search", parents=[common], help="search backbones and fine-tuning recipes",
                       description="Search source models, freeze depth and the fine-tuning recipe on DATA.")
    s.add_argument("data", help="an image folder (class subfolders, or train/ val/ test/), a CSV (path,label) or builtin:NAME")
    s.add_argument("--space", default="default", help="search space: default, quick, or a YAML file")
    s.add_argument("--backbones", metavar="GLOB[,GLOB]", help="source models to consider (globs over `autotl backbones`)")
    s.add_argument("--trials", type=int, help="trials this command runs, across its --workers (default 20 unless "
                                              "--timeout); other commands on the same study run their own")
    s.add_argument("--max-trials", type=int, metavar="N",
                   help="stop when the study holds N trials, whoever ran them (for array jobs on one study)")
    s.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long")
    s.add_argument("--epochs", type=int, help="max epochs per trial (default: the space's)")
    s.add_argument("--metric", help="multiclass: accuracy (default), balanced_accuracy, macro_f1; multilabel: map "
                                    "(default), macro_f1, micro_f1; regression: rmse (default), mae, r2")
    s.add_argument("--task", default="auto", choices=("auto", "multiclass", "multilabel", "regression"),
                   help="auto: a CSV's labels column means multilabel, target regression, label multiclass")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:i")
    s.add_argument("--out", metavar="DIR", help="run folder (default runs/<study>)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--study", metavar="NAME", help="study name; an existing study is resumed")
    s.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: a journal file in the run folder)")
    s.add_argument("--quiet", action="store_true", help="no live progress; print only the final leaderboard")
    s.add_argument("--no-report", dest="report", action="store_false",
                   help="skip report.html/.md/.json (build them later with `autotl report`)")
    s.add_argument("--top", type=_positive_int, default=10, metavar="K", help="leaderboard rows to print (default 10)")
    s.add_argument("--no-feature-cache", dest="feature_cache", action="store_false",
                   help="run frozen layers every epoch instead of caching their outputs")
    s.add_argument("--feature-cache-mb", type=int, default=2048, metavar="MB",
                   help="memory bound of the feature cache (default 2048); more spills to the run folder")
    s.add_argument("--data-path", default="auto", choices=("auto", "resident", "cache", "stream"),
                   help="how splits are held: resident tensors in memory, a uint8 cache on disk streamed in batches, "
                        "or decoded again every epoch; auto (default) keeps a split resident when it fits --resident-mb")
    s.add_argument("--resident-mb", type=_non_negative_int, default=512, metavar="MB",
                   help="auto keeps a split resident when its preprocessed tensors fit this budget (default 512)")
    s.add_argument("--data-cache", metavar="DIR", help="where the decoded uint8 cache is written "
                                                       "(default: the run folder's data_cache/)")
    s.add_argument("--compile", action="store_true", help="torch.compile each trial's network (CUDA)")
    s.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="worker processes on this machine, sharing the study (default 1)")
    s.add_argument("--devices", metavar="DEV[,DEV]", help="one device per worker in turn, e.g. cuda:0,cuda:1")
    s.add_argument("--artifacts", metavar="DIR", help="where best/ is written (default: the run folder); "
                                                      "give workers on several machines one shared folder")
    s.add_argument("--no-rank", dest="rank", action="store_false",
                   help="do not rank the backbones by transferability before the search")
    s.add_argument("--preselect", type=_positive_int, metavar="K", help="search only the K best-ranked backbones")
    s.add_argument("--warm-start", default="auto", metavar="auto|off|STUDY",
                   help="start from the best setups of the most similar earlier search (default auto), "
                        "of the named one, or not at all")
    s.add_argument("--checkpoint-mb", type=float, default=2048, metavar="MB",
                   help="asha-promotion spaces: disk bound of the paused trials' checkpoints (default 2048); beyond "
                        "it the least promising paused trials are dropped for good")
    s.add_argument("--keep-top", type=_positive_int, default=1, metavar="K",
                   help="models kept in the artifact folder: best/, and with K > 1 also top/trial-N/ for the K best")
    s.add_argument("--soup", type=_non_negative_int, default=5, metavar="K",
                   help="greedy soup: average the best of the K top trials that share the winner's backbone and "
                        "adapter into best/ when that scores higher on validation (default 5; 0 turns it off)")
    s.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                   help="after the search, train the best setup again on train + validation for the epochs it "
                        "selected, into refit/ beside best/, and score it on the test split (default: on; "
                        "--no-refit skips it)")
    s.add_argument("--default-trials", type=_non_negative_int, default=None, metavar="K",
                   help="first trials: the default recipe on the K leading backbones (default: the space's "
                        "default_trials, else 3; 0 disables)")

    rp = sub.add_parser("report", parents=[common], help="build the report of a run folder or a stored study",
                        description="Write report.html, report.md and report.json for a run folder, or for a study "
                                    "in any Optuna storage (also while it is still running), and print the "
                                    "leaderboard.")
    rp.add_argument("run_dir", nargs="?", metavar="RUN_DIR", help="a run folder written by autotl search")
    rp.add_argument("--storage", metavar="URL", help="an Optuna storage URL (or a .journal file) instead of RUN_DIR")
    rp.add_argument("--study", metavar="NAME", help="the study in the storage (needed when it holds several)")
    rp.add_argument("--out", metavar="DIR", help="where to write the report (default: RUN_DIR, else runs/<study>)")
    rp.add_argument("--top", type=_positive_int, default=10, metavar="K", help="leaderboard rows to print (default 10)")

    k = sub.add_parser("rank", parents=[common], help="rank source models by transferability to DATA",
                       description="One forward pass per source model over DATA's train split; LogME, k-NN "
                                   "accuracy and H-score, a combined rank, and the seconds each took.")
    k.add_argument("data", help="the target data, as for `autotl search`")
    k.add_argument("--backbones", metavar="GLOB[,GLOB]", help="source models to rank (default: the space's)")
    k.add_argument("--space", default="default", help="whose backbone list to rank (default: default)")
    k.add_argument("--out", metavar="DIR", help="where rank.json goes (default runs/rank-<dataset>)")
    k.add_argument("--device", default="auto")
    k.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("pretrain", parents=[common], help="train a source model on a source task",
                       description="Train a registered source model on DATA; write weights and a sidecar JSON.")
    p.add_argument("data")
    p.add_argument("--backbone", required=True, help="a registered source model, e.g. timm/test_resnet")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")

    rf = sub.add_parser("refit", parents=[common], help="train a finished search's best setup on train + validation",
                        description="Train the best trial's setup again on train + validation, with its seed and "
                                    "schedule, for the epochs the search selected; write RUN/refit/ and its test "
                                    "score to summary.json and the report.")
    rf.add_argument("run_dir", metavar="RUN")
    rf.add_argument("--data", help="where the search's data is now (default: the path it recorded)")
    rf.add_argument("--storage", help="the search's storage URL, when it is not the run folder's journal")
    rf.add_argument("--device", default="auto")

    r = sub.add_parser("predict", parents=[common], help="predict images, texts or image+text pairs with a saved best model")
    r.add_argument("model", metavar="RUN_OR_MODEL_DIR")
    r.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image files or folders; for a text model, CSV files with a text column; for an image+text "
                        "model, CSV files with image and text columns")
    r.add_argument("--out", metavar="preds.csv", help="write predictions to a CSV (default: print)")
    r.add_argument("--device", default="auto")

    x = sub.add_parser("export", parents=[common], help="export a saved best model to ONNX, checked against PyTorch",
                       description="Write DIR/model.onnx (the task's outputs, fp32, dynamic batch), config.json and "
                                   "export.json: onnxruntime against PyTorch on up to 100 held-out inputs at batch "
                                   "sizes 1, 2, 5 and all. A difference above --tolerance is an error.")
    x.add_argument("model", metavar="RUN_OR_MODEL_DIR")
    x.add_argument("--format", default="onnx", help="the export format: onnx (the default and only one)")
    x.add_argument("--out", required=True, metavar="DIR", help="folder for model.onnx, config.json and export.json")
    x.add_argument("--images", nargs="+", metavar="PATH", help="images (files or folders), or for a text model CSV "
                                                               "files of texts, to check parity on (default: the run's "
                                                               "test split)")
    x.add_argument("--tolerance", type=float, default=1e-3,
                   help="largest absolute difference in outputs that passes (default 1e-3)")

    sub.add_parser("backbones", parents=[common], help="list registered source models")
    sub.add_parser("adapters", parents=[common], help="list registered target adapters, their knobs and what trains")
    sub.add_parser("plugins", parents=[common], help="list loaded plugins and the hooks they implement")
    return parser


def _plugin_kwargs(args: argparse.Namespace) -> dict:
    return {"plugins": tuple(args.plugin), "plugins_dir": args.plugins_dir, "zoo": args.zoo}


def _plugin_and_block_kwargs(args: argparse.Namespace) -> dict:
    return {**_plugin_kwargs(args), "blocked": tuple(args.block_plugin)}


def cmd_search(args: argparse.Namespace) -> int:
    from .api import search
    from .progress import make_progress
    from .report import format_leaderboard

    result = search(args.data, space=args.space, backbones=args.backbones, trials=args.trials, max_trials=args.max_trials,
                    timeout=args.timeout, epochs=args.epochs, metric=args.metric, task=args.task, device=args.device, out=args.out,
                    seed=args.seed, study=args.study, storage=args.storage, quiet=args.quiet, report=args.report,
                    feature_cache=args.feature_cache, feature_cache_mb=args.feature_cache_mb, compile=args.compile,
                    data_path=args.data_path, resident_mb=args.resident_mb, data_cache=args.data_cache,
                    default_trials=args.default_trials, workers=args.workers, devices=args.devices,
                    artifacts=args.artifacts, checkpoint_mb=args.checkpoint_mb, keep_top=args.keep_top, soup=args.soup,
                    refit=args.refit,
                    rank=args.rank, preselect=args.preselect,
                    warm_start=args.warm_start,
                    blocked_plugins=tuple(args.block_plugin), progress=make_progress(sys.stdout, quiet=args.quiet),
                    **_plugin_kwargs(args))
    print("\n" + format_leaderboard(result.report, args.top))
    if args.report:
        print(f"Report: {os.path.join(result.out_dir, 'report.html')}")
    print(f"Run folder: {result.out_dir}")
    if result.best is None:
        fails = [r.fail_reason for r in result.trials if r.fail_reason]
        hint = f" First failure: {fails[0]}" if fails else ""
        print(f"error: no trial completed.{hint} — see {result.out_dir}/trials.csv", file=sys.stderr)
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import HTML_NAME, MARKDOWN_NAME, format_leaderboard, report

    if args.run_dir is None and args.storage is None:
        raise UsageError("nothing to report on", "pass a run folder, or --storage URL (and --study NAME)")
    out_dir, facts = report(args.run_dir, storage=args.storage, study=args.study, out=args.out)
    print(format_leaderboard(facts, args.top))
    print(f"\nReport: {out_dir / HTML_NAME} (and {MARKDOWN_NAME}, report.json)")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from .api import rank

    result, path = rank(args.data, backbones=args.backbones, space=args.space, out=args.out, device=args.device,
                        seed=args.seed, **_plugin_and_block_kwargs(args))
    from .ranking import ranking_table

    print(text_table(ranking_table(result), ["rank", "backbone", "logme", "knn", "hscore", "features s",
                                             "scores s"]))
    for name, why in result.skipped.items():
        print(f"skipped {name}: {why}")
    print(f"\nWrote {path}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .api import pretrain

    info = pretrain(args.data, backbone=args.backbone, out=args.out, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, seed=args.seed, device=args.device, **_plugin_and_block_kwargs(args))
    print(f"pretrained {info['source_model']} on {info['source_task']}: val accuracy {info['accuracy']:.4f}")
    print(f"wrote {info['weights']} and {os.path.splitext(info['weights'])[0]}.json")
    return 0


def cmd_refit(args: argparse.Namespace) -> int:
    from .api import refit

    info = refit(args.run_dir, data=args.data, storage=args.storage, device=args.device,
                 **_plugin_and_block_kwargs(args))
    scores = ", ".join(f"test {k} {v:.4f}" for k, v in (info["test"] or {}).items() if isinstance(v, (int, float)))
    print(f"refit trial {info['trial']}'s setup on {info['train_images']} images for {info['epochs']} epochs: "
          f"{scores or 'no test split'}")
    print(f"Model: {info['model_dir']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .api import predict

    rows = predict(args.model, args.images, out=args.out, device=args.device, **_plugin_and_block_kwargs(args))
    if args.out:
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        shown = [k for k in ("path", "row", "label", "confidence", "labels", "prediction") if rows and k in rows[0]]
        print(text_table([[r[k] for k in shown] for r in rows], shown))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .api import export

    info = export(args.model, out=args.out, format=args.format, images=args.images, tolerance=args.tolerance,
                  **_plugin_and_block_kwargs(args))
    agreement = "" if info["top1_agreement"] is None else f", top-1 agreement {info['top1_agreement']:.1%}"
    print(f"exported {info['exported_from']} to {info['model']} (opset {info['opset']})")
    kind = {"image": "image(s)", "text": "text(s)"}.get(info.get("modality") or "image", "input(s)")
    print(f"parity on {info['images']} {kind} ({info['image_source']}), batch sizes "
          f"{', '.join(map(str, info['batch_sizes_checked']))}: max abs diff {info['max_abs_diff']:.2e} "
          f"(tolerance {info['tolerance']:g}){agreement}")
    print(f"wrote {os.path.join(args.out, 'config.json')} and {os.path.join(args.out, 'export.json')}")
    return 0


def _input_text(size: Any) -> str:
    """A source's input size for the listing: ``224x224`` for an image (C, H, W), ``128 tokens`` for a
    sequence (its max length), ``?`` when unknown."""
    if not size:
        return "?"
    if len(size) == 1:
        return f"{size[0]} tokens"
    return "x".join(map(str, size[1:]))


def cmd_backbones(args: argparse.Namespace) -> int:
    from .api import list_backbones, load_plugins

    rows = list_backbones(load_plugins(args.plugin, args.plugins_dir, args.zoo, args.block_plugin))
    print(text_table([[r["name"], r["plugin"], f"{r['params'] / 1e6:.2f}M" if r["params"] else "?",
                   _input_text(r.get("input_size")), r["layer_groups"],
                   r["description"]] for r in rows],
                 ["name", "plugin", "params", "input", "groups", "description"]))
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    from .api import list_adapters, load_plugins

    rows = list_adapters(load_plugins(args.plugin, args.plugins_dir, args.zoo, args.block_plugin))
    print(text_table([[r["name"], r["plugin"], r["knobs"], r["trains"], r["export"]] for r in rows],
                     ["name", "plugin", "knobs", "trains", "export"]))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .api import load_plugins

    plugins = load_plugins(args.plugin, args.plugins_dir, args.zoo, args.block_plugin)
    print(text_table([[p["name"], ", ".join(p["hooks"]), p["origin"]] for p in plugins.describe()],
                 ["plugin", "hooks", "from"]))
    return 0


COMMANDS = {"refit": cmd_refit, "search": cmd_search, "report": cmd_report, "rank": cmd_rank, "pretrain": cmd_pretrain, "predict": cmd_predict, "export": cmd_export, "backbones": cmd_backbones, "adapters": cmd_adapters,
            "plugins": cmd_plugins}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    if not debug:
        warnings.filterwarnings("ignore", module="timm")
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return COMMANDS[args.command](args)
    except AutotlError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted — finished trials are kept; resume with --study NAME", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
