"""Stored forms of a split: each item decoded once into its compact form, read back per sample.

A stored form is an array of the modality's ``stored_dtype`` (images: uint8 height x width x 3;
text: int32 token ids) with at most three dimensions.

Three stores answer ``read(i)`` the same way:

* :class:`MemoryStore`: the stored forms in memory, for a split small enough to keep resident;
* :class:`DiskStore`: one flat file of stored forms plus an index, written once per (split,
  preprocessing size) in the run folder's ``data_cache/`` and read with ``pread``, so the bytes
  live in the operating system's page cache (shared by every trial and worker, reclaimable under
  pressure) and never in the process's own memory;
* :class:`LiveStore`: nothing stored; each read decodes the source file again (``--data-path
  stream``: no disk, each epoch pays the decode).

An item that cannot be decoded is skipped while building (``skipped``: position -> reason); a read
that fails later raises, and the streaming loader skips that sample then.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .modality import UNREADABLE, Modality

INDEX_NAME = "index.npy"
DATA_NAME = "data.u8"
SKIPPED_NAME = "skipped.json"


def store_digest(split_digest: str, stored_key: str) -> str:
    """The name of a split's stored forms at one preprocessing size."""
    return hashlib.blake2b(json.dumps([split_digest, stored_key]).encode(), digest_size=12).hexdigest()


class MemoryStore:
    """Stored forms held in memory (``None`` where an item was skipped)."""

    kind = "memory"

    def __init__(self, arrays: List[Optional[np.ndarray]], skipped: Dict[int, str], digest: str) -> None:
        self.arrays, self.skipped, self.digest = arrays, skipped, digest
        self.nbytes = sum(a.nbytes for a in arrays if a is not None)

    def __len__(self) -> int:
        return len(self.arrays)

    def read(self, i: int) -> np.ndarray:
        arr = self.arrays[i]
        if arr is None:
            raise OSError(f"item {i} was skipped")
        return arr


class DiskStore:
    """Stored forms in one file, located by an index of (offset, d0, d1, d2) rows: an array of fewer
    dimensions is kept with trailing sizes of 1 (text: (length, 1, 1)), and read back so."""

    kind = "disk"

    def __init__(self, folder: Path, digest: str, dtype: Any = np.uint8) -> None:
        self.folder, self.digest, self.dtype = Path(folder), digest, np.dtype(dtype)
        self.index = np.load(self.folder / INDEX_NAME)
        self.skipped = {int(k): v for k, v in json.loads((self.folder / SKIPPED_NAME).read_text()).items()}
        self.nbytes = 0  # nothing of it lives in this process
        self._fd: Optional[int] = None
        self._pid = -1

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> Dict[str, Any]:  # worker processes open their own descriptor
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def read(self, i: int) -> np.ndarray:
        offset, h, w, c = (int(v) for v in self.index[i])
        if h < 0:
            raise OSError(f"item {i} was skipped")
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.folder / DATA_NAME, os.O_RDONLY), os.getpid()
        size = h * w * c * self.dtype.itemsize
        raw = os.pread(self._fd, size, offset)
        if len(raw) != size:
            raise OSError(f"{self.folder / DATA_NAME} is truncated at item {i}")
        return np.frombuffer(raw, dtype=self.dtype).reshape(h, w, c)

    def __del__(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            try:
                os.close(self._fd)
            except OSError:
                pass


class LiveStore:
    """No stored forms: every read decodes the source item again."""

    kind = "live"

    def __init__(self, items: Sequence[Any], modality: Modality, data_config: Mapping[str, Any], digest: str) -> None:
        self.items, self.modality, self.data_config, self.digest = items, modality, dict(data_config), digest
        self.skipped: Dict[int, str] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int) -> np.ndarray:
        return self.modality.decode(self.items[i], self.data_config)


class _Decoder(torch.utils.data.Dataset):
    """Decodes items by position; a failure comes back as its reason, not an exception."""

    def __init__(self, items: Sequence[Any], modality: Modality, data_config: Mapping[str, Any]) -> None:
        self.items, self.modality, self.data_config = items, modality, dict(data_config)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Tuple[int, Optional[np.ndarray], str]:
        try:
            return i, self.modality.decode(self.items[i], self.data_config), ""
        except UNREADABLE as exc:
            return i, None, " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _decoded(items: Sequence[Any], modality: Modality, data_config: Mapping[str, Any], workers: int):
    """(position, stored form or None, reason) for every item, in order; in worker processes when asked."""
    dataset = _Decoder(items, modality, data_config)
    if workers <= 0:
        yield from (dataset[i] for i in range(len(dataset)))
        return
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=workers, collate_fn=list)
    for batch in loader:
        yield from batch


def build_memory(items: Sequence[Any], modality: Modality, data_config: Mapping[str, Any], digest: str,
                 workers: int = 0) -> MemoryStore:
    arrays: List[Optional[np.ndarray]] = []
    skipped: Dict[int, str] = {}
    for i, arr, reason in _decoded(items, modality, data_config, workers):
        arrays.append(arr)
        if arr is None:
            skipped[i] = reason
    return MemoryStore(arrays, skipped, digest)


def open_disk(folder: Path, items: Sequence[Any], modality: Modality, data_config: Mapping[str, Any], digest: str,
              workers: int = 0) -> DiskStore:
    """The split's stored forms under ``folder/<digest>/``, written now unless a complete copy is
    there. Writers take a lock and publish by renaming a finished folder, so several workers on one
    run folder build it once and never read a half-written one."""
    from .locks import file_lock

    final = Path(folder) / digest
    dtype = np.dtype(getattr(modality, "stored_dtype", np.uint8))
    if (final / INDEX_NAME).is_file():
        return DiskStore(final, digest, dtype)
    with file_lock(Path(folder) / f".{digest}.lock"):
        if (final / INDEX_NAME).is_file():
            return DiskStore(final, digest, dtype)
        tmp = Path(folder) / f".{digest}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        index = np.full((len(items), 4), -1, dtype=np.int64)
        skipped: Dict[int, str] = {}
        offset = 0
        with open(tmp / DATA_NAME, "wb") as fh:
            for i, arr, reason in _decoded(items, modality, data_config, workers):
                if arr is None:
                    skipped[i] = reason
                    continue
                arr = np.ascontiguousarray(arr, dtype=dtype)
                arr = arr.reshape(*arr.shape[:2], -1) if arr.ndim >= 2 else arr.reshape(-1, 1, 1)
                fh.write(arr.tobytes())
                index[i] = (offset, *arr.shape)
                offset += arr.nbytes
        np.save(tmp / INDEX_NAME, index)
        (tmp / SKIPPED_NAME).write_text(json.dumps(skipped))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    return DiskStore(final, digest, dtype)
