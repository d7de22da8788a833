"""The fine-tuning loop: one trial's training, evaluated and reported every epoch.

The recipe comes from the trial's params: the freeze strategy (freeze depth, LP-FT or surgical),
AdamW or SGD (timm) over head/backbone learning-rate groups, a cosine, linear or constant
schedule with warmup (timm), label smoothing, augmentation, mixup/cutmix (timm ``Mixup``),
drop-path, gradient clipping (timm) and L2-SP. The loss and the metrics come from the task.
bf16 autocast and ``channels_last`` on CUDA. After each epoch the validation metric goes to the
reporter (an Optuna trial), which may ask to stop: the fit then ends early.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .errors import TrialError, UsageError
from .freeze import (frozen_norm_layers, model_trainable_groups, optimizer_param_groups, set_train_mode, set_trainable,
                     tower_knob)
from .model import AdaptedModel
from .modality import modality_name, modality_of
from .regularize import L2SP, set_drop_path
from .selection import Selection
from .tasks import Task, better
from .tensors import TensorSet


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
    best_value: Optional[float] = None
    best_epoch: int = -1
    epochs_run: int = 0
    seconds: float = 0.0
    pruned: bool = False
    state_dict: Optional[Dict[str, torch.Tensor]] = None
    train_loss: List[float] = field(default_factory=list)
    val_details: Optional[Dict[str, Any]] = None  # at the best epoch: the task's report extras (confusion matrix, ...)
    lp_epochs: int = 0  # epochs of LP-FT's linear-probe phase
    drop_path_slots: int = 0  # residual blocks drop-path reached
    feature_cache: List[str] = field(default_factory=list)  # per phase: probe, partial@k, or why not cached
    val_loss: List[float] = field(default_factory=list)  # per epoch, unsmoothed
    score: Optional[float] = None  # the trial's value under the selection rule
    selected_epoch: int = -1  # the epoch (0-based) whose weights ``state_dict`` holds
    epoch_train_seconds: List[float] = field(default_factory=list)  # the training pass of each epoch
    train_samples: int = 0  # samples the training passes read, all epochs together
    data: Optional[Dict[str, Any]] = None  # how the search held the data, set by the caller (the trial's `data`)
    paused: bool = False  # stopped at ``pause_at``: ``checkpoint`` resumes it
    checkpoint: Any = None  # an autotl.pausing.FitCheckpoint when paused

    #: What a checkpoint carries of the result, to be whole again when resumed.
    HISTORY = ("curve", "best_value", "best_epoch", "train_loss", "val_details", "lp_epochs", "drop_path_slots",
               "feature_cache", "val_loss", "epoch_train_seconds", "train_samples")


def _autocast(device: torch.device):
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast(device_type="cuda", dtype=dtype), dtype
    return torch.autocast(device_type="cpu", enabled=False), None


@torch.no_grad()
def predict_outputs(module: nn.Module, data: Any, device: torch.device, task: Optional[Task] = None,
                    batch_size: int = 256, forward: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                    x: Optional[torch.Tensor] = None, rows: Optional[List[int]] = None) -> np.ndarray:
    """The task's outputs for the rows of ``data`` (a resident or a streamed set), in order.

    ``forward`` and ``x`` replace ``module`` and ``data``'s inputs: the rest of a split network on
    cached features. A streamed sample that cannot be read is left out; ``rows``, when given, is
    filled with the positions the outputs belong to (score them against ``data.y[rows]``).
    """
    from .streaming import sequential

    task = task or Task()
    module.eval()
    forward = forward if forward is not None else module
    outs = []
    if x is not None:
        source = ((x[r.start:r.stop].to(device, non_blocking=True), torch.arange(r.start, r.stop))
                  for r in sequential(len(x), batch_size))
    else:
        source = data.batches(sequential(len(data), batch_size), device)
    for xb, positions in source:
        if device.type == "cuda" and xb.ndim == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with _autocast(device)[0]:
            logits = forward(xb)
        outs.append(task.outputs(logits).cpu())
        if rows is not None:
            rows.extend(positions.tolist())
    return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)


def predict_proba(module: nn.Module, data: TensorSet, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Class probabilities for every row of ``data`` (a multiclass model)."""
    return predict_outputs(module, data, device, Task(), batch_size)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> List[torch.Tensor]:
    """A shuffled epoch in ``ceil(n / batch_size)`` batches of nearly equal size (at most ``batch_size``).

    Equal batches, not full ones plus a ragged tail: on a small target the tail can be a handful of
    images (20 images in batches of 16 leave a batch of 4), whose noisy step and BatchNorm statistics
    cost accuracy. A batch of one image breaks BatchNorm in train mode: equal batches only have one
    when ``batch_size`` is 1, and then a trailing one is dropped as before.
    """
    order = torch.randperm(n, generator=generator)
    count = max(1, -(-n // max(1, batch_size)))
    chunks = [c for c in torch.tensor_split(order, count) if len(c)]
    if len(chunks) > 1 and len(chunks[-1]) == 1:
        chunks = chunks[:-1]
    return chunks


def make_optimizer(model: AdaptedModel, params: Any, *, epochs: int, steps_per_epoch: int):
    """timm's AdamW or SGD over autotl's parameter groups, and timm's schedule with warmup, stepped per update.

    Every group's learning rate is ``head_lr * lr_scale`` times the schedule's factor; timm's
    scheduler applies ``lr_scale``. Only parameters that train at the time of the call join.
    """
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    groups = optimizer_param_groups(model, weight_decay=params.weight_decay, backbone_lr=params.backbone_lr,
                                    backbone_lr_mult=1.0 if params.backbone_lr_mult is None else params.backbone_lr_mult,
                                    layer_decay=1.0 if params.layer_decay is None else params.layer_decay,
                                    tower_lr_mults={name: tower_knob(params, name, "lr_mult", 1.0)
                                                    for name, _ in model.towers[1:]},
                                    backbone_scale=1.0 if model.towers else tower_knob(
                                        params, modality_name(model.data_config), "lr_mult", 1.0))
    extra = {"momentum": 0.9 if params.momentum is None else params.momentum} if params.optimizer == "sgd" else {}
    optimizer = create_optimizer_v2(groups, opt=params.optimizer, lr=params.head_lr, weight_decay=params.weight_decay,
                                    **extra)
    warmup = int(min(params.warmup_epochs, max(0, epochs - 1)))
    sched = {"cosine": "cosine", "linear": "poly", "constant": "constant"}[params.schedule]
    scheduler, _ = create_scheduler_v2(optimizer, sched=sched, num_epochs=epochs, warmup_epochs=warmup,
                                       warmup_lr=params.head_lr * 0.01, min_lr=params.head_lr * 1e-3,
                                       decay_rate=1.0 if sched == "poly" else 0.1,
                                       step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    scheduler.step_update(num_updates=0)  # apply every group's lr_scale before the first step, warmup or not
    return optimizer, scheduler


def lp_epochs(params: Any, epochs: int) -> int:
    """Epochs of LP-FT's linear-probe phase: the fraction of the budget, at least 1, leaving 1 to fine-tune."""
    if params.strategy != "lp_ft" or epochs < 2:
        return 0
    fraction = 0.25 if params.lp_fraction is None else params.lp_fraction
    return int(min(epochs - 1, max(1, round(fraction * epochs))))


def _phase_groups(model: AdaptedModel, params: Any, phase: str):
    return model_trainable_groups(model, params, phase)


def _mixup(params: Any, task: Task, num_classes: int):
    """timm's Mixup/CutMix for this trial, or None (off, or a task whose targets do not mix)."""
    if not task.mixable or (params.mixup_alpha <= 0 and params.cutmix_alpha <= 0):
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=params.mixup_alpha, cutmix_alpha=params.cutmix_alpha, prob=1.0, switch_prob=0.5,
                 mode="batch", label_smoothing=params.label_smoothing, num_classes=num_classes)


class _Phase:
    """What a training phase runs: the whole network on images, or the rest of a split network on
    cached features of its frozen prefix."""

    def __init__(self, model: AdaptedModel, params: Any, train: Any, val: TensorSet, device: torch.device,
                 autocast: Any, cache: Any, task: Task, compiled: Any = None) -> None:
        self.model, self.params, self.train, self.val, self.device = model, params, train, val, device
        self.autocast, self.cache, self.task = autocast, cache, task
        self.whole = compiled if compiled is not None else model.module  # what runs the whole network
        self.forward: Callable[[torch.Tensor], torch.Tensor] = self.whole
        self.val_x: Optional[torch.Tensor] = None
        self._train_x: Optional[torch.Tensor] = None  # cached features or resident images, on the device

    def begin(self, name: str, result: FitResult) -> None:
        self.forward, self.val_x, self._train_x = self.whole, None, None
        try:
            split, why = self._split(name)
            if split is not None:
                train_x = self.cache.features(self.model, split, self.train, self.device, self.autocast)
                self.val_x = self.cache.features(self.model, split, self.val, self.device, self.autocast)
                self._train_x, self.forward = train_x.to(self.device), split.rest
        except Exception as exc:  # the cache only saves time: any problem in it means running uncached
            from .features import warn_once

            warn_once(f"feature cache off for this trial: {type(exc).__name__}: {exc}",
                      "the trial runs uncached, only slower; rerun with --no-feature-cache to silence this")
            self.forward, self.val_x, self._train_x = self.whole, None, None
            split, why = None, f"error: {type(exc).__name__}"
        if self.val_x is None and isinstance(self.val, TensorSet):  # resident images: moved once, not every epoch
            self.val_x = self.val.x.to(self.device, non_blocking=True)
        result.feature_cache.append(split.label if split is not None else why)

    def _split(self, name: str):
        from .features import plan_split, uncacheable_reason, verify_split

        if self.cache is None:
            return None, "off"
        why = uncacheable_reason(self.params, modality=modality_of(self.model.data_config))
        if why is not None or getattr(self.train, "augmented", False):
            return None, why or "augmentation"
        groups = _phase_groups(self.model, self.params, name)
        if 0 in groups and not self.model.towers:  # a composite's later parts may be frozen still
            return None, "nothing frozen"
        split = plan_split(self.model, groups)
        if split is None:
            return None, "no cut point in this network"
        per_image = verify_split(self.model, split)
        if per_image is None:
            return None, "the split did not reproduce the network"
        if per_image * (len(self.train) + len(self.val)) > self.cache.max_bytes:
            return None, "features larger than the cache"
        return split, ""

    def epoch(self, batches: List[torch.Tensor]):
        """This epoch's (inputs on the device, positions) per batch: cached features, resident
        images, or a streamed set's batches (new augmented views every epoch)."""
        if self._train_x is None and isinstance(self.train, TensorSet):
            self._train_x = self.train.x.to(self.device, non_blocking=True)
        if self._train_x is None:
            yield from self.train.batches(batches, self.device)
            return
        for idx in batches:
            idx = idx.to(self.device)
            yield self._train_x[idx], idx


def fit(model: AdaptedModel, train: Any, val: Any, params: Any, *, epochs: int, metric: str,
        device: torch.device, seed: int = 0, reporter: Any = None,
        on_epoch: Optional[Callable[[int, float, float], None]] = None, task: Optional[Task] = None,
        labels: Optional[List[str]] = None, feature_cache: Any = None, compile: bool = False,
        selection: Optional[Selection] = None, pause_at: Optional[int] = None, resume: Any = None) -> FitResult:
    """Fine-tune ``model`` for up to ``epochs`` epochs; score it and keep weights by ``selection``.

    Args:
        train: a resident :class:`autotl.tensors.TensorSet`, or an :class:`autotl.streaming.StreamSet`
            (streamed in batches; new augmented views every epoch when the trial augments).
        val: the validation split, resident or streamed.
        params: a :class:`autotl.space.TrialParams` (strategy, learning rates, recipe knobs).
        reporter: an Optuna trial (``report(value, step)``, ``should_prune()``) or None.
        on_epoch: called as ``on_epoch(epoch, val_metric, train_loss)`` after each epoch.
        task: the target task (default: multiclass); ``labels`` names its outputs for reports.
        feature_cache: an :class:`autotl.features.FeatureCache`: frozen leading layers then run
            once per search instead of every epoch, when the trial allows it.
        compile: run the network through ``torch.compile`` (the weights stay the module's own).
        selection: how the epochs become the trial's score and which weights it keeps (default:
            the best epoch, ties broken by validation loss). ``best_value`` is always the best epoch's.
        pause_at: stop after this many epochs (counted from the first, whatever ``resume`` is) with
            ``result.paused`` and a ``result.checkpoint`` that resumes the fit.
        resume: an :class:`autotl.pausing.FitCheckpoint`: go on from where that fit paused. On the
            CPU the rest trains bit for bit as the fit that never paused would have.

    Raises:
        TrialError: the loss became NaN or infinite.
    """
    task = task or Task()
    selection = selection or Selection("best")
    maximize = better(metric, 1.0, 0.0)
    _seed_epoch(seed, 0)
    generator = torch.Generator()
    module = model.module
    result = FitResult()
    result.drop_path_slots = set_drop_path(module, params.drop_path) if params.drop_path > 0 else 0
    set_trainable(model, _phase_groups(model, params, "ft"))  # the optimizer holds every parameter that will train
    module.to(device)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
    steps = len(_batches(len(train), params.batch_size, torch.Generator().manual_seed(0)))
    optimizer, scheduler = make_optimizer(model, params, epochs=epochs, steps_per_epoch=steps)
    l2sp = None
    if params.l2sp == "on" and (params.l2sp_weight or 0) > 0:
        l2sp = L2SP(module, [n for n, p in module.named_parameters() if p.requires_grad and n not in model.head],
                    params.l2sp_weight)
    result.lp_epochs = lp_epochs(params, epochs)
    if result.lp_epochs:
        set_trainable(model, _phase_groups(model, params, "lp"))
    frozen_norms = frozen_norm_layers(module)
    mixup = _mixup(params, task, model.num_outputs) if modality_of(model.data_config).mixable else None
    if mixup is not None:
        from timm.loss import SoftTargetCrossEntropy

        criterion: nn.Module = SoftTargetCrossEntropy()  # Mixup applies the label smoothing
    else:
        criterion = task.loss(params.label_smoothing if task.mixable or task.name == "multilabel" else 0.0)
    autocast, amp_dtype = _autocast(device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype is torch.float16 else None

    y_train = train.y.to(device)
    start = time.perf_counter()
    update, first = 0, 0
    if resume is not None:
        update, first = _restore(resume, module, optimizer, scaler, result, device)
        scheduler.step_update(num_updates=update)
        if result.lp_epochs and first >= result.lp_epochs:
            set_trainable(model, _phase_groups(model, params, "ft"))
            frozen_norms = frozen_norm_layers(module)
    phase = _Phase(model, params, train, val, device, autocast, feature_cache, task,
                   torch.compile(module) if compile else None)
    phase.begin("lp" if result.lp_epochs and first < result.lp_epochs else "ft", result)
    last_out = None
    y_val = None
    for epoch in range(first, epochs):
        if result.lp_epochs and epoch == result.lp_epochs and epoch > first:  # LP-FT: fine-tune from here
            set_trainable(model, _phase_groups(model, params, "ft"))
            frozen_norms = frozen_norm_layers(module)
            phase.begin("ft", result)
        # Every random source from the seed and the epoch: a fit resumed here draws what it would have.
        generator.manual_seed(_seed_epoch(seed, epoch))
        set_train_mode(module, frozen_norms)
        losses = []
        epoch_start = time.perf_counter()
        for x, idx in phase.epoch(_batches(len(train), params.batch_size, generator)):
            y = y_train[idx.to(device)]
            result.train_samples += int(idx.shape[0])
            if mixup is not None:
                if len(x) % 2:  # timm's Mixup pairs images within the batch
                    x, y = x[:-1], y[:-1]
                x, y = mixup(x, y)
            if device.type == "cuda" and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = criterion(phase.forward(x), y)
            if l2sp is not None:
                loss = loss + l2sp.penalty(module)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if params.grad_clip > 0:
                from timm.utils import dispatch_clip_grad

                dispatch_clip_grad([p for p in module.parameters() if p.grad is not None], params.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            update += 1
            scheduler.step_update(num_updates=update)
            losses.append(loss.detach())  # kept on the device: reading it every step would sync a GPU
        epoch_loss = float(torch.stack(losses).float().mean()) if losses else math.nan  # waits for the device
        result.epoch_train_seconds.append(time.perf_counter() - epoch_start)
        if losses and not math.isfinite(epoch_loss):
            raise TrialError(f"the training loss became {epoch_loss} at epoch {epoch + 1}",
                             "lower head_lr or narrow its range in the search space")
        rows: List[int] = []
        out = predict_outputs(module, val, device, task, forward=phase.forward, x=phase.val_x, rows=rows)
        y_val = val.y.numpy()[rows]
        value, val_loss = task.score(metric, y_val, out), task.val_loss(y_val, out)
        result.curve.append(value)
        result.val_loss.append(val_loss)
        result.train_loss.append(epoch_loss)
        result.epochs_run = epoch + 1
        if result.best_value is None or better(metric, value, result.best_value):
            result.best_value = value
        if selection.is_better_epoch(value, val_loss, None if result.best_epoch < 0 else (
                result.curve[result.best_epoch], result.val_loss[result.best_epoch]), maximize):
            result.best_epoch = epoch
            if selection.keeps_best_epoch:  # a copy beside the weights: no trip to the CPU every better epoch
                result.state_dict = _weights(module, device)
                result.val_details = task.details(y_val, out, labels or [str(i) for i in range(model.num_outputs)])
        last_out = out
        if on_epoch is not None:
            on_epoch(epoch, value, result.train_loss[-1])
        if reporter is not None:
            reporter.report(value, epoch + 1)  # fidelity counts epochs from 1, like min_epochs and epochs
            if epoch + 1 < epochs and reporter.should_prune():  # a fully trained trial is complete, not pruned
                result.pruned = True
                break
        if pause_at is not None and epoch + 1 == pause_at and epoch + 1 < epochs:
            result.paused = True
            result.checkpoint = _capture(result, epoch + 1, update, module, optimizer, scaler, selection)
            break
    result.score, result.selected_epoch = selection.score(result.curve, result.best_epoch)
    if not selection.keeps_best_epoch and result.curve and last_out is not None:
        result.state_dict = _weights(module)
        result.val_details = task.details(y_val, last_out, labels or [str(i) for i in range(model.num_outputs)])
    result.state_dict = _on_cpu(result.state_dict)
    result.seconds = time.perf_counter() - start
    return result


def _seed_epoch(seed: int, epoch: int) -> int:
    """Seed torch, Python and NumPy for ``epoch`` of a fit with ``seed``; returns the seed used."""
    value = (seed * 1_000_003 + epoch) % (2 ** 31)
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)
    return value


def _capture(result: FitResult, epoch: int, update: int, module: nn.Module, optimizer: Any, scaler: Any,
             selection: Selection) -> Any:
    from .pausing import FitCheckpoint

    return FitCheckpoint(epoch=epoch, update=update, weights=_weights(module), optimizer=optimizer.state_dict(),
                         history={k: getattr(result, k) for k in FitResult.HISTORY},
                         best_weights=_on_cpu(result.state_dict) if selection.keeps_best_epoch else None,
                         scaler=scaler.state_dict() if scaler is not None else None)


def _restore(checkpoint: Any, module: nn.Module, optimizer: Any, scaler: Any, result: FitResult,
             device: torch.device) -> tuple:
    """Load a paused fit's state into this one; returns (updates, epochs) done."""
    import copy

    module.load_state_dict(checkpoint.weights)
    optimizer.load_state_dict(copy.deepcopy(checkpoint.optimizer))
    if scaler is not None and checkpoint.scaler:
        scaler.load_state_dict(checkpoint.scaler)
    for key, value in checkpoint.history.items():
        setattr(result, key, copy.deepcopy(value))
    result.state_dict = checkpoint.best_weights
    result.epochs_run = checkpoint.epoch
    return checkpoint.update, checkpoint.epoch


def _weights(module: nn.Module, device: Any = "cpu") -> Dict[str, torch.Tensor]:
    """A copy of the module's weights as they are now, on ``device``."""
    return {k: v.detach().to(device, copy=True) for k, v in module.state_dict().items()}


def _on_cpu(state: Optional[Dict[str, torch.Tensor]]) -> Optional[Dict[str, torch.Tensor]]:
    """``state`` with every tensor on the CPU (those already there are not copied)."""
    return None if state is None else {k: v.to("cpu") for k, v in state.items()}


def evaluate(module: nn.Module, data: Any, device: torch.device, task: Optional[Task] = None,
             labels: Optional[List[str]] = None) -> Dict[str, Any]:
    """Every metric of the task on ``data``, and its report extras under ``details``."""
    task = task or Task()
    module.to(device)
    rows: List[int] = []
    out = predict_outputs(module, data, device, task, rows=rows)
    y = data.y.numpy()[rows]
    scores: Dict[str, Any] = task.scores(y, out)
    details = task.details(y, out, labels or [str(i) for i in range(out.shape[1] if out.ndim == 2 else 1)])
    scores["details"] = details
    if details.get("kind") == "confusion":
        scores["confusion_matrix"] = details["matrix"]
    return scores
