"""The hand-written peers of ``search_quality.py``: what a practitioner writes instead of autotl.

One plain script, as the issue describes it and as people write it in an afternoon: timm networks,
a new linear head, three knobs (source x freeze fraction x learning rate), AdamW with weight decay
0.05, batch 32, a cosine schedule stepped per update (no warmup), and a random shift of up to 1/16 of the
side (2 px at 32 px) as its only augmentation. It trains with plain PyTorch (no autotl code), reports
validation accuracy to Optuna every epoch, keeps the best epoch's weights of the best trial and scores
them once on the test split. The search around it is one of:

- ``script``: ``TPESampler`` + ``HyperbandPruner`` (the peer the issue measured);
- ``tpe``: ``TPESampler``, no pruning;
- ``random``: ``RandomSampler``, no pruning;
- ``grid``: every source x freeze {0, 0.5, 1} x lr {3e-4, 1e-3, 3e-3}, unpruned.

It reads the same CSV tasks and builds the same source networks (through the zoo or Lite0 plugin's
``build()``, which is what ``timm.create_model`` with a weights file gives) as autotl does.
"""
from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Sequence

PEERS = ("script", "tpe", "random", "grid")
FREEZE_CHOICES = (0.0, 0.25, 0.5, 0.75, 1.0)
LR_RANGE = (1e-4, 1e-2)
GRID_FREEZE = (0.0, 0.5, 1.0)
GRID_LR = (3e-4, 1e-3, 3e-3)
SHIFT = 0.0625  # of the side: 2 px at 32 px
BATCH = 32
WEIGHT_DECAY = 0.05


def read_csv_task(csv_path: str) -> Dict[str, List[Any]]:
    """{split: [(PIL RGB image, label)]} from a ``path,label,split`` CSV."""
    from PIL import Image

    root = Path(csv_path).parent
    rows: Dict[str, List[Any]] = {}
    with open(csv_path, newline="") as fh:
        for r in csv.DictReader(fh):
            with Image.open(root / r["path"]) as im:
                rows.setdefault(r["split"], []).append((im.convert("RGB"), r["label"]))
    return rows


class Loaded:
    """A task's splits as tensors for one data config: eval tensors and a shifting train transform."""

    def __init__(self, rows: Mapping[str, Sequence[Any]], data_config: Mapping[str, Any]) -> None:
        import torch
        from timm.data import create_transform
        from torchvision import transforms as T

        cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data_config.items()
               if k in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")}
        evaluation = create_transform(**cfg, is_training=False)
        steps = list(evaluation.transforms)
        self.train_tf = T.Compose(steps[:-2] + [T.RandomAffine(0, translate=(SHIFT, SHIFT))] + steps[-2:])
        classes = sorted({label for split in rows.values() for _, label in split})
        self.num_classes = len(classes)
        index = {c: i for i, c in enumerate(classes)}
        self.train_images = [img for img, _ in rows["train"]]
        self.y = {s: torch.tensor([index[label] for _, label in rows[s]]) for s in rows}
        self.x = {s: torch.stack([evaluation(img) for img, _ in rows[s]]) for s in rows if s != "train"}

    def train_epoch(self) -> Any:
        import torch

        return torch.stack([self.train_tf(img) for img in self.train_images])


def freeze(model: Any, fraction: float) -> None:
    """Freeze the first ``fraction`` of timm's coarse layer groups (the head stays trainable)."""
    from timm.models import group_parameters

    groups = group_parameters(model, model.group_matcher(coarse=True))
    group_names = [groups[g] for g in sorted(groups)]
    head = set(group_names[-1]) | {n for n, _ in model.get_classifier().named_parameters(prefix="head")}
    body = group_names[:-1] if len(group_names) > 1 else group_names
    k = int(round(fraction * len(body)))
    frozen = {n for g in body[:k] for n in g} - head
    for n, p in model.named_parameters():
        p.requires_grad = n not in frozen


