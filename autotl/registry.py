"""Validating registries: what plugins register, checked once, looked up by name."""
from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Dict, Generic, Iterable, List, Optional, Sequence, Tuple, Type, TypeVar

from .errors import RegistryError

T = TypeVar("T")

#: Optional fields of a SourceModel or TargetAdapter that, when given, must be functions: checked at
#: registration, so a plugin that passes a result instead of a function fails at load, not mid-search.
OPTIONAL_CALLABLES = ("precheck", "plain_export", "build_untrained", "trains_backbone")


def close_matches(name: str, names: Iterable[str]) -> str:
    """A ``did you mean ...?`` hint, or a list of what exists."""
    names = sorted(names)
    near = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    if near:
        return "did you mean " + " or ".join(repr(n) for n in near) + "?"
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    return f"known: {shown}" if names else "none are registered"


class Registry(Generic[T]):
    """Holds one kind of registered object (source models, adapters, datasets) by name.

    ``register`` rejects wrong types, missing names and duplicates with an error that names the
    plugin, since pluggy never checks what a hook registers.
    """

    def __init__(self, kind: str, item_type: Type[T]) -> None:
        self.kind = kind
        self.item_type = item_type
        self._items: Dict[str, T] = {}
        self._owner: Dict[str, str] = {}
        #: plugin names in the order they were loaded; a duplicate name is blamed on the plugin loaded
        #: later, whichever hook pluggy happened to call first (``tryfirst``, LIFO, ...).
        self.load_order: Sequence[str] = ()
        #: Builds an item that is not registered from its name, or returns None: composite source
        #: models (``image+text`` pairs, ``autotl.composite``) exist for every pair of registered parts,
        #: so they are made when asked for and never listed. Returns (item, owning plugin).
        self.compose: Optional[Callable[[str], Optional[Tuple[T, str]]]] = None
        self._composed: Dict[str, T] = {}

    def register(self, item: T, plugin: str) -> None:
        if not isinstance(item, self.item_type):
            raise RegistryError(
                f"plugin {plugin!r} registered a {type(item).__name__} as a {self.kind}",
                f"pass an autotl.{self.item_type.__name__}(...) to register()",
            )
        name = getattr(item, "name", None)
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(f"plugin {plugin!r} registered a {self.kind} without a name",
                                "give it a non-empty name")
        if not callable(getattr(item, "build", None) or getattr(item, "attach", None) or getattr(item, "load", None)):
            raise RegistryError(f"plugin {plugin!r} registered {self.kind} {name!r} without a callable",
                                "pass a function, not its result")
        for field_name in OPTIONAL_CALLABLES:
            value = getattr(item, field_name, None)
            if value is not None and not callable(value):
                raise RegistryError(f"plugin {plugin!r} registered {self.kind} {name!r} with a {field_name} that is "
                                    "not callable", f"pass a function (or None) as {field_name}=")
        if name in self._items:
            first, later = self._owner[name], plugin
            if later in self.load_order and first in self.load_order and \
                    self.load_order.index(first) > self.load_order.index(later):
                first, later = later, first
            raise RegistryError(
                f"plugin {later!r} registered {self.kind} {name!r}, already registered by plugin {first!r}",
                "rename one of them or load only one of the plugins",
            )
        self._items[name] = item
        self._owner[name] = plugin

    def get(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if name not in self._composed and self.compose is not None:
            made = self.compose(name)
            if made is not None:
                self._composed[name], self._owner[name] = made
        if name in self._composed:
            return self._composed[name]
        raise RegistryError(f"unknown {self.kind} {name!r}", close_matches(name, self._items))

    def owner(self, name: str) -> str:
        if name not in self._owner:
            self.get(name)
        return self._owner[name]

    def names(self) -> List[str]:
        return sorted(self._items)

    def items(self) -> List[Tuple[str, T]]:
        return [(n, self._items[n]) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        if name in self._items or name in self._composed:
            return True
        try:
            self.get(name)  # type: ignore[arg-type]
            return True
        except RegistryError:
            return False

    def __len__(self) -> int:
        return len(self._items)

    def match(self, patterns: Iterable[str], exclude: Iterable[str] = ()) -> List[str]:
        """Names matching any glob in ``patterns`` and none in ``exclude``; an unmatched pattern raises."""
        exclude = list(exclude)
        chosen: List[str] = []
        for pattern in patterns:
            hits = [n for n in self.names() if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise RegistryError(f"no {self.kind} matches {pattern!r}", close_matches(pattern, self._items))
            chosen += [n for n in hits if n not in chosen]
        return [n for n in chosen if not any(fnmatch.fnmatchcase(n, x) for x in exclude)]
