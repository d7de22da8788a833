"""A paused fit: everything a trial needs to go on training later, exactly as if it had never stopped.

Promotion-based multi-fidelity search (issue 14) pauses a trial at a rung and resumes it only if it is
promoted, instead of stopping it for good or training a promoted configuration from scratch. A fit
can be resumed bit for bit on the CPU because of two choices in :func:`autotl.trainer.fit`: every
random source (torch, Python, NumPy and the batch-order generator) is reseeded from the trial's seed
and the epoch at the start of each epoch, so no generator state needs saving; and the learning-rate
schedule is a function of the update count over the whole budget, so restoring the count restores
the rate. What remains is saved here: the weights, the optimizer's state, the update count, the
loss scaler's state, and the history of the epochs so far (curve, losses, the best epoch and its
weights when the selection rule keeps them).

A checkpoint is one safetensors file: every tensor, and the rest as JSON in the file's metadata.
Nothing is pickled, so loading a checkpoint never runs code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

import torch

META_KEY = "autotl.fit_checkpoint"


@dataclass
class FitCheckpoint:
    """The resumable state of a fit after ``epoch`` epochs (and ``update`` optimizer steps)."""

    epoch: int
    update: int
    weights: Dict[str, torch.Tensor]
    optimizer: Dict[str, Any]
    history: Dict[str, Any] = field(default_factory=dict)
    best_weights: Optional[Dict[str, torch.Tensor]] = None
    scaler: Optional[Dict[str, Any]] = None

    def save(self, path: Path) -> Path:
        """Write the checkpoint to the file ``path`` (its folder created if needed); returns the path."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"w/{k}": v for k, v in self.weights.items()}
        if self.best_weights is not None:
            tensors.update({f"b/{k}": v for k, v in self.best_weights.items()})
        state: Dict[str, Dict[str, Any]] = {}
        for pid, values in self.optimizer["state"].items():
            state[str(pid)] = {}
            for name, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"o/{pid}/{name}"] = value
                else:
                    state[str(pid)][name] = value
        meta = {"epoch": self.epoch, "update": self.update, "history": self.history, "scaler": self.scaler,
                "optimizer": {"param_groups": self.optimizer["param_groups"], "state": state},
                "has_best_weights": self.best_weights is not None}
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
                  metadata={META_KEY: json.dumps(meta)})
        return path

    @classmethod
    def load(cls, path: Path) -> "FitCheckpoint":
        """Read a checkpoint written by :meth:`save`."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads(fh.metadata()[META_KEY])
        tensors = load_file(str(path))
        weights = {k[2:]: v for k, v in tensors.items() if k.startswith("w/")}
        best = {k[2:]: v for k, v in tensors.items() if k.startswith("b/")} if meta["has_best_weights"] else None
        state: Dict[int, Dict[str, Any]] = {int(pid): dict(values) for pid, values in meta["optimizer"]["state"].items()}
        for key, value in tensors.items():
            if key.startswith("o/"):
                _, pid, name = key.split("/", 2)
                state.setdefault(int(pid), {})[name] = value
        optimizer = {"param_groups": meta["optimizer"]["param_groups"], "state": state}
        return cls(epoch=meta["epoch"], update=meta["update"], weights=weights, optimizer=optimizer,
                   history=meta["history"], best_weights=best, scaler=meta["scaler"])
