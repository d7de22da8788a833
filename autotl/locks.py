"""Advisory file locks (``flock``) that processes on one machine, or on a shared file system that
supports them, take around a folder they write or read as a whole."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def _held(fh: IO[str], shared: bool) -> Iterator[None]:
    import fcntl

    fcntl.flock(fh, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def file_lock(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold ``path``'s lock: exclusive for a writer, shared for readers (many at once, no writer)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh, _held(fh, shared):
        yield


@contextlib.contextmanager
def read_lock(path: Path) -> Iterator[None]:
    """A shared lock on ``path`` where one can be taken; none in a folder this process cannot write
    (a model copied to a read-only place has no writer to wait for)."""
    try:
        fh = open(path, "a+")
    except OSError:
        yield
        return
    with fh, _held(fh, shared=True):
        yield
