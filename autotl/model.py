"""Source model + target adapter -> the network a trial trains, with its layer groups.

The source's classifier is removed first (timm ``reset_classifier(0)``, or the ``head``
attribute the plugin names); the adapter then attaches its own. Parameters the adapter creates
are the *head*; the rest belong to the backbone's layer groups, in input-to-output order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from .errors import AutotlError, BuildError, TrialError
from .types import SourceModel, TargetAdapter


@dataclass
class AdaptedModel:
    """The trainable network and what the trainer needs to know about it."""

    module: nn.Module
    head: frozenset  # names of adapter-created parameters
    groups: Tuple[Tuple[str, ...], ...]  # backbone parameter names per layer group, input -> output
    data_config: Dict[str, Any]
    num_outputs: int
    trains_backbone: Optional[Callable[[str], bool]] = None  # the adapter's say on which backbone params train
    architecture: Optional[str] = None  # the timm architecture that rebuilds the backbone (see timm_architecture)
    #: A composite source's parts (``autotl.composite``): (modality name, its layer groups' indices in
    #: ``groups``), input part first; empty for a one-part network. Each part freezes and scales its
    #: learning rate on its own (``autotl.freeze.tower_groups``).
    towers: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()

    def group_of(self) -> Dict[str, int]:
        return {name: i for i, names in enumerate(self.groups) for name in names}

    def may_train(self, name: str) -> bool:
        """Whether the adapter lets this backbone parameter train at all (head parameters always do)."""
        return name in self.head or self.trains_backbone is None or bool(self.trains_backbone(name))


def _set_attr_path(root: nn.Module, path: str, value: nn.Module) -> None:
    *parents, last = path.split(".")
    obj = root
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def strip_source_head(net: nn.Module, source: SourceModel) -> nn.Module:
    """Remove the source classifier so the network returns pooled features."""
    if source.head:
        try:
            _set_attr_path(net, source.head, nn.Identity())
        except AttributeError as exc:
            raise TrialError(f"source model {source.name!r} has no submodule {source.head!r} to use as its head",
                             "fix the head= field of its SourceModel") from exc
    elif hasattr(net, "reset_classifier"):
        net.reset_classifier(0)
    return net


#: Trial knobs that set the key of the same name in a source's data config, when it has that key
#: (e.g. a text source's ``max_length``); other sources ignore them.
DATA_KNOBS = ("max_length",)


def resolve_data_config(source: SourceModel, net: Optional[nn.Module] = None,
                        knobs: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The preprocessing for this source. Images: its own data_config over what timm reads off the
    network. Another modality (``data_config["modality"]``, else ``source.modality``): its data config
    with the trial's :data:`DATA_KNOBS` applied (``knobs``, None values ignored), completed by the
    modality's ``resolve`` (e.g. ``input_size`` from ``max_length``)."""
    given = dict(source.data_config or {})
    name = str(given.get("modality") or source.modality or "image")
    if name == "image":
        from timm.data import resolve_data_config as timm_resolve

        cfg = timm_resolve(given, model=net, use_test_size=False)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    from .modality import get_modality

    given["modality"] = name
    for key, value in (knobs or {}).items():
        if key in DATA_KNOBS and key in given and value is not None:
            given[key] = value
    modality = get_modality(name)
    # A composite's parts resolve against their own networks (an image part through timm, off the net).
    cfg = modality.resolve(given, net) if getattr(modality, "parts", None) else modality.resolve(given)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}


def feature_width(net: nn.Module, source: SourceModel, data_config: Mapping[str, Any]) -> int:
    """Width of what the headless backbone returns, which adapters size their layers by.

    The source's ``num_features``, else timm's ``head_hidden_size`` (the pre-logits width, which
    differs from ``num_features`` in e.g. MobileNetV3), else ``num_features``, else one forward pass.
    """
    for width in (source.num_features, getattr(net, "head_hidden_size", None), getattr(net, "num_features", None)):
        if isinstance(width, int) and width > 0:
            return width
    from .modality import modality_of

    was_training = net.training
    net.eval()
    with torch.no_grad():
        out = net(modality_of(data_config).example_input(data_config, 1))
    net.train(was_training)
    if out.ndim != 2:
        raise TrialError(f"the backbone returns {tuple(out.shape)}, not pooled (N, C) features",
                         "set head= or return pooled features from build()")
    return int(out.shape[1])


def layer_groups(net: nn.Module, source: SourceModel) -> List[List[str]]:
    """Backbone parameter names per layer group, input to output order.

    timm networks use their coarse ``group_matcher``; others the source's ``layer_groups``
    regexes (unmatched parameters join the last group), else their top-level children.
    """
    names = [n for n, p in net.named_parameters()]
    if hasattr(net, "autotl_layer_groups"):  # a network that knows its groups (a composite's parts')
        groups = [list(g) for g in net.autotl_layer_groups()]
    elif hasattr(net, "group_matcher"):
        from timm.models import group_parameters

        grouped = group_parameters(net, net.group_matcher(coarse=True))
        groups = [list(v) for _, v in sorted(grouped.items())]
    elif source.layer_groups:
        patterns = [re.compile(p) for p in source.layer_groups]
        groups = [[] for _ in patterns]
        for n in names:
            idx = next((i for i, pat in enumerate(patterns) if pat.match(n)), len(patterns) - 1)
            groups[idx].append(n)
    else:
        order: Dict[str, List[str]] = {}
        for n in names:
            order.setdefault(n.split(".", 1)[0], []).append(n)
        groups = list(order.values())
    return [g for g in groups if g]


_REBUILT: Dict[str, Optional[str]] = {}


