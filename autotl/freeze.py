"""Freeze depth, BatchNorm policy and learning-rate groups, all counted in layer groups.

Freeze depth is a fraction of the backbone's layer groups, frozen from the input side:
0 trains everything, 1 trains only the adapter (a linear probe). BatchNorm layers whose
parameters are all frozen keep their running statistics fixed.
"""
from __future__ import annotations

import math
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple

from torch import nn

from .model import AdaptedModel


def frozen_group_count(depth: float, n_groups: int) -> int:
    """How many of ``n_groups`` groups a freeze depth in [0, 1] freezes (halves round up)."""
    return int(math.floor(max(0.0, min(1.0, depth)) * n_groups + 0.5))


STRATEGIES = ("freeze_depth", "lp_ft", "surgical")


def trainable_groups(n_groups: int, *, strategy: str = "freeze_depth", freeze_depth: float = 0.0,
                     surgical_group: Optional[float] = None, phase: str = "ft") -> FrozenSet[int]:
    """Which layer groups train.

    ``freeze_depth``: all but the first ``freeze_depth`` fraction. ``lp_ft``: none in the
    linear-probe phase (``phase="lp"``), then as ``freeze_depth``. ``surgical``: only the one
    group at relative position ``surgical_group`` (0 = the first, next to the input; 1 = the last).
    """
    if strategy == "surgical":
        pos = 1.0 if surgical_group is None else max(0.0, min(1.0, surgical_group))
        return frozenset({int(round(pos * (n_groups - 1)))}) if n_groups else frozenset()
    if strategy == "lp_ft" and phase == "lp":
        return frozenset()
    return frozenset(range(frozen_group_count(freeze_depth, n_groups), n_groups))


def tower_knob(params: Any, tower: str, knob: str, first: Any) -> Any:
    """A composite network's part's own value of ``knob`` (``text_freeze_depth``, ``text_lr_mult``: the
    trial's ``<tower>_<knob>``); ``first`` (the shared knob's value) when the trial has none, and
    always for the first part, which the shared knobs (``freeze_depth``, ``backbone_lr_mult``) set."""
    value = getattr(params, f"{tower}_{knob}", None)
    return first if value is None else value


def model_trainable_groups(model: AdaptedModel, params: Any, phase: str = "ft") -> FrozenSet[int]:
    """Which of the model's layer groups train in ``phase`` under the trial's freeze strategy; a
    composite network's parts (``model.towers``) each count their own groups and freeze depth."""
    def groups(n: int, depth: float) -> FrozenSet[int]:
        return trainable_groups(n, strategy=params.strategy, freeze_depth=depth,
                                surgical_group=params.surgical_group, phase=phase)

    if not model.towers:
        return groups(len(model.groups), params.freeze_depth)
    out = set()
    for i, (name, indices) in enumerate(model.towers):
        depth = params.freeze_depth if i == 0 else tower_knob(params, name, "freeze_depth", params.freeze_depth)
        out |= {indices[k] for k in groups(len(indices), depth)}
    return frozenset(out)


def set_trainable(model: AdaptedModel, groups: Iterable[int]) -> List[str]:
    """Let the head and the backbone parameters of ``groups`` train (where the adapter allows);
    freeze the rest. Returns the frozen parameter names."""
    allowed = set(groups)
    group_of = model.group_of()
    last = len(model.groups) - 1
    frozen = []
    for name, param in model.module.named_parameters():
        train = name in model.head or (group_of.get(name, last) in allowed and model.may_train(name))
        param.requires_grad_(train)
        if not train:
            frozen.append(name)
    return sorted(frozen)


def apply_freeze_depth(model: AdaptedModel, depth: float) -> List[str]:
    """Freeze the first ``depth`` fraction of the backbone's groups; return the frozen parameter names."""
    return set_trainable(model, trainable_groups(len(model.groups), freeze_depth=depth))


