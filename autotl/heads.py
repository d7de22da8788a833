"""Which registered adapter the core uses when it needs just a plain head.

Ranking (pooled features), pretraining a source model and exporting a merged LoRA model each need
"the backbone with a plain linear head", not a particular adapter name. A plugin offers that
structure by registering a :class:`autotl.TargetAdapter` with ``plain_head=True`` (the built-in
``autotl_heads`` does, for ``linear``); the core asks the registry for it here, so blocking or
replacing ``autotl_heads`` gives one clear error instead of an unknown ``'linear'``.
"""
from __future__ import annotations

from typing import Any, List, Optional

from .errors import PluginError

#: ``exports_as`` value meaning "the registered plain head" (see ``TargetAdapter.exports_as``).
PLAIN_HEAD = "<plain head>"


def blocked_plugins(plugins: Any) -> List[str]:
    """Plugin names kept out with ``--block-plugin`` (empty when given a bare registry)."""
    pm = getattr(plugins, "pm", None)
    return [name for name, plugin in pm.list_name_plugin() if plugin is None] if pm is not None else []


def plain_head_adapter(plugins: Any, needed_for: str) -> Any:
    """The registered adapter with ``plain_head=True`` (the first by name when several are: by that
    flag they all build the same structure).

    Args:
        plugins: the loaded plugins, or just their adapter registry.
        needed_for: what needs it, for the error (``"ranking"``, ``"pretraining"``, ...).

    Raises:
        PluginError: none is registered; one line naming the blocked plugins and the fix.
    """
    adapters = getattr(plugins, "adapters", plugins)
    for _, adapter in adapters.items():
        if getattr(adapter, "plain_head", False):
            return adapter
    blocked = blocked_plugins(plugins)
    why = f" ({', '.join(blocked)} {'is' if len(blocked) == 1 else 'are'} blocked)" if blocked else ""
    unblock = (f"drop --block-plugin {blocked[0]} or " if len(blocked) == 1 else
               "drop the --block-plugin flags or " if blocked else "")
    raise PluginError(f"{needed_for} needs a plain linear head adapter, and none is registered{why}",
                      f"{unblock}load a plugin that registers one (a TargetAdapter with plain_head=True)")


def export_target(adapter: Any, plugins: Any) -> Optional[Any]:
    """The adapter whose structure ``adapter``'s merged model has (``exports_as``), or None when it
    names none. ``PLAIN_HEAD`` means the registered plain head.

    Raises:
        PluginError: that adapter is not registered; one line saying what to load.
    """
    name = getattr(adapter, "exports_as", None)
    if not name:
        return None
    needed_for = f"exporting a {adapter.name!r} model"
    if name == PLAIN_HEAD:
        return plain_head_adapter(plugins, needed_for)
    adapters = getattr(plugins, "adapters", plugins)
    if name in adapters:
        return adapters.get(name)
    blocked = blocked_plugins(plugins)
    why = f" ({', '.join(blocked)} blocked)" if blocked else ""
    raise PluginError(f"{needed_for} needs target adapter {name!r} (its exports_as), and none is registered{why}",
                      "drop --block-plugin for the plugin that registers it, or load one that does")
