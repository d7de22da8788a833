"""Plugin loading: every path, the order, and every way a plugin can break the contract."""
from __future__ import annotations

import sys
import textwrap

import pytest

from autotl import PluginError, SourceModel, TargetAdapter, get_plugin_manager
from autotl.plugins import BUILTIN_PLUGINS
from conftest import FIXTURE_PLUGINS


def names(plugins):
    return [row["name"] for row in plugins.describe()]


def test_builtins_load_first_and_register(plugins):
    assert names(plugins)[: len(BUILTIN_PLUGINS)] == list(BUILTIN_PLUGINS)
    assert "timm/test_resnet" in plugins.sources
    assert plugins.sources.owner("timm/test_resnet") == "autotl_timm"
    assert "linear" in plugins.adapters
    assert "digits" in plugins.datasets
    assert isinstance(plugins.sources.get("timm/test_vit"), SourceModel)
    assert isinstance(plugins.adapters.get("linear"), TargetAdapter)


def test_plugin_file_and_module(monkeypatch):
    monkeypatch.syspath_prepend(str(FIXTURE_PLUGINS))
    by_file = get_plugin_manager([str(FIXTURE_PLUGINS / "custom_net.py")])
    assert "acme/tiny" in by_file.sources and "dropout_linear" in by_file.adapters
    assert by_file.sources.owner("acme/tiny") == "custom_net"
    by_module = get_plugin_manager(["observer"])
    assert "observer" in names(by_module)


def test_plugins_dir_loads_every_file(tmp_path):
    (tmp_path / "one.py").write_text(textwrap.dedent("""
        from autotl import SourceModel, hookimpl
        @hookimpl
        def autotl_register_source_models(register):
            register(SourceModel(name="dir/one", build=lambda: None))
    """))
    (tmp_path / "_private.py").write_text("raise RuntimeError('must not load')\n")
    plugins = get_plugin_manager(plugins_dir=str(tmp_path))
    assert "dir/one" in plugins.sources
    assert names(plugins)[-1] == "one"


def _install_entry_point(tmp_path, monkeypatch, module_name: str, body: str):
    """A real installed distribution with an `autotl` entry point, found through sys.path."""
    (tmp_path / f"{module_name}.py").write_text(textwrap.dedent(body))
    dist = tmp_path / f"{module_name}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module_name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[autotl]\n{module_name} = {module_name}\n")
    monkeypatch.syspath_prepend(str(tmp_path))


ENTRY_BODY = """
    from autotl import SourceModel, hookimpl
    @hookimpl
    def autotl_register_source_models(register):
        register(SourceModel(name="ep/net", build=lambda: None))
"""


def test_entry_points_load_after_builtins_and_before_cli_plugins(tmp_path, monkeypatch):
    _install_entry_point(tmp_path, monkeypatch, "autotl_ep_demo", ENTRY_BODY)
    plugins = get_plugin_manager([str(FIXTURE_PLUGINS / "observer.py")])
    order = names(plugins)
    assert order.index("autotl_ep_demo") > order.index("autotl_datasets")
    assert order.index("autotl_ep_demo") < order.index("observer")
    assert "ep/net" in plugins.sources
    # How each was loaded, which a format "autotl" export records to name the plugin it needs.
    assert plugins.origins["autotl_ep_demo"] == {"from": "entry point", "value": "autotl_ep_demo",
                                                 "package": "autotl_ep_demo"}
    observer = str((FIXTURE_PLUGINS / "observer.py").resolve())
    assert plugins.origins["observer"] == {"from": "--plugin", "value": observer}
    assert plugins.provenance(plugins.sources, "ep/net") == {"plugin": "autotl_ep_demo",
                                                             **plugins.origins["autotl_ep_demo"]}


def test_autoload_can_be_disabled(tmp_path, monkeypatch):
    _install_entry_point(tmp_path, monkeypatch, "autotl_ep_off", ENTRY_BODY)
    monkeypatch.setenv("AUTOTL_DISABLE_PLUGIN_AUTOLOAD", "1")
    plugins = get_plugin_manager()
    assert "autotl_ep_off" not in names(plugins)
    assert "ep/net" not in plugins.sources


def test_broken_entry_point_names_itself(tmp_path, monkeypatch):
    _install_entry_point(tmp_path, monkeypatch, "autotl_ep_broken", "import not_a_module_anywhere\n")
    with pytest.raises(PluginError, match="autotl_ep_broken.*failed to import"):
        get_plugin_manager()


def test_block_plugin(plugins):
    blocked = get_plugin_manager(blocked=["autotl_zoo"])
    assert "autotl_zoo" not in names(blocked)


