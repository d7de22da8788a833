"""First-party plugin: parameter-efficient fine-tuning adapters.

``lora``: low-rank updates (peft's LoRA) on the backbone's linear and conv layers, plus a new
linear head. Only the LoRA matrices and the head train. Before export the updates are merged
into the weights (``merge_and_unload``), so ``best/`` is the plain network with a linear head: a
timm network exports as ``format: "timm"``, and no peft is needed to load it.

``bitfit``: the ``linear`` head, and of the backbone only the biases train (BitFit).

peft is optional (``pip install autotl[lora]``); it is imported only when a LoRA model is built
or merged, so loading this plugin stays cheap and ``bitfit`` works without it. A space that lists
``lora`` without peft installed drops it with a warning.
"""
from __future__ import annotations

import re
from typing import Any, List, Mapping, Tuple

from torch import nn

from autotl import PLAIN_HEAD, TargetAdapter, hookimpl
from autotl_heads import LinearHeadModel, attach_linear

#: ``targets`` knob -> which layers of the body get LoRA. ``all``: every Linear and Conv2d.
TARGETS = ("attn", "attn_mlp", "all")
_ATTN = re.compile(r"attn|attention")
_MLP = re.compile(r"mlp|intermediate\.dense|\.output\.dense")  # timm's mlp; BERT's feed-forward pair
#: Path components that mark the input embedding of a network without timm's ``group_matcher``.
_STEM_PARTS = {"stem", "conv_stem", "patch_embed", "embed", "embeddings"}


def _stem_patterns(backbone: nn.Module) -> List[str]:
    """Regexes (matched at the start of parameter names, as timm does) for the network's stem."""
    if not hasattr(backbone, "group_matcher"):
        return []
    stem = backbone.group_matcher(coarse=True).get("stem")
    if stem is None:
        return []
    if isinstance(stem, str):
        return [stem]
    return [s[0] if isinstance(s, (tuple, list)) else s for s in stem]


def body_layers(backbone: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The Linear and Conv2d layers of the backbone's body, in module order: not its stem or patch
    embedding (timm: the ``stem`` group of ``group_matcher``; otherwise modules under a ``stem``,
    ``patch_embed``, ``conv_stem``, ``embed`` or ``embeddings`` path component, and the first
    conv/linear layer, which reads the raw image). Call it before the new head is attached."""
    layers = [(n, m) for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    patterns = _stem_patterns(backbone)
    if patterns:
        return [(n, m) for n, m in layers
                if not any(re.match(p, f"{n}.{pn}") for p in patterns for pn, _ in m.named_parameters())]
    body = [(n, m) for n, m in layers if not _STEM_PARTS & set(n.split("."))]
    embeds = any(isinstance(m, nn.Embedding) for m in backbone.modules())  # token ids in: no layer reads pixels
    if layers and body and body[0][0] == layers[0][0] and not embeds:
        body = body[1:]  # the first layer reads the raw image: the stem of a plain CNN
    return body


def select_targets(layers: List[Tuple[str, nn.Module]], targets: str) -> List[str]:
    """Names of the layers that get LoRA. ``attn``: Linear layers inside attention blocks (a name
    containing ``attn``); ``attn_mlp``: those and the Linear layers inside MLP blocks (``mlp``);
    ``all``: every Linear and Conv2d. An empty choice (``attn`` on a CNN) falls back to ``all``."""
    if targets not in TARGETS:
        raise ValueError(f"targets must be one of {list(TARGETS)}, got {targets!r}")
    linear = [(n, m) for n, m in layers if isinstance(m, nn.Linear)]
    if targets == "attn":
        chosen = [n for n, _ in linear if _ATTN.search(n)]
    elif targets == "attn_mlp":
        chosen = [n for n, _ in linear if _ATTN.search(n) or _MLP.search(n)]
    else:
        chosen = []
    return chosen or [n for n, _ in layers]


def attach_lora(backbone: Any, num_outputs: int, params: Mapping[str, Any]) -> Any:
    """A new linear head, and LoRA on the body's layers chosen by ``targets``."""
    import peft

    # Choose the layers first, so neither the new head nor the stem can be picked.
    layers = body_layers(backbone)
    if hasattr(backbone, "reset_classifier"):
        backbone.reset_classifier(num_outputs)  # timm's own head: merged, it is plain timm again
        model, prefix = backbone, ""
    else:
        model, prefix = LinearHeadModel(backbone, backbone.feature_width, num_outputs), "backbone."
    names = [prefix + n for n in select_targets(layers, str(params.get("targets", "attn_mlp")))]
    if not names:
        raise ValueError("the backbone has no Linear or Conv2d layer outside its stem for LoRA")
    # Full paths from the root: peft matches a list entry exactly or as a dotted suffix, and a
    # full path is the suffix of no other module (a bare "proj" would also hit patch_embed.proj).
    config = peft.LoraConfig(target_modules=names, r=int(params.get("rank", 8)),
                             lora_alpha=int(params.get("alpha", 16)), lora_dropout=float(params.get("dropout", 0.0)))
    return peft.get_peft_model(model, config)


def _no_backbone(name: str) -> bool:
    return False  # LoRA matrices are new parameters: they train as the head, the base weights never


def _biases_only(name: str) -> bool:
    return name.endswith("bias")


def merge_lora(module: Any) -> Any:
    """Fold the LoRA updates into the weights and return the plain network (in place)."""
    return module.merge_and_unload()


@hookimpl
def autotl_register_target_adapters(register):
    register(TargetAdapter(
        name="lora", attach=attach_lora, requires=("peft",),
        space={"rank": {"choices": [4, 8, 16]}, "alpha": {"choices": [8, 16, 32]},
               "dropout": {"choices": [0.0, 0.1]}, "targets": {"choices": list(TARGETS)}},
        trains_backbone=_no_backbone,
        merge=merge_lora, exports_as=PLAIN_HEAD, exports_plain_timm=True,
        description="LoRA on the backbone's attention/MLP/conv layers plus a linear head; merged for export",
        trains="LoRA matrices + linear head",
    ))
    register(TargetAdapter(
        name="bitfit", attach=attach_linear, space={}, exports_plain_timm=True,
        trains_backbone=_biases_only,
        description="a linear head, and of the backbone only the biases train (BitFit)",
        trains="backbone biases + linear head",
    ))
