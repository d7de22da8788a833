"""The plugin manager: loads plugins in a fixed order and builds the registries from them.

Order: built-in plugins, then the ``autotl`` entry points (skipped when
``AUTOTL_DISABLE_PLUGIN_AUTOLOAD=1``), then ``--plugin`` modules or files and ``--plugins-dir``.
Nothing is loaded at import time; call :func:`get_plugin_manager`.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import pluggy

from . import hookspecs
from .errors import AutotlError, PluginError, warn
from .registry import Registry
from .types import DatasetSource, PluginSettings, RunResult, SourceModel, TargetAdapter, TrialRecord

#: First-party plugins, loaded first and through the same hooks a third party uses.
BUILTIN_PLUGINS = ("autotl_timm", "autotl_heads", "autotl_peft", "autotl_cosine", "autotl_zoo", "autotl_datasets",
                   "autotl_lite0", "autotl_text", "autotl_fusion")
ENTRY_POINT_GROUP = "autotl"
AUTOLOAD_ENV = "AUTOTL_DISABLE_PLUGIN_AUTOLOAD"
DEFAULT_ZOO = "~/.cache/autotl/zoo"


def default_settings(zoo_dir: Optional[str] = None) -> PluginSettings:
    """Settings for registration hooks; the zoo folder comes from the argument, ``AUTOTL_ZOO`` or the default."""
    zoo = zoo_dir or os.environ.get("AUTOTL_ZOO") or DEFAULT_ZOO
    return PluginSettings(zoo_dir=str(Path(zoo).expanduser()))


@dataclass
class Plugins:
    """A typed facade over the pluggy manager: the registries and the lifecycle hooks."""

    pm: pluggy.PluginManager
    settings: PluginSettings
    sources: Registry[SourceModel] = field(default_factory=lambda: Registry("source model", SourceModel))
    adapters: Registry[TargetAdapter] = field(default_factory=lambda: Registry("target adapter", TargetAdapter))
    datasets: Registry[DatasetSource] = field(default_factory=lambda: Registry("dataset", DatasetSource))
    #: plugin name -> how it was loaded: ``{"from": "built-in" | "entry point" | "--plugin" |
    #: "--plugins-dir", "value": ...}``, so an export can say how to load its plugin again.
    origins: Dict[str, Dict[str, str]] = field(default_factory=dict)

    def build_registries(self) -> "Plugins":
        """Call each registration hook once, through pluggy, and attribute what it registers.

        pluggy does the calling, so its ordering applies (``tryfirst``, ``trylast``, later-loaded
        plugins first) and hook wrappers (``wrapper=True``, ``hookwrapper=True``) see the call and
        may register too. pluggy hands every implementation the same ``register``, so that
        function finds out which plugin is calling by looking up the call stack for the innermost
        frame that runs one of this hook's implementations (:func:`_running_impl`); an exception is
        attributed the same way, through its traceback. We chose this over the alternatives
        because it needs nothing from pluggy but its public ``get_hookimpls()``: hookcall
        monitoring sees a hook call, not which implementation runs, and a per-plugin ``register``
        would mean calling each implementation ourselves, which is what lost the ordering and the
        wrappers. Duplicate names still blame the plugin loaded later (``Registry.load_order``),
        whatever order the hooks ran in.

        Raises:
            PluginError: a plugin's hook raised; one line naming the plugin and the hook.
            RegistryError: a plugin registered something invalid or twice.
        """
        from .composite import compose_source

        order = [name for name, plugin in self.pm.list_name_plugin() if plugin is not None]
        self.sources.compose = lambda name: compose_source(self.sources, name, self.pm)
        for hook_name, registry in (
            ("autotl_register_source_models", self.sources),
            ("autotl_register_target_adapters", self.adapters),
            ("autotl_register_datasets", self.datasets),
        ):
            caller = getattr(self.pm.hook, hook_name)
            registry.load_order = order

            def register(item: Any, _caller: Any = caller, _registry: Registry = registry,
                         _hook: str = hook_name) -> None:
                impl = _running_impl(_caller.get_hookimpls(), _frames(sys._getframe(1)))
                if impl is None:
                    raise PluginError(f"register() of {_hook} was called after the hook returned",
                                      f"call register() while {_hook} runs, not later")
                _registry.register(item, impl.plugin_name)

            try:
                caller(register=register, settings=self.settings)
            except AutotlError:
                raise
            except Exception as exc:  # a plugin's own bug
                impl = _running_impl(caller.get_hookimpls(), _traceback_frames(exc))
                who = f"plugin {impl.plugin_name!r}" if impl else "a plugin"
                raise PluginError(f"{who} failed in {hook_name}: {type(exc).__name__}: {exc}",
                                  "fix the plugin or stop loading it") from exc
        return self

    def trial_finished(self, record: TrialRecord) -> None:
        self._observe("autotl_trial_finished", record=record)

    def search_finished(self, result: RunResult) -> None:
        self._observe("autotl_search_finished", result=result)

    def _observe(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook through pluggy (so ``tryfirst``, ``trylast`` and wrappers work) such
        that no observer can break the search or silence the others.

        pluggy stops at the first implementation that raises, so each plain observer is guarded
        (:func:`_guard_observer`, once per implementation): its exception becomes a one-line warning
        naming its plugin, and the next observer runs. Wrappers are left as they are (a guard would
        have to drive their generators); what escapes the call is a wrapper's own exception, and it
        is warned about the same way, naming the wrapper's plugin through its traceback.
        """
        caller = getattr(self.pm.hook, hook_name)
        for impl in caller.get_hookimpls():
            if not (impl.wrapper or impl.hookwrapper) and not getattr(impl.function, _GUARDED, False):
                # HookImpl.function is Final only to type checkers; pluggy calls whatever it holds.
                impl.function = _guard_observer(impl.function, impl.plugin_name, hook_name)  # type: ignore[misc]
        try:
            caller(**kwargs)
        except Exception as exc:  # a wrapper's own failure: the observers already ran
            impl = _running_impl(caller.get_hookimpls(), _traceback_frames(exc))
            _warn_observer(impl.plugin_name if impl else None, hook_name, exc)

    def provenance(self, registry: Registry, name: str) -> Dict[str, str]:
        """Which plugin registered ``name`` in ``registry``, and how that plugin was loaded (see
        ``origins``): what an export records so that a missing plugin can be named with the exact
        flag that loads it. Only a record: nothing ever imports a plugin from it."""
        plugin = registry.owner(name)
        return {"plugin": plugin, **self.origins.get(plugin, {"from": "unknown"})}

    def describe(self) -> List[Dict[str, Any]]:
        """Each loaded plugin with the hooks it implements, in load order."""
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            if plugin is None:
                continue
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            rows.append({"name": name, "hooks": hooks, "origin": _origin(plugin)})
        return rows


