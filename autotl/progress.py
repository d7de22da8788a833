"""Live progress of a search: a tqdm bar on a terminal, one plain line per trial in logs.

The search reports four events (trial started, epoch finished, trial finished, search ended) to
a :class:`Progress`. The base class ignores them, which is what the Python API does unless it
is given a progress object; the CLI picks :func:`make_progress` for its stdout.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional, TextIO

from .fmt import fmt_seconds, fmt_value
from .types import TrialRecord


class Progress:
    """Receives the search's events; this base class ignores them."""

    def search_started(self, total: Optional[int], timeout: Optional[float]) -> None:
        """``total`` trials (None when only a timeout bounds the search) in at most ``timeout`` s."""

    def trial_started(self, number: int, backbone: str, epochs: int) -> None:
        """Trial ``number`` builds ``backbone`` and trains for up to ``epochs`` epochs."""

    def epoch_finished(self, number: int, epoch: int, epochs: int, value: float) -> None:
        """Trial ``number`` finished ``epoch`` (from 1) of ``epochs`` with validation ``value``."""

    def trial_finished(self, record: TrialRecord, best: Optional[float]) -> None:
        """A trial ended (complete, pruned or failed); ``best`` is the study's best value so far."""

    def search_finished(self) -> None:
        """No more trials will start in this process."""


class _Clock(Progress):
    """Counts finished trials and estimates the time left from their mean duration."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.total: Optional[int] = None
        self.timeout: Optional[float] = None
        self.started = clock()
        self.done = 0
        self.best: Optional[float] = None

    def search_started(self, total: Optional[int], timeout: Optional[float]) -> None:
        self.total, self.timeout, self.started, self.done = total, timeout, self.clock(), 0

    def elapsed(self) -> float:
        return self.clock() - self.started

    def eta(self) -> Optional[float]:
        """Seconds until the search ends: trials left at the mean pace so far, capped by the timeout."""
        left = None
        if self.total is not None and self.done:
            left = self.elapsed() / self.done * max(0, self.total - self.done)
        if self.timeout is not None:
            cap = max(0.0, self.timeout - self.elapsed())
            left = cap if left is None else min(left, cap)
        return left

    def count(self) -> str:
        return f"{self.done}/{self.total}" if self.total is not None else str(self.done)

    def finished_line(self, record: TrialRecord, best: Optional[float]) -> str:
        self.done += 1
        self.best = best
        params = record.params
        reason = f"  {record.fail_reason}" if record.fail_reason else ""
        return (f"trial {record.number:>3} {record.state:<8} val={fmt_value(record.value)} best={fmt_value(best)}  "
                f"{record.backbone}  freeze={fmt_value(params.get('freeze_depth'))}  "
                f"head_lr={fmt_value(params.get('head_lr'))}  epochs={record.epochs_run}  {record.seconds:.1f}s  "
                f"[{self.count()} done, {fmt_seconds(self.elapsed())} elapsed, ETA {fmt_seconds(self.eta())}]{reason}")


class LineProgress(_Clock):
    """One plain line per finished trial, for logs and pipes."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.stream = stream

    def trial_finished(self, record: TrialRecord, best: Optional[float]) -> None:
        print(self.finished_line(record, best), file=self.stream, flush=True)


class BarProgress(_Clock):
    """A tqdm bar over trials; its suffix shows the running trial's backbone, epoch and value."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.stream = stream
        self.bar: Any = None
        self.backbone = ""
        self.current = ""

    def search_started(self, total: Optional[int], timeout: Optional[float]) -> None:
        from tqdm import tqdm

        super().search_started(total, timeout)
        self.bar = tqdm(total=total, unit="trial", desc="search", file=self.stream, dynamic_ncols=True,
                        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed} elapsed{postfix}"
                        if total is not None else "{desc} {n_fmt} trials, {elapsed} elapsed{postfix}")
        self._show()

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(f", ETA {fmt_seconds(self.eta())}, best {fmt_value(self.best)}{self.current}",
                                     refresh=True)

    def trial_started(self, number: int, backbone: str, epochs: int) -> None:
        self.backbone = backbone
        self.current = f" | trial {number}: {backbone}, epoch 0/{epochs}"
        self._show()

    def epoch_finished(self, number: int, epoch: int, epochs: int, value: float) -> None:
        self.current = f" | trial {number}: {self.backbone}, epoch {epoch}/{epochs}, val {fmt_value(value)}"
        self._show()

    def trial_finished(self, record: TrialRecord, best: Optional[float]) -> None:
        line = self.finished_line(record, best)
        self.current = ""
        if self.bar is not None:
            self.bar.write(line, file=self.stream)
            self.bar.update(1)
            self._show()

    def search_finished(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def make_progress(stream: Optional[TextIO] = None, quiet: bool = False) -> Progress:
    """The progress display for ``stream``: none when quiet, a bar on a terminal, lines otherwise."""
    stream = stream if stream is not None else sys.stdout
    if quiet:
        return Progress()
    isatty = getattr(stream, "isatty", None)
    return BarProgress(stream) if isatty is not None and isatty() else LineProgress(stream)
