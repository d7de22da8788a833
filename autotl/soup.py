"""Greedy soup: one model whose weights average the best trials that share a backbone and adapter.

Fine-tuned models that start from the same pretrained weights tend to lie in one low-loss basin, so
the average of several of them often predicts better than any one, at the cost of one model
(Wortsman et al. 2022, "Model soups"). The greedy recipe: start from the best trial, take the next
best trials of the same backbone and adapter in order of their score, and keep each one whose
addition does not lower the validation score of the uniform average. The soup replaces ``best/``
only when it scores strictly better on validation than the best trial's own weights, so a search is
never worse for it, and it exports as the same plain network: no extra inference time.

The candidates are the models ``--keep-top`` keeps under ``top/``; ``--soup K`` keeps K of them for
the soup (and the folder is trimmed back to ``--keep-top`` afterwards).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

SOUP_KEY = "soup"  # in best/config.json: which trials the weights average


@dataclass(frozen=True)
class SoupResult:
    """What the soup did: the trials it averages, the validation scores before and after, whether it was kept."""

    trials: Tuple[int, ...]
    val: float
    single_val: float
    tried: int
    kept: bool

    def as_dict(self) -> Dict[str, Any]:
        return {"trials": list(self.trials), "val": self.val, "single_val": self.single_val, "tried": self.tried,
                "kept": self.kept}


def average(states: List[Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The uniform average of floating-point tensors; integer buffers (BatchNorm's step count) from the first."""
    out: Dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = torch.stack([s[key].float() for s in states]).mean(0).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def _candidates(artifacts: Path, best: Mapping[str, Any], maximize: bool) -> List[Tuple[float, Path]]:
    """The other kept models of this study with the best's backbone and adapter, best first."""
    from .bestmodel import TOP_DIR
    from .export import read_config

    found = []
    for folder in (artifacts / TOP_DIR).glob("trial-*"):
        try:
            _, config = read_config(str(folder))
        except Exception:
            continue
        same = all(config.get(k) == best.get(k) for k in ("study", "source_model", "adapter", "format",
                                                           "architecture", "num_classes"))
        if same and config.get("trial") != best.get("trial") and config.get("value") is not None:
            found.append((float(config["value"]), folder))
    found.sort(key=lambda e: e[0], reverse=maximize)
    return found


def greedy_soup(ctx: Any) -> Optional[SoupResult]:
    """Cook the soup for the search's ``best/`` (see the module docstring) and record the attempt in the
    study (user attr ``soup``). Returns None when there was nothing to try."""
    from .checkpoints import read_weights
    from .export import BEST_DIR, WEIGHTS_NAME, load_model, read_config, save_model
    from .tasks import METRICS, better
    from .trainer import predict_outputs

    if ctx.dataset.val is None or not len(ctx.dataset.val.labels):
        return None
    best_dir = ctx.artifacts / BEST_DIR
    try:
        _, config = read_config(str(best_dir))
    except Exception:
        return None
    if config.get("study") != ctx.name or config.get(SOUP_KEY):
        return None  # not this study's model, or already a soup (a resumed search that added nothing)
    maximize = METRICS[ctx.metric] == "maximize"
    candidates = _candidates(ctx.artifacts, config, maximize)
    if not candidates:
        return None
    module, _ = load_model(str(best_dir), ctx.plugins)
    module.to(ctx.device)
    val = ctx.tensors.get(ctx.dataset.val, config["data_config"])

    def score(state: Mapping[str, torch.Tensor]) -> float:
        module.load_state_dict(state)
        rows: List[int] = []
        out = predict_outputs(module, val, ctx.device, ctx.task, rows=rows)
        return ctx.task.score(ctx.metric, val.y.numpy()[rows], out)

    first = read_weights(str(best_dir / WEIGHTS_NAME))
    states = [read_weights(str(folder / WEIGHTS_NAME)) for _, folder in candidates]
    chosen, single, current = choose_ingredients(first, states, score, lambda a, b: better(ctx.metric, a, b))
    numbers = [int(config["trial"])] + [int(json.loads((candidates[i][1] / "config.json").read_text())["trial"])
                                        for i in chosen]
    kept = bool(chosen) and better(ctx.metric, current, single)
    result = SoupResult(trials=tuple(numbers), val=float(current), single_val=float(single),
                        tried=len(candidates) + 1, kept=kept)
    ctx.study.set_user_attr(SOUP_KEY, result.as_dict())
    if not kept:
        return result
    source = ctx.plugins.sources.get(config["source_model"])
    adapter = ctx.plugins.adapters.get(config["adapter"])
    extra = {k: v for k, v in config.items() if k in ("study", "trial", "value", "metric", "params", "task",
                                                       "threshold", "target_mean", "target_std")}
    save_model(str(best_dir), average([first] + [states[i] for i in chosen]), source=source, adapter=adapter,
               adapter_params=config.get("adapter_params") or {}, classes=config["classes"],
               data_config=config["data_config"], extra={**extra, SOUP_KEY: result.as_dict()},
               architecture=config.get("architecture"), plugins=ctx.plugins)  # the architecture found at build time
    return result


def choose_ingredients(first: Mapping[str, torch.Tensor], candidates: List[Mapping[str, torch.Tensor]],
                       score: Callable[[Mapping[str, torch.Tensor]], float],
                       better: Callable[[float, float], bool]) -> Tuple[List[int], float, float]:
    """The greedy recipe: the candidates (best first) whose addition does not lower the average's score.

    Returns the indices of the chosen candidates, the first model's own score and the soup's score.
    """
    single = current = score(first)
    ingredients, chosen = [first], []
    for i, state in enumerate(candidates):
        value = score(average(ingredients + [state]))
        if not better(current, value):  # no worse than the soup so far: keep it
            ingredients.append(state)
            chosen.append(i)
            current = value
    return chosen, single, current
