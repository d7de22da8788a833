"""The ``autotl`` command: parse, call the API, turn errors into one line and an exit code.

Only argparse and the light public package are imported at start-up, so ``--help`` and
``--version`` answer without importing torch.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any, List, Optional, Sequence

from . import __version__
from .errors import AutotlError

EPILOG = "Docs: docs/user-guide.md. Errors print one line; add --debug for the traceback."


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
    s.add_argument("--trials", type=int, help="number of trials (default 20 unless --timeout)")
    s.add_argument("--timeout", type=float, metavar="SECONDS", help="stop starting trials after this long")
    s.add_argument("--epochs", type=int, help="max epochs per trial (default: the space's)")
    s.add_argument("--metric", default="accuracy", help="accuracy, balanced_accuracy or macro_f1")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:i")
    s.add_argument("--out", metavar="DIR", help="run folder (default runs/<study>)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--study", metavar="NAME", help="study name; an existing study is resumed")
    s.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: a journal file in the run folder)")
    s.add_argument("--quiet", action="store_true", help="print only the final leaderboard")

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

    r = sub.add_parser("predict", parents=[common], help="predict images with a saved best model")
    r.add_argument("model", metavar="RUN_OR_MODEL_DIR")
    r.add_argument("images", nargs="+", metavar="IMAGES")
    r.add_argument("--out", metavar="preds.csv", help="write predictions to a CSV (default: print)")
    r.add_argument("--device", default="auto")

    sub.add_parser("backbones", parents=[common], help="list registered source models")
    sub.add_parser("plugins", parents=[common], help="list loaded plugins and the hooks they implement")
    return parser


def _plugin_kwargs(args: argparse.Namespace) -> dict:
    return {"plugins": tuple(args.plugin), "plugins_dir": args.plugins_dir, "zoo": args.zoo}


def _plugin_and_block_kwargs(args: argparse.Namespace) -> dict:
    return {**_plugin_kwargs(args), "blocked": tuple(args.block_plugin)}


def _fmt(value: Any, width: int = 0) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = "" if value is None else str(value)
    return text.ljust(width) if width else text


def _table(rows: List[List[Any]], header: List[str]) -> str:
    cells = [header] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def print_leaderboard(result: Any, top: int = 10) -> None:
    from .runfolder import leaderboard

    best = leaderboard(list(result.trials), top)
    rows = [[i + 1, r.number, r.value, r.backbone, r.params.get("freeze_depth"), r.params.get("head_lr"),
             r.params.get("backbone_lr"), r.epochs_run, round(r.seconds, 1)] for i, r in enumerate(best)]
    counts = result.summary["trials"]
    print(f"\nLeaderboard ({result.metric} on val; {counts['complete']} complete, {counts['pruned']} pruned, "
          f"{counts['fail']} failed)")
    if rows:
        print(_table(rows, ["rank", "trial", result.metric, "backbone", "freeze", "head_lr", "backbone_lr",
                            "epochs", "seconds"]))
    b = result.best
    if b:
        test = b.get("test")
        tail = f"; test {result.metric} {test[result.metric]:.4f}" if test else ""
        print(f"\nBest: trial {b['trial']} ({b['backbone']}), val {result.metric} {b['value']:.4f}{tail}")
        if b.get("model_dir"):
            print(f"Model: {b['model_dir']}")
    print(f"Run folder: {result.out_dir}")


def _trial_line(record: Any) -> None:
    value = f"{record.value:.4f}" if record.value is not None else "-"
    extra = f"  {record.fail_reason}" if record.fail_reason else ""
    print(f"trial {record.number:>3} {record.state:<8} val={value}  {record.backbone}  "
          f"freeze={_fmt(record.params.get('freeze_depth'))}  head_lr={_fmt(record.params.get('head_lr'))}  "
          f"epochs={record.epochs_run}  {record.seconds:.1f}s{extra}", flush=True)


def cmd_search(args: argparse.Namespace) -> int:
    from .api import search

    result = search(args.data, space=args.space, backbones=args.backbones, trials=args.trials,
                    timeout=args.timeout, epochs=args.epochs, metric=args.metric, device=args.device, out=args.out,
                    seed=args.seed, study=args.study, storage=args.storage, quiet=args.quiet,
                    blocked_plugins=tuple(args.block_plugin), on_trial=None if args.quiet else _trial_line,
                    **_plugin_kwargs(args))
    print_leaderboard(result)
    if result.best is None:
        fails = [r.fail_reason for r in result.trials if r.fail_reason]
        hint = f" First failure: {fails[0]}" if fails else ""
        print(f"error: no trial completed.{hint} — see {result.out_dir}/trials.csv", file=sys.stderr)
        return 1
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from .api import pretrain

    info = pretrain(args.data, backbone=args.backbone, out=args.out, epochs=args.epochs, lr=args.lr,
                    batch_size=args.batch_size, seed=args.seed, device=args.device, **_plugin_and_block_kwargs(args))
    print(f"pretrained {info['source_model']} on {info['source_task']}: val accuracy {info['accuracy']:.4f}")
    print(f"wrote {info['weights']} and {os.path.splitext(info['weights'])[0]}.json")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .api import predict

    rows = predict(args.model, args.images, out=args.out, device=args.device, **_plugin_and_block_kwargs(args))
    if args.out:
        print(f"wrote {len(rows)} predictions to {args.out}")
    else:
        print(_table([[r["path"], r["label"], r["confidence"]] for r in rows], ["path", "label", "confidence"]))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from .api import list_backbones, load_plugins

    rows = list_backbones(load_plugins(args.plugin, args.plugins_dir, args.zoo, args.block_plugin))
    print(_table([[r["name"], r["plugin"], f"{r['params'] / 1e6:.2f}M" if r["params"] else "?",
                   "x".join(map(str, r["input_size"][1:])) if r.get("input_size") else "?", r["layer_groups"],
                   r["description"]] for r in rows],
                 ["name", "plugin", "params", "input", "groups", "description"]))
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .api import load_plugins

    plugins = load_plugins(args.plugin, args.plugins_dir, args.zoo, args.block_plugin)
    print(_table([[p["name"], ", ".join(p["hooks"]), p["origin"]] for p in plugins.describe()],
                 ["plugin", "hooks", "from"]))
    return 0


COMMANDS = {"search": cmd_search, "pretrain": cmd_pretrain, "predict": cmd_predict, "backbones": cmd_backbones,
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
