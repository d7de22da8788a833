"""First-party plugin: target adapters that put a new head on the backbone.

``linear``: the source classifier replaced by one linear layer. On timm networks the head is
timm's own (``reset_classifier``), so the exported weights load into plain
``timm.create_model(arch, num_classes=C)``.

``mlp``: pooled features -> ``Linear(feature_width, hidden)`` -> GELU -> Dropout ->
``Linear(hidden, C)``. The model is not a plain timm network, so it is exported as
``format: "autotl"`` and rebuilt through this plugin.
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from autotl import TargetAdapter, hookimpl


class LinearHeadModel(nn.Module):
    """A features-only backbone followed by a linear layer, for networks without timm's head API."""

    def __init__(self, backbone: nn.Module, num_features: int, num_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_outputs)

    def forward(self, x):
        return self.head(self.backbone(x))


def attach_linear(backbone: Any, num_outputs: int, params: Mapping[str, Any]) -> Any:
    """Replace the head with a linear layer of ``num_outputs``."""
    if hasattr(backbone, "reset_classifier"):
        backbone.reset_classifier(num_outputs)
        return backbone
    return LinearHeadModel(backbone, backbone.feature_width, num_outputs)


class MLPHeadModel(nn.Module):
    """A features-only backbone followed by a two-layer MLP head."""

    def __init__(self, backbone: nn.Module, num_features: int, hidden: int, dropout: float,
                 num_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_outputs))

    def forward(self, x):
        return self.head(self.backbone(x))


def attach_mlp(backbone: Any, num_outputs: int, params: Mapping[str, Any]) -> Any:
    """Wrap the headless backbone with an MLP head sized by ``backbone.feature_width``."""
    if hasattr(backbone, "reset_classifier"):
        backbone.reset_classifier(0)  # pooled features out (autotl already did this; harmless twice)
    return MLPHeadModel(backbone, backbone.feature_width, int(params.get("hidden", 256)),
                        float(params.get("dropout", 0.0)), num_outputs)


@hookimpl
def autotl_register_target_adapters(register):
    register(TargetAdapter(
        name="linear", attach=attach_linear, space={}, exports_plain_timm=True, plain_head=True,
        description="the source classifier replaced by a linear layer",
        trains="linear head + unfrozen backbone",
    ))
    register(TargetAdapter(
        name="mlp", attach=attach_mlp, exports_plain_timm=False,
        space={"hidden": {"choices": [256, 512]}, "dropout": {"low": 0.0, "high": 0.5}},
        description="a two-layer MLP head (Linear, GELU, Dropout, Linear)",
        trains="MLP head + unfrozen backbone",
    ))