_GUARDED = "_autotl_observer_guard"


def _warn_observer(plugin: Optional[str], hook_name: str, exc: BaseException) -> None:
    who = f"plugin {plugin!r}" if plugin else "a plugin"
    block = f"--block-plugin {plugin}" if plugin else "--block-plugin NAME"
    warn(f"{who} raised in {hook_name}: {type(exc).__name__}: {exc}",
         f"fix the plugin, or stop loading it with {block}; the search goes on")


def _guard_observer(function: Any, plugin: str, hook_name: str) -> Any:
    """``function`` (a plain observer) with its exceptions turned into a warning naming ``plugin``."""
    def guarded(*args: Any) -> None:
        try:
            function(*args)
        except Exception as exc:  # observers never break a search
            _warn_observer(plugin, hook_name, exc)

    setattr(guarded, _GUARDED, True)
    return guarded


def _frames(frame: Any) -> Iterator[Any]:
    """``frame`` and its callers, innermost first."""
    while frame is not None:
        yield frame
        frame = frame.f_back


def _traceback_frames(exc: BaseException) -> List[Any]:
    """The frames an exception passed through, innermost (where it was raised) first."""
    frames, tb = [], exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames[::-1]


def _codes(function: Any) -> List[Any]:
    """The code objects a hook implementation runs as: its own and, when decorated, the function
    it wraps; for a callable object, its ``__call__``."""
    found = []
    for fn in (function, getattr(function, "__wrapped__", None), getattr(function, "__call__", None)):
        code = getattr(fn, "__code__", None)
        if code is not None and code not in found:
            found.append(code)
    return found


def _running_impl(impls: Sequence[Any], frames: Iterable[Any]) -> Any:
    """The hook implementation whose code runs in the innermost of ``frames``, or None.

    Two plugins may share code (two instances of one class): then the frame's ``self`` decides.
    """
    by_code: Dict[Any, List[Any]] = {}
    for impl in impls:
        for code in _codes(impl.function):
            by_code.setdefault(code, []).append(impl)
    for frame in frames:
        found = by_code.get(frame.f_code)
        if not found:
            continue
        if len(found) > 1 and frame.f_code.co_argcount:
            this = frame.f_locals.get(frame.f_code.co_varnames[0])
            found = [i for i in found if getattr(i.function, "__self__", None) is this] or found
        return found[0]
    return None


