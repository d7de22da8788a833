"""Regularizers for transfer: stochastic depth (drop-path) and L2-SP.

Drop-path uses timm's ``DropPath``, set after the network is built, so it works for every
source model whose blocks carry timm's ``drop_path*`` slots (timm sets them to ``Identity`` when
built without it), including zoo and hub models built by plugins. It adds no parameters, so the
exported weights do not change shape.

L2-SP (Li et al., 2018) pulls the transferred weights toward their pretrained values:
``weight / 2 * sum ||w - w0||^2`` over the backbone parameters that train.
"""
from __future__ import annotations

from typing import Dict, Iterable, List

import torch
from torch import nn

DROP_PATH_SLOTS = ("drop_path", "drop_path1", "drop_path2")


def set_drop_path(module: nn.Module, rate: float) -> int:
    """Give each residual block's drop-path slot a rate rising linearly to ``rate`` with depth.

    Returns how many slots were set (0: the network has none, and the knob has no effect).
    """
    from timm.layers import DropPath

    slots = [(m, attr) for m in module.modules() for attr in DROP_PATH_SLOTS
             if isinstance(getattr(m, attr, None), (nn.Identity, DropPath))]
    owners: List[nn.Module] = []
    for m, _ in slots:
        if not owners or owners[-1] is not m:
            owners.append(m)
    depth = {id(m): i for i, m in enumerate(owners)}
    for m, attr in slots:
        r = rate * depth[id(m)] / max(1, len(owners) - 1)
        setattr(m, attr, DropPath(r) if r > 0 else nn.Identity())
    return len(slots) if rate > 0 else 0


class L2SP:
    """The L2-SP penalty, anchored at the named parameters' values when it is created."""

    def __init__(self, module: nn.Module, names: Iterable[str], weight: float) -> None:
        params = dict(module.named_parameters())
        self.weight = float(weight)
        self.anchors: Dict[str, torch.Tensor] = {n: params[n].detach().clone() for n in names}

    def penalty(self, module: nn.Module) -> torch.Tensor:
        """``weight / 2 * sum ||w - w0||^2``; zero when there is nothing to anchor."""
        params = dict(module.named_parameters())
        total = None
        for name, anchor in self.anchors.items():
            p = params[name]
            if not p.requires_grad:
                continue
            term = (p - anchor.to(p.device)).pow(2).sum()
            total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * self.weight * total
