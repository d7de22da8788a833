"""The first trials of a new search: a fixed, published fine-tuning recipe on the leading backbones.

A search then starts from what a careful practitioner would run by hand, so it is never worse than
that recipe, and TPE learns from good trials early. The recipe trains the new head first, as fastai's
``fine_tune`` does, then every layer at one rate, as BiT-HyperRule does (once the head is trained,
its gradients no longer need shielding from the backbone), with AdamW at fastai's 2e-3, cosine decay,
the weight decay of MAE/BEiT fine-tuning, label smoothing 0.1 and batches of 16, so that a small
target still gets several updates per epoch (see shared/REFERENCES.md). The backbone rate and batch
were chosen among those published values on the few-shot tasks of ``benchmarks/search_quality.py``
(its ``fixed`` arm is this recipe), where tllib's 10x lower backbone rate left the tiny targets
clearly under-trained in 15 epochs. Its only augmentation is a small shift (up to 1/16 of the side): geometric
jitter that suits every image domain, where a flip or a strong crop is wrong for some (digits,
text), and the search tries those anyway. It is projected onto the search space: a knob the space
fixes keeps the space's value, a sampled knob gets the recipe's value clipped into its range, or
the nearest (else the first) of its choices. The first of these trials (on the leading backbone) is
never pruned, so a search always holds the recipe's full result and can only improve on it; the
others run as ordinary trials that the pruner may stop, so a weak backbone's recipe costs what any
weak trial costs (three protected trials cost 45 of a 40-trial search's ~290 epochs).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import optuna

from .space import ParamSpec, Space

#: The user attr of a queued trial that the pruner must never stop (the first default-recipe trial).
PROTECTED = "never_pruned"

#: The recipe, in the space's knob names.
DEFAULT_RECIPE: Dict[str, Any] = {
    "strategy": "lp_ft", "lp_fraction": 0.2, "freeze_depth": 0.0, "surgical_group": 1.0,
    "optimizer": "adamw", "momentum": 0.9, "head_lr": 2e-3, "backbone_lr": "multiplier", "backbone_lr_mult": 1.0,
    "layer_decay": 0.75, "weight_decay": 0.05, "batch_size": 16, "schedule": "cosine", "warmup_epochs": 1,
    "label_smoothing": 0.1, "crop_scale": 1.0, "hflip": 0.0, "translate": 0.0625, "augmentation": "none",
    "aug_magnitude": 9, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "drop_path": 0.0,
    "grad_clip": 0.0, "l2sp": "off", "l2sp_weight": 0.01,
    # Text (a text source, or an image+text pair's text part) fine-tunes whole at BERT's published rates
    # (2e-5 to 5e-5, Sun et al. 2019), 1/50 of the head's 2e-3: at the head's own rate the recipe trial
    # stayed at chance on the review-sentiment task (benchmarks/text_quality.py).
    "text_freeze_depth": 0.0, "text_lr_mult": 0.02,
}


def _project(spec: ParamSpec, value: Any) -> Any:
    """The value a sampled knob takes in the recipe: the recipe's, made valid for this spec."""
    if spec.kind == "categorical":
        if value in spec.choices:
            return value
        numbers = [c for c in spec.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if isinstance(value, (int, float)) and numbers:  # the nearest number on offer, e.g. batch 16 for 32
            return min(numbers, key=lambda c: (abs(c - value), c))
        return spec.choices[0]
    if value is None or isinstance(value, str):
        value = math.sqrt(spec.low * spec.high) if spec.log else (spec.low + spec.high) / 2
    value = min(max(value, spec.low), spec.high)
    if spec.step:
        value = spec.low + round((value - spec.low) / spec.step) * spec.step
        value = min(value, spec.high)
    return int(round(value)) if spec.kind == "int" else float(value)


def _adapter_value(spec: ParamSpec) -> Any:
    """An adapter knob's recipe value: its first choice, or the middle of its range."""
    if spec.kind == "categorical":
        return spec.choices[0]
    return _project(spec, None)


def project_params(space: Space, backbone: str, wanted: Dict[str, Any]) -> Dict[str, Any]:
    """The Optuna params of a trial of ``space`` on ``backbone`` that comes as close as the space
    allows to ``wanted`` (knob values by plain or Optuna name; missing knobs take the recipe's)."""
    adapter = wanted.get("adapter") if wanted.get("adapter") in space.adapters else (
        space.plain_head or space.adapters[0])  # the recipe: a plain head when the space has one
    sampled: Dict[str, Any] = {"backbone": backbone, "adapter": adapter, "task": space.task,
                               "modality": space.modality}
    out: Dict[str, Any] = {"backbone": backbone, "adapter": adapter}
    plain = {k.split("@", 1)[0]: v for k, v in wanted.items()}
    for spec in space.file.params:
        if spec.name in sampled or not spec.applies(sampled):
            continue
        if spec.kind == "fixed":
            sampled[spec.name] = spec.value
            continue
        value = _project(spec, plain.get(spec.name, DEFAULT_RECIPE.get(spec.name)))
        sampled[spec.name] = value
        out[spec.optuna_name or spec.name] = value
    for spec in space.adapter_specs.get(adapter, ()):
        if spec.kind != "fixed" and spec.applies(sampled):
            given = plain.get(f"{adapter}.{spec.name}")
            out[f"{adapter}.{spec.optuna_name or spec.name}"] = (_project(spec, given) if given is not None
                                                                 else _adapter_value(spec))
    return out


def recipe_params(space: Space, backbone: str) -> Dict[str, Any]:
    """The Optuna params that make a trial of ``space`` run the default recipe on ``backbone``."""
    return project_params(space, backbone, {})


def leading_backbones(space: Space, plugins: Any, k: int) -> List[str]:
    """The ``k`` backbones to try first: by their source accuracy when plugins record one (zoo
    sidecars do), else in the space's order."""
    def accuracy(name: str) -> float:
        meta = dict(plugins.sources.get(name).metadata or {})
        for key in ("accuracy", "top1", "imagenet_top1"):
            if isinstance(meta.get(key), (int, float)):
                return float(meta[key])
        return float("-inf")

    ranked = sorted(space.backbones, key=lambda n: (-accuracy(n), space.backbones.index(n)))
    return ranked[:max(0, k)]


def enqueue_default_trials(study: optuna.Study, space: Space, plugins: Any, k: int,
                           backbones: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Queue the default recipe on the leading backbones as a new study's first trials."""
    if k <= 0 or any(t.state != optuna.trial.TrialState.WAITING for t in study.trials):
        return []  # a study that has run trials is a resumed one: it had its first trials
    queued = []
    for i, name in enumerate(backbones or leading_backbones(space, plugins, k)):
        params = recipe_params(space, name)
        attrs = {"origin": "default recipe", **({PROTECTED: True} if i == 0 else {})}
        study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=True)
        queued.append(params)
    return queued


def enqueue_backbone_cover(study: optuna.Study, space: Space, order: Optional[Sequence[str]] = None) -> int:
    """``sampler: {cover_backbones: true}``: the sampler's random startup trials go round the backbones.

    Each of these trials fixes only its backbone (the best-ranked first) and leaves every other knob
    to the sampler, so the search sees every backbone with at least two more recipes before TPE
    starts to model them, instead of whichever backbones random draws happen to favour. Returns how
    many it queued.
    """
    cfg = dict(space.file.sampler)
    if not cfg.get("cover_backbones") or len(space.backbones) < 2:
        return 0
    if any(t.state != optuna.trial.TrialState.WAITING for t in study.trials):
        return 0
    startup = int(cfg.get("n_startup_trials", 10))
    queued = sum(t.state == optuna.trial.TrialState.WAITING for t in study.trials)
    names = [b for b in (order or []) if b in space.backbones] + [b for b in space.backbones if b not in (order or [])]
    n = max(startup - queued, 2 * len(names))  # at least two recipes per backbone
    for i in range(n):
        study.enqueue_trial({"backbone": names[i % len(names)]}, user_attrs={"origin": "backbone cover"})
    return n