def _rebuilt_structure(architecture: str, model_kwargs: Mapping[str, Any]) -> Optional[str]:
    """The module structure (its ``repr``) of plain headless ``timm.create_model(architecture,
    num_classes=0, **model_kwargs)``, built on the meta device (no memory, no weights), once per process;
    None when timm cannot build it."""
    import json

    key = json.dumps([architecture, dict(model_kwargs)], sort_keys=True, default=str)
    if key not in _REBUILT:
        try:
            import timm

            with torch.device("meta"):
                _REBUILT[key] = repr(timm.create_model(architecture, pretrained=False, num_classes=0,
                                                       **dict(model_kwargs)))
        except Exception:
            _REBUILT[key] = None
    return _REBUILT[key]


def timm_architecture(net: nn.Module, source: SourceModel) -> Optional[str]:
    """The timm architecture that rebuilds ``net`` (already headless), so its export can be plain timm
    and load without the plugin. The source's own ``architecture`` when it names one; else, for a network
    that ``timm.create_model`` built (a timm class, with the architecture in its ``pretrained_cfg``, or
    ``default_cfg`` in older timm), that architecture, but only when rebuilding it with the source's
    ``model_kwargs`` gives the same modules (kwargs that change the layers, such as ``act_layer``, would
    otherwise be lost). The export still checks that the weights' names and shapes fit (kwargs such as
    ``img_size`` change only shapes). None otherwise."""
    if source.architecture:
        return source.architecture
    if not type(net).__module__.startswith("timm."):
        return None
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(net, attr, None)
        arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
        if isinstance(arch, str) and arch:
            return arch if _rebuilt_structure(arch, source.model_kwargs) == repr(net) else None
    return None


def build_model(source: SourceModel, adapter: TargetAdapter, num_outputs: int,
                adapter_params: Mapping[str, Any], net: Optional[nn.Module] = None,
                data_knobs: Optional[Mapping[str, Any]] = None) -> AdaptedModel:
    """Build the source network (or take ``net``), strip its classifier and attach the adapter.

    ``data_knobs``: the trial's values of :data:`DATA_KNOBS` (``TrialParams.data_knobs()``), which
    set the same keys of the model's data config when the source's has them."""
    if net is None:
        try:
            net = source.build()
        except AutotlError as exc:  # the plugin says what is wrong and how to fix it: keep both
            raise BuildError(f"source model {source.name!r} failed to build: {exc.what}",
                             exc.fix or "fix its plugin, or exclude it with --backbones") from exc
        except Exception as exc:
            raise BuildError(f"source model {source.name!r} failed to build: {type(exc).__name__}: {exc}",
                             "fix its plugin, or exclude it with --backbones") from exc
    if not isinstance(net, nn.Module):
        raise TrialError(f"source model {source.name!r} built a {type(net).__name__}, not a torch.nn.Module",
                         "make build() return the network")
    data_config = resolve_data_config(source, net, data_knobs)
    net = strip_source_head(net, source)
    architecture = timm_architecture(net, source)
    param_of = dict(net.named_parameters())
    groups_by_id = [[id(param_of[n]) for n in g] for g in layer_groups(net, source)]
    backbone_ids = {id(p) for p in net.parameters()}
    try:
        # Adapters size their layers by ``backbone.feature_width``; ``num_features`` keeps timm's meaning.
        net.feature_width = feature_width(net, source, data_config)
        if not getattr(net, "num_features", None):
            net.num_features = net.feature_width
    except TrialError:
        raise
    except Exception as exc:
        raise TrialError(f"could not run source model {source.name!r} on a {data_config['input_size']} input: {exc}",
                         "check its data_config input_size") from exc
    try:
        module = adapter.attach(net, num_outputs, dict(adapter_params))
    except Exception as exc:
        raise TrialError(f"target adapter {adapter.name!r} failed on {source.name!r}: {type(exc).__name__}: {exc}",
                         "fix the adapter plugin or exclude the pair") from exc
    if not isinstance(module, nn.Module):
        raise TrialError(f"target adapter {adapter.name!r} returned a {type(module).__name__}, not a torch.nn.Module",
                         "make attach() return the model")
    name_of = {id(p): n for n, p in module.named_parameters()}
    head = frozenset(n for n, p in module.named_parameters() if id(p) not in backbone_ids)
    groups = [tuple(name_of[i] for i in g if i in name_of) for g in groups_by_id]
    kept = [i for i, g in enumerate(groups) if g]
    return AdaptedModel(module=module, head=head, groups=tuple(groups[i] for i in kept),
                        data_config=data_config, num_outputs=num_outputs, trains_backbone=adapter.trains_backbone,
                        architecture=architecture, towers=_towers(net, kept))


def _towers(net: nn.Module, kept: List[int]) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """The network's ``autotl_towers`` ((modality, number of its layer groups), in group order) as
    indices into the groups that were kept (non-empty); () for a one-part network."""
    towers = list(getattr(net, "autotl_towers", None) or ())
    if not towers:
        return ()
    out, start = [], 0
    for name, count in towers:
        out.append((str(name), tuple(kept.index(i) for i in range(start, start + int(count)) if i in kept)))
        start += int(count)
    return tuple(out)


def count_parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def describe_source(source: SourceModel) -> Dict[str, Any]:
    """Parameters, input size and layer-group count, built on the meta device so nothing downloads."""
    make = source.build_untrained or source.build
    try:
        with torch.device("meta"):
            net = make()
        groups = layer_groups(strip_source_head(net, source), source)
        cfg = resolve_data_config(source, net)
        return {"params": count_parameters(net), "input_size": cfg.get("input_size"), "layer_groups": len(groups)}
    except Exception as exc:  # listing never fails on one bad model
        return {"params": None, "input_size": (source.data_config or {}).get("input_size"),
                "layer_groups": None, "error": f"{type(exc).__name__}: {exc}"}
