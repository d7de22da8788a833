"""Batches streamed from a store: what a split is when it is not kept resident.

A :class:`StreamSet` reads each batch's stored forms, makes their views (the evaluation crop, or
the trial's augmentation) in DataLoader workers sized to the machine, and hands the batches to its
modality's ``to_device`` step (images: timm's ``PrefetchLoader``, which copies the next batch to the
device while the current one trains, with pinned memory and a side stream on CUDA, and normalises it
there; text: the token ids as int64). The device holds a batch or
two, never the split. A sample whose read or view fails is dropped from its batch, counted,
warned about once and left out of later epochs: it never stops the trial.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

#: Below this many samples, worker processes cost more to start than the views they share.
MIN_IMAGES_FOR_WORKERS = 2000


def loader_workers(n_images: int, cpus: Optional[int] = None) -> int:
    """DataLoader workers for streaming a split: none for small sets or small machines, else one
    per spare core (at most 8), leaving a core to the training loop."""
    import os

    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    if n_images < MIN_IMAGES_FOR_WORKERS or cpus <= 2:
        return 0
    return min(8, cpus - 1)


class _Views(torch.utils.data.Dataset):
    """Set position -> (uint8 view or None, position)."""

    def __init__(self, store: Any, rows: np.ndarray, view: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.store, self.rows, self.view = store, rows, view

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, p: int) -> Tuple[Optional[torch.Tensor], int]:
        try:
            return self.view(self.store.read(int(self.rows[p]))), p
        except Exception:  # unreadable now (a file changed, a store damaged): skipped, never fatal
            return None, p


def _collate(samples: Sequence[Tuple[Optional[torch.Tensor], int]]) -> Tuple[torch.Tensor, torch.Tensor]:
    """A uint8 batch of the readable samples, and positions: kept ones, then ``-(p + 1)`` for failed ones
    (one tensor, so timm's PrefetchLoader carries it to the device like a target)."""
    kept = [x for x, _ in samples if x is not None]
    positions = [p for x, p in samples if x is not None] + [-(p + 1) for x, p in samples if x is None]
    x = torch.stack(kept) if kept else torch.zeros((0, 3, 1, 1), dtype=torch.uint8)  # never yielded; broadcasts as an image batch
    return x, torch.tensor(positions, dtype=torch.long)


class _EpochBatches(torch.utils.data.Sampler):
    """The current epoch's batches: one loader (and its persistent workers) serves every epoch."""

    def __init__(self) -> None:
        self.batches: List[List[int]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass(eq=False)
class StreamSet:
    """A split streamed in batches from ``store``: samples ``rows`` of it with targets ``y``; views
    become model inputs on the device through ``modality.to_device(loader, data_config, device)``."""

    store: Any
    rows: np.ndarray
    y: torch.Tensor
    view: Callable[[np.ndarray], torch.Tensor]
    modality: Any
    data_config: Dict[str, Any]
    digest: str
    shown: Sequence[str] = ()  # the shown path of each row, for warnings
    augmented: bool = False
    workers: Optional[int] = None  # None: loader_workers() decides
    pin_memory: bool = False
    failed: Dict[int, str] = field(default_factory=dict)  # position -> shown path, found while streaming
    known: Optional[Dict[str, str]] = None  # the search's unreadable items (shown path -> reason), shared
    _loaders: Dict[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def _prefetcher(self, device: torch.device):
        key = str(device)
        if key not in self._loaders:
            sampler = _EpochBatches()
            workers = loader_workers(len(self)) if self.workers is None else self.workers
            loader = torch.utils.data.DataLoader(
                _Views(self.store, self.rows, self.view), batch_sampler=sampler, collate_fn=_collate,
                num_workers=workers, pin_memory=self.pin_memory and device.type == "cuda",
                persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)
            self._loaders[key] = (sampler, self.modality.to_device(loader, self.data_config, device))
        return self._loaders[key]

    def batches(self, batches: Sequence[Any], device: torch.device) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """(model inputs on ``device``, their positions in this set) per batch, in order."""
        sampler, prefetcher = self._prefetcher(device)
        chosen = ([int(i) for i in batch if int(i) not in self.failed] for batch in batches)
        sampler.batches = [b for b in chosen if b]
        for x, positions in prefetcher:
            kept = int(x.shape[0])  # shapes are known on the host: no device sync in the common case
            if kept != int(positions.shape[0]):
                self._lost((-positions[kept:] - 1).tolist())
                positions = positions[:kept]
            if kept:
                yield x, positions

    def _lost(self, positions: List[int]) -> None:
        from .errors import warn

        known = self.known if self.known is not None else {}
        for p in positions:
            self.failed[p] = self.shown[p] if p < len(self.shown) else f"sample {p}"
        new = [self.failed[p] for p in positions if self.failed[p] not in known]
        known.update({path: "unreadable while streaming" for path in new})
        if new:  # once per search, not once per trial
            warn(f"skipped {len(new)} unreadable image(s) found while streaming, e.g. {new[0]}",
                 "remove or replace the file; the search goes on without it")

    def close(self) -> None:
        """Stop the loader's worker processes now (they also stop when the set is dropped)."""
        self._loaders.clear()


def sequential(n: int, batch_size: int = 256) -> List[range]:
    """Positions 0..n-1 in consecutive batches: the order evaluation reads a split in."""
    return [range(s, min(n, s + batch_size)) for s in range(0, n, batch_size)]