def _origin(plugin: Any) -> str:
    path = getattr(plugin, "__file__", None)
    return str(path) if path else type(plugin).__name__


def _load_module(spec: str) -> Any:
    """Import a plugin given as a module name or a path to a ``.py`` file."""
    path = Path(spec)
    if spec.endswith(".py") or os.sep in spec:
        if not path.is_file():
            raise PluginError(f"plugin file {spec!r} does not exist", "check the path given to --plugin")
        mod_name = f"autotl_plugin_{path.stem}_{abs(hash(str(path.resolve()))) % 10**8}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception:
            sys.modules.pop(mod_name, None)
            raise
        return module
    return importlib.import_module(spec)


def _import_plugin(spec: str, label: str) -> Any:
    try:
        return _load_module(spec)
    except AutotlError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {label!r} failed to import: {type(exc).__name__}: {exc}",
                          "fix the plugin, or stop loading it") from exc


def _register(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    if pm.is_blocked(name):
        return
    if pm.get_plugin(name) is not None:
        raise PluginError(f"plugin {name!r} is loaded twice", "give it only once (built-in, entry point, --plugin)")
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {name!r} has a bad hook: {exc}", "match the hook signatures in docs/plugins.md") from exc
    except ValueError as exc:  # the same module already registered under another name
        raise PluginError(f"plugin {name!r} is already loaded as {pm.get_name(plugin)!r}",
                          "load it only once (built-in, entry point, --plugin)") from exc
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        pm.unregister(name=name)
        raise PluginError(f"plugin {name!r} implements an unknown hook: {exc}",
                          "check the hook name against docs/plugins.md") from exc


def check_not_world_writable(folder: Path) -> None:
    """Refuse a plugins folder that any user may write to: its files run as code in this process."""
    import stat

    mode = folder.stat().st_mode
    if mode & stat.S_IWOTH:
        raise PluginError(f"plugins folder {str(folder)!r} is writable by every user, so anyone could add code "
                          "to this run", f"restrict it (chmod o-w {folder}) or load plugins by path with --plugin")


def get_plugin_manager(
    plugins: Sequence[str] = (),
    plugins_dir: Optional[str] = None,
    *,
    zoo_dir: Optional[str] = None,
    blocked: Sequence[str] = (),
    autoload: Optional[bool] = None,
) -> Plugins:
    """Load every plugin in order and build the registries.

    Args:
        plugins: ``--plugin`` values: module names or ``.py`` file paths, in order.
        plugins_dir: a folder whose ``*.py`` files (not starting with ``_``) are plugins.
        zoo_dir: the model-zoo folder handed to registration hooks.
        blocked: plugin names not to load.
        autoload: load entry points; default: unless ``AUTOTL_DISABLE_PLUGIN_AUTOLOAD=1``.

    Raises:
        PluginError: a plugin failed to import, has a bad or unknown hook, or registered
            something invalid or twice. The message names the plugin.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)

    origins: Dict[str, Dict[str, str]] = {}
    for name in BUILTIN_PLUGINS:
        if not pm.is_blocked(name):
            _register(pm, _import_plugin(name, name), name)
            origins[name] = {"from": "built-in"}

    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
    if autoload:
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin {ep.name!r} (entry point {ep.value}) failed to import: "
                                  f"{type(exc).__name__}: {exc}",
                                  f"fix or uninstall it, or set {AUTOLOAD_ENV}=1") from exc
            _register(pm, plugin, ep.name)
            dist = getattr(ep, "dist", None)
            origins[ep.name] = {"from": "entry point", "value": ep.value,
                                **({"package": dist.name} if getattr(dist, "name", None) else {})}

    specs = [(spec, {"from": "--plugin", "value": _spec_value(spec)}) for spec in plugins]
    if plugins_dir:
        folder = Path(plugins_dir)
        if not folder.is_dir():
            raise PluginError(f"plugins folder {plugins_dir!r} does not exist", "check the path given to --plugins-dir")
        check_not_world_writable(folder)
        specs += [(str(p), {"from": "--plugins-dir", "value": str(folder.resolve())})
                  for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]
    for spec, origin in specs:
        name = Path(spec).stem if spec.endswith(".py") else spec
        _register(pm, _import_plugin(spec, name), name)
        if pm.get_plugin(name) is not None:
            origins[name] = origin

    return Plugins(pm=pm, settings=default_settings(zoo_dir), origins=origins).build_registries()


def _spec_value(spec: str) -> str:
    """The ``--plugin`` value that loads ``spec`` again from any folder: a file as its absolute path,
    a module by its name."""
    if spec.endswith(".py") or os.sep in spec:
        return str(Path(spec).resolve())
    return spec
