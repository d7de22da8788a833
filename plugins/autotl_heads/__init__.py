"""First-party plugin: target adapters that put a new head on the backbone.

``linear``: the source classifier replaced by one linear layer. On timm networks the head is
timm's own (``reset_classifier``), so the exported weights load into plain
``timm.create_model(arch, num_classes=C)``.
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


@hookimpl
def autotl_register_target_adapters(register):
    register(TargetAdapter(
        name="linear", attach=attach_linear, space={}, exports_plain_timm=True,
        description="the source classifier replaced by a linear layer",
    ))
