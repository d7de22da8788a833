"""Composite source models: one registered source per part of a composite modality, joined.

A composite modality (``image+text``, from the ``autotl_fusion`` plugin) reads items that hold one
input per part (an image and a text) and names its parts' modalities in ``parts``. Its source models
are every combination of registered sources of those modalities, named by joining the parts' names
with ``+`` (``zoo/digits-test_resnet+text/minilm-l6``). They are made when asked for (the source
registry calls :func:`compose_source` for a name it does not hold) and never listed, so ``autotl
backbones`` shows the parts, not their product. The modality's ``join(parts)`` builds the composite
``SourceModel``; the core then treats it like any source (one network, one data config), and its
network's ``autotl_towers`` tell the trainer which layer groups belong to which part, so each part
gets its own freeze depth and learning-rate multiplier.

``--backbones`` patterns select composites part by part: ``'zoo/*,text/*'`` pairs every zoo image
source with every text source; a part that an exclude glob matches leaves its composites out.
"""
from __future__ import annotations

import fnmatch
import itertools
from typing import Any, List, Optional, Sequence, Tuple

SEPARATOR = "+"


def composite_modality(name: str, plugins: Any = None) -> Optional[Any]:
    """The registered modality called ``name`` when it is a composite (has ``parts``), else None.

    Modalities are registered process-wide; with ``plugins`` given, a composite whose plugin is not
    loaded there (``--block-plugin``) counts as missing.

    Raises:
        PluginError: the composite's plugin is not loaded in ``plugins``.
    """
    from .modality import _MODALITIES

    modality = _MODALITIES.get(name)
    if modality is None or not getattr(modality, "parts", None):
        return None
    pm = getattr(plugins, "pm", None)
    if pm is not None and pm.get_plugin(_owner(modality)) is None:
        from .errors import PluginError

        raise PluginError(f"no loaded plugin provides the input modality {name!r}",
                          f"load the plugin {_owner(modality)!r} (drop --block-plugin {_owner(modality)} if given)")
    return modality


def _owner(modality: Any) -> str:
    """The plugin that registers a composite modality (its ``plugin``, else its top-level package)."""
    return getattr(modality, "plugin", None) or type(modality).__module__.split(".")[0]


def _composites() -> List[Any]:
    from .modality import _MODALITIES

    return [m for m in _MODALITIES.values() if getattr(m, "parts", None)]


def split_name(name: str, known: Sequence[str]) -> Optional[List[str]]:
    """``name`` cut at ``+`` into registered source names (a name may hold ``+`` itself), or None."""
    pieces = name.split(SEPARATOR)
    for cuts in itertools.product((False, True), repeat=max(0, len(pieces) - 1)):
        parts, current = [], pieces[0]
        for piece, cut in zip(pieces[1:], cuts):
            if cut:
                parts.append(current)
                current = piece
            else:
                current = f"{current}{SEPARATOR}{piece}"
        parts.append(current)
        if len(parts) > 1 and all(p in known for p in parts):
            return parts
    return None


def compose_source(registry: Any, name: str, pm: Any = None) -> Optional[Tuple[Any, str]]:
    """The composite source called ``name`` and the plugin that owns it (its modality's), or None when
    ``name`` does not join registered sources whose modalities are a registered composite's parts (of a
    plugin loaded in ``pm``, when given)."""
    from .types import source_modality

    parts = split_name(name, registry.names())
    if parts is None:
        return None
    sources = [registry.get(p) for p in parts]
    kinds = tuple(source_modality(s) for s in sources)
    for modality in _composites():
        if tuple(modality.parts) == kinds and (pm is None or pm.get_plugin(_owner(modality)) is not None):
            return modality.join(sources), _owner(modality)
    return None


def composite_names(registry: Any, modality: Any, include: Sequence[str], exclude: Sequence[str]) -> List[str]:
    """Every composite of ``modality`` whose each part matches a glob of ``include`` and none of
    ``exclude``: the product of the parts' matching sources, in ``include`` order."""
    from .types import source_modality

    def matching(kind: str) -> List[str]:
        chosen: List[str] = []
        for pattern in include:
            chosen += [n for n in registry.names() if fnmatch.fnmatchcase(n, pattern) and n not in chosen]
        return [n for n in chosen if source_modality(registry.get(n)) == kind
                and not any(fnmatch.fnmatchcase(n, x) for x in exclude)]

    return [SEPARATOR.join(combo) for combo in itertools.product(*(matching(k) for k in modality.parts))]