def frozen_norm_layers(module: nn.Module) -> List[nn.Module]:
    """Layers that must stay in eval mode while the rest trains: BatchNorm layers whose affine
    parameters are all frozen (their running statistics stay the source's), and dropout inside a
    frozen block (a module whose own parameters are all frozen, e.g. a frozen BERT layer's attention
    or output), so a frozen part computes the same features in every epoch, which is what the
    feature cache serves, instead of noise no trained weight can use."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                out.append(m)
        children = list(m.children())
        own = list(m.parameters(recurse=False)) + [p for c in children if not isinstance(c, nn.modules.dropout._DropoutNd)
                                                   for p in c.parameters(recurse=False)]
        if own and not any(p.requires_grad for p in own):
            out += [c for c in children if isinstance(c, nn.modules.dropout._DropoutNd)]
    return out


def set_train_mode(module: nn.Module, frozen_norms: List[nn.Module]) -> None:
    """``module.train()``, but frozen BatchNorm layers keep using (and keep) their running statistics."""
    module.train()
    for m in frozen_norms:
        m.eval()


def _no_weight_decay(module: nn.Module) -> set:
    names = set()
    for prefix, m in module.named_modules():
        if hasattr(m, "no_weight_decay") and callable(m.no_weight_decay):
            try:
                names |= {f"{prefix}.{n}" if prefix else n for n in m.no_weight_decay()}
            except Exception:
                pass
    return names


def optimizer_param_groups(model: AdaptedModel, *, weight_decay: float, backbone_lr: str,
                           backbone_lr_mult: float = 1.0, layer_decay: float = 1.0,
                           tower_lr_mults: Optional[Dict[str, float]] = None,
                           backbone_scale: float = 1.0) -> List[Dict[str, Any]]:
    """Parameter groups with an ``lr_scale`` relative to the head's learning rate.

    ``multiplier``: every backbone parameter gets ``backbone_lr_mult``. ``layer_decay``: timm's
    ``param_groups_layer_decay`` when the network has a ``group_matcher`` (per block), else
    ``layer_decay ** distance`` over autotl's layer groups. Biases, norms and the network's
    ``no_weight_decay()`` names get no weight decay. A composite network's parts (``model.towers``)
    count their layer-decay distance each from its own last group, and ``tower_lr_mults`` (by part)
    scales a part's rates on top. ``backbone_scale`` scales every backbone rate of a one-part network
    (a text source's ``text_lr_mult``: its modality's multiplier).
    """
    module = model.module
    if backbone_lr == "layer_decay" and hasattr(module, "group_matcher"):
        from timm.optim import param_groups_layer_decay

        groups = param_groups_layer_decay(module, weight_decay=weight_decay, layer_decay=layer_decay,
                                          no_weight_decay_list=tuple(_no_weight_decay(module)))
        head_ids = {id(p) for n, p in module.named_parameters() if n in model.head}
        out = []
        for g in groups:  # the adapter's head always trains at the head's rate
            head = [p for p in g["params"] if id(p) in head_ids]
            body = [p for p in g["params"] if id(p) not in head_ids]
            if body:
                out.append({**g, "params": body})
            if head:
                out.append({**g, "params": head, "lr_scale": 1.0})
        return [{k: v for k, v in g.items() if k != "param_names"} for g in out]

    group_of = model.group_of()
    n_groups = len(model.groups)
    skip_decay = _no_weight_decay(module)
    buckets: Dict[Tuple[float, float], List[nn.Parameter]] = {}
    tower_of = {g: (tower, max(indices)) for tower, indices in model.towers if indices for g in indices}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        group = group_of.get(name, n_groups - 1)
        tower, last = tower_of.get(group, (None, n_groups - 1))
        if name in model.head:
            scale = 1.0
        elif backbone_lr == "layer_decay":
            scale = layer_decay ** (last + 1 - group)
        else:
            scale = backbone_lr_mult
        if name not in model.head:
            scale *= (tower_lr_mults or {}).get(tower, 1.0) if tower is not None else backbone_scale
        wd = 0.0 if (param.ndim <= 1 or name in skip_decay) else weight_decay
        buckets.setdefault((scale, wd), []).append(param)
    return [{"params": ps, "lr_scale": s, "weight_decay": wd} for (s, wd), ps in buckets.items()]
