"""Rank source models before training: one forward pass each over the target's train split.

Each candidate's pooled features (the same linear-probe features the feature cache serves, so a
later linear-probe trial finds them cached) are scored by LogME, cross-validated k-NN accuracy and
a shrinkage H-score (:mod:`autotl.scores`). The combined rank orders the candidates; the search uses
it as a prior (which backbones get the first trials, and ``--preselect K``), never as the only judge.
Ranking needs class labels, so it runs for multiclass tasks.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

SCORES = ("logme", "knn", "hscore")
RANK_NAME = "rank.json"


@dataclass
class Ranking:
    """Scores per backbone, the combined order (best first) and what each step cost."""

    order: List[str]
    scores: Dict[str, Dict[str, float]]
    seconds: Dict[str, Dict[str, float]]
    skipped: Dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {"order": self.order, "scores": self.scores, "seconds": self.seconds, "skipped": self.skipped,
                "rank": {name: i + 1 for i, name in enumerate(self.order)}}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Ranking":
        return cls(order=list(data["order"]), scores=dict(data["scores"]), seconds=dict(data.get("seconds", {})),
                   skipped=dict(data.get("skipped", {})))


def pooled_features(source: Any, adapters: Any, dataset: Any, tensors: Any, device: Any, cache: Any) -> Any:
    """The linear-probe features of ``source`` on the train split (numpy, float64), taken from
    ``source`` with the registered plain head (:func:`autotl.heads.plain_head_adapter`)."""
    import torch

    from .features import FeatureCache, plan_split
    from .freeze import set_trainable
    from .heads import plain_head_adapter
    from .model import build_model
    from .trainer import _autocast

    model = build_model(source, plain_head_adapter(adapters, "ranking"), max(2, len(dataset.classes)), {})
    set_trainable(model, ())
    model.module.to(device)
    split = plan_split(model, frozenset())
    train = tensors.get(dataset.train, model.data_config)
    if split is None:  # no way to cut the head off: fall back to the whole network's outputs
        from .streaming import sequential

        model.module.eval()
        with torch.no_grad():
            feats = torch.cat([model.module(x).float().cpu() for x, _ in train.batches(sequential(len(train)), device)])
    else:
        feats = (cache or FeatureCache()).features(model, split, train, device, _autocast(device)[0])
    return feats.double().reshape(len(train), -1).numpy()


def rank_sources(plugins: Any, dataset: Any, backbones: Sequence[str], device: Any, tensors: Any = None,
                 cache: Any = None) -> Ranking:
    """Score every backbone on ``dataset``'s train split and order them (a failing one is skipped).

    Raises:
        PluginError: no plain head adapter is registered, so no backbone could be scored.
    """
    from . import scores as S
    from .heads import plain_head_adapter
    from .tensors import TensorCache

    plain_head_adapter(plugins, "ranking")  # one clear error, not every backbone skipped for it
    tensors = tensors or TensorCache()
    labels = dataset.train.labels
    table: Dict[str, Dict[str, float]] = {}
    seconds: Dict[str, Dict[str, float]] = {}
    skipped: Dict[str, str] = {}
    for name in backbones:
        start = time.perf_counter()
        try:
            feats = pooled_features(plugins.sources.get(name), plugins.adapters, dataset, tensors, device, cache)
        except Exception as exc:  # a source that cannot run is left out of the ranking, not fatal
            skipped[name] = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            continue
        seconds[name] = {"features": round(time.perf_counter() - start, 4)}
        table[name] = {}
        for score, fn in (("logme", S.logme), ("knn", S.knn_accuracy), ("hscore", S.hscore)):
            t0 = time.perf_counter()
            table[name][score] = float(fn(feats, labels))
            seconds[name][score] = round(time.perf_counter() - t0, 4)
    order = S.combined_rank(table) if table else []
    return Ranking(order=order, scores=table, seconds=seconds, skipped=skipped)


def write_ranking(ranking: Ranking, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RANK_NAME
    path.write_text(json.dumps(ranking.as_dict(), indent=2))
    return path


def ranking_table(ranking: Ranking) -> List[List[Any]]:
    """Rows for a terminal table: rank, backbone, each score, and the seconds each step took."""
    rows = []
    for i, name in enumerate(ranking.order, 1):
        s, t = ranking.scores[name], ranking.seconds[name]
        rows.append([i, name, s["logme"], s["knn"], s["hscore"], t["features"],
                     round(t["logme"] + t["knn"] + t["hscore"], 4)])
    return rows


def study_ranking(study: Any) -> Optional[Ranking]:
    data = study.user_attrs.get("ranking")
    return Ranking.from_dict(data) if data else None
