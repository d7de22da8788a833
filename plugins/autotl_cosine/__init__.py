"""First-party plugin: a cosine-similarity classifier head (adapter ``cosine``).

It is also the worked example for plugin authors (docs/plugins.md, "Worked example"): a whole
target adapter in one short module, using only the public API (``autotl.hookimpl`` and
``autotl.TargetAdapter``).

The head scores class ``k`` as ``scale * cos(features, w_k)``: the features and each class weight
are L2-normalised, so only their directions matter, and a learnable ``scale`` (a temperature)
sets how peaked the softmax is. This often helps when the target classes have few images.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from autotl import TargetAdapter, hookimpl


class CosineHead(nn.Module):
    """``scale * normalize(x) @ normalize(W).T``, with ``W`` (classes x width) and ``scale`` learnable."""

    def __init__(self, width: int, num_outputs: int, init_scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_outputs, width))
        nn.init.normal_(self.weight, std=0.01)  # only its direction matters
        self.scale = nn.Parameter(torch.tensor([float(init_scale)]))  # 1-d: gets no weight decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.normalize(x, dim=-1), F.normalize(self.weight, dim=-1))


class CosineClassifier(nn.Module):
    """The backbone (returning pooled ``(N, width)`` features) followed by the cosine head."""

    def __init__(self, backbone: nn.Module, head: CosineHead) -> None:
        super().__init__()
        self.backbone = backbone  # its parameters stay the backbone's: freeze depth applies to them
        self.head = head          # new parameters: autotl counts them as the head, which always trains

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def attach_cosine(backbone: Any, num_outputs: int, params: Mapping[str, Any]) -> nn.Module:
    """The adapter's ``attach``: called once per trial with this adapter's sampled knobs in ``params``.

    autotl has already removed the source classifier, and set ``backbone.feature_width`` to the
    width of the features the backbone returns: size the new layer by it.
    """
    if hasattr(backbone, "reset_classifier"):  # a timm network: make sure it returns pooled features
        backbone.reset_classifier(0)
    head = CosineHead(backbone.feature_width, num_outputs, params.get("init_scale", 10.0))
    return CosineClassifier(backbone, head)


@hookimpl
def autotl_register_target_adapters(register):
    register(TargetAdapter(
        name="cosine",
        attach=attach_cosine,
        # The knobs, as a search-space fragment. A fixed value is not searched, but it is recorded
        # with the trial and exported, and a space file can turn it into a range:
        #   adapter_params: {cosine: {init_scale: {choices: [10, 16, 30]}}}
        space={"init_scale": 10.0},
        # Not a plain timm network, so best/ is format "autotl" and is rebuilt through this plugin.
        exports_plain_timm=False,
        description="cosine-similarity classifier with a learnable scale",
        # What trains, in a few words, for `autotl adapters` (unfrozen: above the freeze depth).
        trains="cosine head + unfrozen backbone",
    ))
