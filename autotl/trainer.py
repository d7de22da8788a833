"""The fine-tuning loop: one trial's training, evaluated and reported every epoch.

AdamW (timm) with a cosine schedule and warmup (timm), cross-entropy with optional label
smoothing, bf16 autocast and ``channels_last`` on CUDA. After each epoch the validation metric
goes to the reporter (an Optuna trial), which may ask to stop: the fit then ends early.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .config import METRICS
from .errors import TrialError, UsageError
from .freeze import apply_freeze_depth, frozen_norm_layers, optimizer_param_groups, set_train_mode
from .model import AdaptedModel
from .tensors import TensorSet


def score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """A classification metric from scikit-learn."""
    from sklearn import metrics as skm

    if metric == "accuracy":
        return float(skm.accuracy_score(y_true, y_pred))
    if metric == "balanced_accuracy":
        return float(skm.balanced_accuracy_score(y_true, y_pred))
    if metric == "macro_f1":
        return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0))
    raise UsageError(f"unknown metric {metric!r}", f"use one of {', '.join(METRICS)}")


def all_scores(y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, float]:
    return {m: score(m, y_true, y_pred) for m in METRICS}


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda[:i]`` must exist."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is available", "use --device cpu or auto")
        try:
            dev = torch.device(spec)
        except RuntimeError as exc:
            raise UsageError(f"--device {spec!r} is not a device", "use cuda or cuda:0") from exc
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)",
                             "pick an index below the device count")
        return dev
    raise UsageError(f"--device {spec!r} is not a device", "use auto, cpu, cuda or cuda:i")


@dataclass
class FitResult:
    """One fit: the validation curve, the best epoch's weights, and what it cost."""

    curve: List[float] = field(default_factory=list)
    best_value: float = float("-inf")
    best_epoch: int = -1
    epochs_run: int = 0
    seconds: float = 0.0
    pruned: bool = False
    state_dict: Optional[Dict[str, torch.Tensor]] = None
    train_loss: List[float] = field(default_factory=list)
    val_confusion: Optional[List[List[int]]] = None  # at the best epoch; rows are true classes


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype), dtype
    return torch.autocast(device_type="cpu", enabled=False), None


@torch.no_grad()
def predict_proba(module: nn.Module, data: TensorSet, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Class probabilities for every row of ``data``."""
    module.eval()
    outs = []
    for start in range(0, len(data), batch_size):
        x = data.x[start:start + batch_size].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device)[0]:
            logits = module(x)
        outs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> List[torch.Tensor]:
    order = torch.randperm(n, generator=generator)
    chunks = list(order.split(max(1, min(batch_size, n))))
    if len(chunks) > 1 and len(chunks[-1]) == 1:  # a batch of one breaks BatchNorm in train mode
        chunks = chunks[:-1]
    return chunks


def make_optimizer(model: AdaptedModel, params: Any, *, epochs: int, steps_per_epoch: int):
    """timm's AdamW over autotl's parameter groups, and timm's cosine schedule with warmup, stepped per update.

    Every group's learning rate is ``head_lr * lr_scale`` times the schedule's factor; timm's
    scheduler applies ``lr_scale``.
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    groups = optimizer_param_groups(model, weight_decay=params.weight_decay, backbone_lr=params.backbone_lr,
                                    backbone_lr_mult=1.0 if params.backbone_lr_mult is None else params.backbone_lr_mult,
                                    layer_decay=1.0 if params.layer_decay is None else params.layer_decay)
    optimizer = create_optimizer_v2(groups, opt="adamw", lr=params.head_lr, weight_decay=params.weight_decay)
    warmup = int(min(params.warmup_epochs, max(0, epochs - 1)))
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=epochs, warmup_epochs=warmup,
                                       warmup_lr=params.head_lr * 0.01, min_lr=params.head_lr * 1e-3,
                                       step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    scheduler.step_update(num_updates=0)  # apply every group's lr_scale before the first step, warmup or not
    return optimizer, scheduler


def fit(model: AdaptedModel, train: TensorSet, val: TensorSet, params: Any, *, epochs: int, metric: str,
        device: torch.device, seed: int = 0, reporter: Any = None,
        on_epoch: Optional[Callable[[int, float, float], None]] = None) -> FitResult:
    """Fine-tune ``model`` for up to ``epochs`` epochs; keep the best validation epoch's weights.

    Args:
        params: a :class:`autotl.space.TrialParams` (freeze depth, learning rates, ...).
        reporter: an Optuna trial (``report(value, step)``, ``should_prune()``) or None.
        on_epoch: called as ``on_epoch(epoch, val_metric, train_loss)`` after each epoch.

    Raises:
        TrialError: the loss became NaN or infinite.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    module = model.module
    apply_freeze_depth(model, params.freeze_depth)
    frozen_norms = frozen_norm_layers(module)
    module.to(device)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)

    steps = len(_batches(len(train), params.batch_size, torch.Generator().manual_seed(0)))
    optimizer, scheduler = make_optimizer(model, params, epochs=epochs, steps_per_epoch=steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    autocast, amp_dtype = _autocast(device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None

    x_train, y_train = train.x.to(device), train.y.to(device)
    result = FitResult()
    start = time.perf_counter()
    update = 0
    for epoch in range(epochs):
        set_train_mode(module, frozen_norms)
        losses = []
        for idx in _batches(len(train), params.batch_size, generator):
            idx = idx.to(device)
            x, y = x_train[idx], y_train[idx]
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = criterion(module(x), y)
            if not torch.isfinite(loss):
                raise TrialError(f"the training loss became {loss.item()} at epoch {epoch + 1}",
                                 "lower head_lr or narrow its range in the search space")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            update += 1
            scheduler.step_update(num_updates=update)
            losses.append(float(loss.detach()))
        probs = predict_proba(module, val, device)
        pred = probs.argmax(1)
        value = score(metric, val.y.numpy(), pred)
        result.curve.append(value)
        result.train_loss.append(float(np.mean(losses)) if losses else math.nan)
        result.epochs_run = epoch + 1
        if value > result.best_value:
            result.best_value, result.best_epoch = value, epoch
            result.state_dict = {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
            result.val_confusion = confusion(val.y.numpy(), pred, probs.shape[1])
        if on_epoch is not None:
            on_epoch(epoch, value, result.train_loss[-1])
        if reporter is not None:
            reporter.report(value, epoch + 1)  # fidelity counts epochs from 1, like min_epochs and epochs
            if epoch + 1 < epochs and reporter.should_prune():  # a fully trained trial is complete, not pruned
                result.pruned = True
                break
    result.seconds = time.perf_counter() - start
    return result


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> List[List[int]]:
    """The confusion matrix as JSON-able lists: rows are true classes, columns predictions."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(num_classes))).tolist()


def evaluate(module: nn.Module, data: TensorSet, device: torch.device) -> Dict[str, Any]:
    """All metrics and the confusion matrix of ``module`` on ``data``."""
    module.to(device)
    probs = predict_proba(module, data, device)
    pred = probs.argmax(1)
    y = data.y.numpy()
    out: Dict[str, Any] = all_scores(y, pred)
    out["confusion_matrix"] = confusion(y, pred, probs.shape[1])
    return out