def accuracy(model: Any, x: Any, y: Any) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def train_trial(build: Callable[[], Any], data: Loaded, fraction: float, lr: float, epochs: int, seed: int,
                report: Callable[[float, int], bool]) -> Dict[str, Any]:
    """One trial of the script: returns its best val accuracy, that epoch's weights and the epochs run.

    ``report(value, epoch)`` returns True when the trial should stop (pruned).
    """
    import torch
    from timm.scheduler import CosineLRScheduler

    torch.manual_seed(seed)
    model = build()
    model.reset_classifier(data.num_classes)
    freeze(model, fraction)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)
    n = len(data.train_images)
    steps = max(1, math.ceil(n / BATCH))
    sched = CosineLRScheduler(opt, t_initial=epochs * steps, lr_min=lr * 1e-3, t_in_epochs=False)
    loss_fn = torch.nn.CrossEntropyLoss()
    best = {"value": -1.0, "state": None, "epochs": 0, "pruned": False}
    update = 0
    for epoch in range(epochs):
        model.train()
        x_all, y_all = data.train_epoch(), data.y["train"]
        order = torch.randperm(n)
        for i in range(0, n, BATCH):
            idx = order[i:i + BATCH]
            if len(idx) < 2:
                continue
            loss = loss_fn(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            update += 1
            sched.step_update(update)
        value = accuracy(model, data.x["val"], data.y["val"])
        best["epochs"] = epoch + 1
        if value > best["value"]:
            best["value"], best["state"] = value, {k: v.detach().clone() for k, v in model.state_dict().items()}
        if report(value, epoch + 1) and epoch + 1 < epochs:
            best["pruned"] = True
            break
    best["model"] = model
    return best


def run_peer(kind: str, sources: Mapping[str, Callable[[], Any]], data_configs: Mapping[str, Mapping[str, Any]],
             csv_path: str, *, trials: int, epochs: int, seed: int) -> Dict[str, Any]:
    """One search of the hand-written script; the chosen model's val and test accuracy and the cost."""
    import optuna
    import torch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = read_csv_task(csv_path)
    loaded: Dict[str, Loaded] = {}
    names = list(sources)

    def data_for(name: str) -> Loaded:
        key = repr(sorted(data_configs[name].items()))
        if key not in loaded:
            loaded[key] = Loaded(rows, data_configs[name])
        return loaded[key]

    spent = {"epochs": 0}
    best: Dict[str, Any] = {"value": None}

    def objective(trial: optuna.Trial) -> float:
        name = trial.suggest_categorical("source", names)
        fraction = trial.suggest_categorical("freeze", list(GRID_FREEZE if kind == "grid" else FREEZE_CHOICES))
        lr = (trial.suggest_categorical("lr", list(GRID_LR)) if kind == "grid"
              else trial.suggest_float("lr", *LR_RANGE, log=True))

        def report(value: float, step: int) -> bool:
            trial.report(value, step)
            return trial.should_prune()

        r = train_trial(sources[name], data_for(name), fraction, lr, epochs, seed * 1000 + trial.number, report)
        spent["epochs"] += r["epochs"]
        if r["pruned"]:
            raise optuna.TrialPruned()
        if best["value"] is None or r["value"] > best["value"]:
            r["model"].load_state_dict(r["state"])
            best.update(value=r["value"], model=r["model"], source=name, freeze=fraction, lr=lr)
        return r["value"]

    if kind == "grid":
        grid = {"source": names, "freeze": list(GRID_FREEZE), "lr": list(GRID_LR)}
        sampler: Any = optuna.samplers.GridSampler(grid, seed=seed)
        n = len(list(itertools.product(*grid.values())))
    elif kind == "random":
        sampler, n = optuna.samplers.RandomSampler(seed=seed), trials
    else:
        sampler, n = optuna.samplers.TPESampler(seed=seed), trials
    pruner = (optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
              if kind == "script" else optuna.pruners.NopPruner())
    # A fixed name: Hyperband assigns brackets by a hash of the study name and trial number.
    study = optuna.create_study(study_name=f"{kind}-seed{seed}", direction="maximize", sampler=sampler, pruner=pruner)
    study.optimize(objective, n_trials=n)
    test = None
    if best["value"] is not None and "test" in rows:
        d = data_for(best["source"])
        with torch.no_grad():
            test = accuracy(best["model"], d.x["test"], d.y["test"])
    return {"val": best["value"], "test": test, "epochs": spent["epochs"], "trials": len(study.trials),
            "backbone": best.get("source"), "freeze_depth": best.get("freeze"), "head_lr": best.get("lr")}