@pytest.mark.parametrize("fixture, pattern", [
    ("bad_import.py", r"plugin 'bad_import' failed to import: ModuleNotFoundError"),
    ("unknown_hook.py", r"plugin 'unknown_hook' implements an unknown hook.*autotl_register_source_modles"),
    ("duplicate.py", r"plugin 'duplicate' registered source model 'timm/test_resnet', already registered by plugin 'autotl_timm'"),
    ("wrong_type.py", r"plugin 'wrong_type' registered a dict as a source model"),
])
def test_bad_plugins_stop_with_one_line_naming_them(fixture, pattern):
    with pytest.raises(PluginError, match=pattern) as info:
        get_plugin_manager([str(FIXTURE_PLUGINS / fixture)])
    assert "\n" not in str(info.value)


def test_missing_plugin_file_and_dir():
    with pytest.raises(PluginError, match="does not exist"):
        get_plugin_manager(["nowhere/plugin.py"])
    with pytest.raises(PluginError, match="plugins folder"):
        get_plugin_manager(plugins_dir="nowhere")


def test_same_plugin_twice_is_refused():
    path = str(FIXTURE_PLUGINS / "observer.py")
    with pytest.raises(PluginError, match="loaded twice"):
        get_plugin_manager([path, path])


def test_unknown_name_suggests_close_match(plugins):
    from autotl import RegistryError

    with pytest.raises(RegistryError, match="did you mean 'timm/test_resnet'"):
        plugins.sources.get("timm/test_resnt")


def test_hook_with_bad_argument_is_refused(tmp_path):
    path = tmp_path / "bad_args.py"
    path.write_text(textwrap.dedent("""
        from autotl import hookimpl
        @hookimpl
        def autotl_register_source_models(register, colour):
            pass
    """))
    with pytest.raises(PluginError, match="plugin 'bad_args' has a bad hook"):
        get_plugin_manager([str(path)])


def test_registration_hook_may_take_settings(tmp_path):
    path = tmp_path / "settings_user.py"
    path.write_text(textwrap.dedent("""
        from autotl import SourceModel, hookimpl
        @hookimpl
        def autotl_register_source_models(register, settings):
            register(SourceModel(name="zoo-echo/" + settings.zoo_dir.strip("/").replace("/", "_"), build=lambda: None))
    """))
    plugins = get_plugin_manager([str(path)], zoo_dir=str(tmp_path / "z"))
    assert any(n.startswith("zoo-echo/") and n.endswith("_z") for n in plugins.sources.names())


def test_plugin_raising_in_registration_is_named(tmp_path):
    path = tmp_path / "raiser.py"
    path.write_text(textwrap.dedent("""
        from autotl import hookimpl
        @hookimpl
        def autotl_register_target_adapters(register):
            raise ValueError("boom")
    """))
    with pytest.raises(PluginError, match="plugin 'raiser' failed in autotl_register_target_adapters: ValueError: boom"):
        get_plugin_manager([str(path)])


def test_no_plugin_loaded_at_import():
    import subprocess

    code = "import autotl, sys; print(any(m.startswith('autotl_timm') for m in sys.modules), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_same_module_under_two_names_is_one_line(tmp_path, monkeypatch):
    """An installed entry point and --plugin naming the same module."""
    _install_entry_point(tmp_path, monkeypatch, "autotl_twice", ENTRY_BODY)
    dist = tmp_path / "autotl_twice-1.0.dist-info" / "entry_points.txt"
    dist.write_text("[autotl]\ntwice_ep = autotl_twice\n")
    with pytest.raises(PluginError, match="plugin 'autotl_twice' is already loaded as 'twice_ep'"):
        get_plugin_manager(["autotl_twice"])


# --- hook ordering: pluggy calls the hooks, so tryfirst, trylast and wrappers work --------------

def _adapter_spy(monkeypatch):
    """Record the order in which adapters are built, built-in and third-party alike: the built-in
    ``autotl_heads`` and a plugin file both look ``TargetAdapter`` up when their hook runs."""
    import autotl
    import autotl_heads

    log = []

    def spy(**kwargs):
        log.append(kwargs["name"])
        return TargetAdapter(**kwargs)

    monkeypatch.setattr(autotl_heads, "TargetAdapter", spy)
    monkeypatch.setattr(autotl, "TargetAdapter", spy)
    return log


