"""Target tasks: what the network's outputs mean, how they are trained, scored and reported.

``multiclass`` (one label per image; softmax, cross-entropy), ``multilabel`` (any number of
labels per image; sigmoid, binary cross-entropy) and ``regression`` (a number per image; the
target is standardised with the train split's mean and std for training, and predictions are
mapped back). Target adapters do not care: they only see the number of outputs.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .config import METRICS, TASK_METRICS
from .errors import UsageError


class Task:
    """The multiclass task; the other tasks override what differs."""

    name = "multiclass"
    mixable = True  # mixup/cutmix and label smoothing apply

    def num_outputs(self, classes: Sequence[str]) -> int:
        return len(classes)

    def targets(self, labels: np.ndarray) -> torch.Tensor:
        """Dataset labels -> the tensor the loss takes."""
        return torch.as_tensor(labels, dtype=torch.long)

    def loss(self, label_smoothing: float = 0.0) -> nn.Module:
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        """Network outputs -> what predictions mean: class probabilities here."""
        return torch.softmax(logits.float(), dim=1)

    def score(self, metric: str, y_true: np.ndarray, out: np.ndarray) -> float:
        from sklearn import metrics as skm

        pred = out.argmax(1)
        if metric == "accuracy":
            return float(skm.accuracy_score(y_true, pred))
        if metric == "balanced_accuracy":
            return float(skm.balanced_accuracy_score(y_true, pred))
        if metric == "macro_f1":
            return float(skm.f1_score(y_true, pred, average="macro", zero_division=0))
        raise _unknown(metric, self.name)

    def scores(self, y_true: np.ndarray, out: np.ndarray) -> Dict[str, float]:
        return {m: self.score(m, y_true, out) for m in TASK_METRICS[self.name]}

    def val_loss(self, y_true: np.ndarray, out: np.ndarray) -> float:
        """The loss of the outputs, without smoothing: it breaks ties between epochs of equal score."""
        if not len(y_true):
            return float("nan")
        picked = out[np.arange(len(y_true)), np.asarray(y_true, dtype=int)]
        return float(-np.log(np.clip(picked, 1e-12, 1.0)).mean())

    def details(self, y_true: np.ndarray, out: np.ndarray, labels: Sequence[str]) -> Dict[str, Any]:
        """What the report shows for the best trial: a confusion matrix (rows are true classes)."""
        from sklearn.metrics import confusion_matrix

        matrix = confusion_matrix(y_true, out.argmax(1), labels=list(range(out.shape[1]))).tolist()
        return {"kind": "confusion", "labels": list(labels), "matrix": matrix}

    def export(self) -> Dict[str, Any]:
        """What ``best/config.json`` needs to turn outputs into predictions."""
        return {"task": self.name}


class MultiLabelTask(Task):
    """Several labels per image: one sigmoid per label, decided at ``threshold``."""

    name = "multilabel"
    mixable = False

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def targets(self, labels: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(labels, dtype=torch.float32)

    def loss(self, label_smoothing: float = 0.0) -> nn.Module:
        return _SmoothedBCE(label_smoothing)

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits.float())

    def score(self, metric: str, y_true: np.ndarray, out: np.ndarray) -> float:
        from sklearn import metrics as skm

        pred = (out >= self.threshold).astype(int)
        if metric == "macro_f1":
            return float(skm.f1_score(y_true, pred, average="macro", zero_division=0))
        if metric == "micro_f1":
            return float(skm.f1_score(y_true, pred, average="micro", zero_division=0))
        if metric == "map":
            present = [j for j in range(y_true.shape[1]) if y_true[:, j].any()]
            if not present:
                return 0.0
            return float(np.mean([skm.average_precision_score(y_true[:, j], out[:, j]) for j in present]))
        raise _unknown(metric, self.name)

    def val_loss(self, y_true: np.ndarray, out: np.ndarray) -> float:
        p = np.clip(out, 1e-7, 1 - 1e-7)
        y = np.asarray(y_true, dtype=np.float64)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else float("nan")

    def details(self, y_true: np.ndarray, out: np.ndarray, labels: Sequence[str]) -> Dict[str, Any]:
        """Per label: support, F1 at the threshold and average precision."""
        from sklearn import metrics as skm

        pred = (out >= self.threshold).astype(int)
        rows = []
        for j, name in enumerate(labels):
            support = int(y_true[:, j].sum())
            ap = float(skm.average_precision_score(y_true[:, j], out[:, j])) if support else None
            rows.append({"label": name, "support": support,
                         "f1": float(skm.f1_score(y_true[:, j], pred[:, j], zero_division=0)), "ap": ap})
        return {"kind": "per_label", "threshold": self.threshold, "rows": rows}

    def export(self) -> Dict[str, Any]:
        return {"task": self.name, "threshold": self.threshold}


class RegressionTask(Task):
    """A number per image, trained on the standardised target with mean squared error."""

    name = "regression"
    mixable = False

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        self.mean, self.std = float(mean), float(std) or 1.0

    def num_outputs(self, classes: Sequence[str]) -> int:
        return 1

    def targets(self, labels: np.ndarray) -> torch.Tensor:
        return torch.as_tensor((np.asarray(labels, dtype=np.float64) - self.mean) / self.std, dtype=torch.float32)

    def loss(self, label_smoothing: float = 0.0) -> nn.Module:
        return _SquaredError()

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float()[:, 0] * self.std + self.mean

    def _true(self, y: np.ndarray) -> np.ndarray:
        """Scores compare with the original targets; tensors hold them standardised."""
        return np.asarray(y, dtype=np.float64) * self.std + self.mean

    def score(self, metric: str, y_true: np.ndarray, out: np.ndarray) -> float:
        from sklearn import metrics as skm

        y = self._true(y_true)
        if metric == "mae":
            return float(skm.mean_absolute_error(y, out))
        if metric == "rmse":
            return float(np.sqrt(skm.mean_squared_error(y, out)))
        if metric == "r2":
            return float(skm.r2_score(y, out)) if len(y) > 1 else 0.0
        raise _unknown(metric, self.name)

    def val_loss(self, y_true: np.ndarray, out: np.ndarray) -> float:
        return float(np.mean((self._true(y_true) - out) ** 2)) if len(y_true) else float("nan")

    def details(self, y_true: np.ndarray, out: np.ndarray, labels: Sequence[str]) -> Dict[str, Any]:
        """Up to 1,000 (true, predicted) pairs for a scatter plot."""
        y = self._true(y_true)
        keep = np.linspace(0, len(y) - 1, num=min(len(y), 1000)).astype(int) if len(y) else []
        return {"kind": "scatter", "target": labels[0] if labels else "target",
                "points": [[float(y[i]), float(out[i])] for i in keep]}

    def export(self) -> Dict[str, Any]:
        return {"task": self.name, "target_mean": self.mean, "target_std": self.std}


class _SmoothedBCE(nn.Module):
    def __init__(self, smoothing: float) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.bce = nn.BCEWithLogitsLoss()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.bce(logits, target * (1 - self.smoothing) + 0.5 * self.smoothing)


class _SquaredError(nn.Module):
    def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out[:, 0].float(), target)


def _unknown(metric: str, task: str) -> UsageError:
    return UsageError(f"metric {metric!r} does not apply to a {task} task",
                      f"use one of {', '.join(TASK_METRICS[task])}")


def make_task(name: str, labels: Optional[np.ndarray] = None) -> Task:
    """The task object; regression standardises with the given (train) labels."""
    if name == "multilabel":
        return MultiLabelTask()
    if name == "regression":
        y = np.asarray(labels if labels is not None else [0.0], dtype=np.float64)
        return RegressionTask(mean=float(y.mean()), std=float(y.std()) or 1.0)
    return Task()


def task_from_config(config: Mapping[str, Any]) -> Task:
    """The task a saved model was trained for (``best/config.json``)."""
    name = config.get("task", "multiclass")
    if name == "multilabel":
        return MultiLabelTask(threshold=float(config.get("threshold", 0.5)))
    if name == "regression":
        return RegressionTask(mean=config.get("target_mean", 0.0), std=config.get("target_std", 1.0))
    return Task()


def direction(metric: str) -> str:
    return METRICS[metric]


def better(metric: str, a: float, b: Optional[float]) -> bool:
    """Whether ``a`` beats ``b`` (None: nothing yet) for this metric's direction."""
    if b is None:
        return True
    return a > b if METRICS[metric] == "maximize" else a < b


__all__: List[str] = ["Task", "MultiLabelTask", "RegressionTask", "make_task", "task_from_config", "direction",
                      "better"]
