"""How a trial's epochs become its score, and which epoch's weights the trial keeps.

With tens of validation images, one image is several points, and a trial scored by its best epoch
(the maximum over epochs) is scored by its luckiest epoch: the search then prefers the trials whose
validation curve is noisiest, and the winner's validation score overstates its test score. The rules:

- ``best``: the best epoch; among epochs with the same score, the one with the lower validation
  loss. The trial keeps that epoch's weights.
- ``last``: the last epoch's score and weights.
- ``smoothed`` (with ``window`` K, default 3): the mean score of the last K epochs, and the last
  epoch's weights. With a schedule that decays to a small rate, the last epochs are one model seen
  K times; their mean is a steadier estimate of it than any single epoch.

A space file picks the rule with ``selection: NAME`` or ``selection: {name: smoothed, window: 3}``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

RULES = ("best", "last", "smoothed")
DEFAULT_RULE = "smoothed"  # chosen by benchmarks/search_quality.py: see benchmarks/RESULTS.md
DEFAULT_WINDOW = 3


@dataclass(frozen=True)
class Selection:
    """One selection rule (see the module docstring)."""

    name: str = DEFAULT_RULE
    window: int = DEFAULT_WINDOW

    @classmethod
    def from_section(cls, section: Optional[Mapping[str, object]]) -> "Selection":
        """From a space file's parsed ``selection`` section (None: the default rule)."""
        if not section:
            return cls()
        return cls(name=str(section.get("name", cls.name)), window=int(section.get("window", DEFAULT_WINDOW)))

    @property
    def keeps_best_epoch(self) -> bool:
        """Whether the trial keeps its best epoch's weights (else its last epoch's)."""
        return self.name == "best"

    def is_better_epoch(self, value: float, loss: Optional[float], best: Optional[Tuple[float, Optional[float]]],
                        maximize: bool) -> bool:
        """Whether an epoch (score ``value``, validation ``loss``) beats the best so far under ``best``."""
        if best is None:
            return True
        best_value, best_loss = best
        if value != best_value:
            return value > best_value if maximize else value < best_value
        return loss is not None and best_loss is not None and loss < best_loss

    def score(self, curve: Sequence[float], best_epoch: int) -> Tuple[float, int]:
        """The trial's score and the epoch (0-based) whose weights it keeps."""
        if not curve:
            return math.nan, -1
        if self.name == "best":
            return float(curve[best_epoch]), best_epoch
        last = len(curve) - 1
        if self.name == "last":
            return float(curve[last]), last
        tail = curve[-max(1, self.window):]
        return float(sum(tail) / len(tail)), last

    def describe(self) -> str:
        """One sentence for reports and the summary."""
        if self.name == "best":
            return "each trial is scored by its best validation epoch (ties: lower validation loss) and keeps it"
        if self.name == "last":
            return "each trial is scored by its last epoch and keeps the last epoch's weights"
        return (f"each trial is scored by the mean validation score of its last {self.window} epochs and keeps "
                "the last epoch's weights")

    def as_dict(self) -> dict:
        return {"rule": self.name if self.name != "smoothed" else f"smoothed{self.window}", "name": self.name,
                "window": self.window, "description": self.describe()}