def test_tryfirst_and_trylast_registration_hooks_run_before_and_after_the_builtins(tmp_path, monkeypatch):
    log = _adapter_spy(monkeypatch)
    for name, order in (("early", "tryfirst"), ("late", "trylast")):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
            import autotl
            @autotl.hookimpl({order}=True)
            def autotl_register_target_adapters(register):
                register(autotl.TargetAdapter(name="{name}_head", attach=lambda b, n, p: b))
        """))
    plugins = get_plugin_manager([str(tmp_path / "late.py"), str(tmp_path / "early.py")])
    assert log.index("early_head") < log.index("linear") < log.index("late_head"), log
    assert plugins.adapters.owner("early_head") == "early" and plugins.adapters.owner("late_head") == "late"
    assert plugins.adapters.owner("linear") == "autotl_heads"


@pytest.mark.parametrize("style", ["wrapper", "hookwrapper"])
def test_a_hook_wrapper_around_a_registration_hook_sees_the_call_and_may_register(tmp_path, style):
    body = ("    calls.append(('before', sorted(settings.options)))\n"
            "    register(SourceModel(name='wrap/extra', build=lambda: None))\n"
            "    result = yield\n"
            "    calls.append('after')\n")
    if style == "wrapper":
        body += "    return result\n"
    (tmp_path / "wrapping.py").write_text(
        "from autotl import SourceModel, hookimpl\ncalls = []\n"
        f"@hookimpl({style}=True)\ndef autotl_register_source_models(register, settings):\n{body}")
    plugins = get_plugin_manager([str(tmp_path / "wrapping.py")])
    assert plugins.pm.get_plugin("wrapping").calls == [("before", []), "after"]
    assert plugins.sources.owner("wrap/extra") == "wrapping"
    assert plugins.sources.owner("timm/test_resnet") == "autotl_timm"  # the wrapped built-ins still ran


def test_a_plugin_failing_inside_another_plugin_s_wrapper_is_the_one_named(tmp_path):
    (tmp_path / "outer.py").write_text(textwrap.dedent("""
        from autotl import hookimpl
        @hookimpl(wrapper=True)
        def autotl_register_target_adapters(register):
            return (yield)
    """))
    (tmp_path / "inner.py").write_text(textwrap.dedent("""
        from autotl import hookimpl
        def helper():
            raise KeyError("no head")
        @hookimpl
        def autotl_register_target_adapters(register):
            helper()
    """))
    with pytest.raises(PluginError) as info:
        get_plugin_manager([str(tmp_path / "outer.py"), str(tmp_path / "inner.py")])
    assert str(info.value).startswith("plugin 'inner' failed in autotl_register_target_adapters: KeyError: 'no head'")
    assert "\n" not in str(info.value)


def test_an_observer_wrapper_sees_the_call_and_a_raising_observer_only_warns(tmp_path):
    from autotl import AutotlWarning

    (tmp_path / "watch.py").write_text(textwrap.dedent("""
        from autotl import hookimpl
        calls = []
        @hookimpl(wrapper=True)
        def autotl_trial_finished(record):
            calls.append(("before", record))
            result = yield
            calls.append("after")
            return result
    """))
    (tmp_path / "broken.py").write_text(textwrap.dedent("""
        from autotl import hookimpl
        @hookimpl(tryfirst=True)
        def autotl_trial_finished(record):
            raise ValueError("observer broke")
    """))
    (tmp_path / "quiet.py").write_text(textwrap.dedent("""
        from autotl import hookimpl
        seen = []
        @hookimpl(trylast=True)
        def autotl_trial_finished(record):
            seen.append(record)
    """))
    plugins = get_plugin_manager([str(tmp_path / f"{n}.py") for n in ("watch", "broken", "quiet")])
    with pytest.warns(AutotlWarning) as seen:
        plugins.trial_finished("record-1")
    assert [str(w.message) for w in seen] == [
        "plugin 'broken' raised in autotl_trial_finished: ValueError: observer broke — fix the plugin, or stop "
        "loading it with --block-plugin broken; the search goes on"]
    assert plugins.pm.get_plugin("watch").calls == [("before", "record-1"), "after"]
    assert plugins.pm.get_plugin("quiet").seen == ["record-1"]  # the observer after the broken one still ran


def test_a_raising_observer_wrapper_is_named_in_a_warning(tmp_path):
    from autotl import AutotlWarning

    (tmp_path / "badwrap.py").write_text(textwrap.dedent("""
        from autotl import hookimpl
        @hookimpl(wrapper=True)
        def autotl_search_finished(result):
            yield
            raise RuntimeError("after the others")
    """))
    plugins = get_plugin_manager([str(tmp_path / "badwrap.py")])
    with pytest.warns(AutotlWarning, match="plugin 'badwrap' raised in autotl_search_finished: RuntimeError: "
                                           "after the others"):
        plugins.search_finished("result")


@pytest.mark.parametrize("kind, item, field_name", [
    ("source model", "SourceModel(name='mine/net', build=lambda: None", "precheck"),
    ("source model", "SourceModel(name='mine/net', build=lambda: None", "plain_export"),
    ("source model", "SourceModel(name='mine/net', build=lambda: None", "build_untrained"),
    ("target adapter", "TargetAdapter(name='mine/net', attach=lambda b, n, p: b", "trains_backbone"),
])
def test_an_optional_hook_that_is_not_a_function_is_refused_at_load(tmp_path, kind, item, field_name):
    path = tmp_path / "not_a_function.py"
    hook = "autotl_register_source_models" if kind == "source model" else "autotl_register_target_adapters"
    path.write_text(textwrap.dedent(f"""
        from autotl import SourceModel, TargetAdapter, hookimpl
        @hookimpl
        def {hook}(register):
            register({item}, {field_name}={{"written": "already"}}))
    """))
    with pytest.raises(PluginError, match=f"registered {kind} 'mine/net' with a {field_name} that is not "
                                          f"callable.*pass a function \\(or None\\) as {field_name}=") as info:
        get_plugin_manager([str(path)])
    assert "\n" not in str(info.value)
