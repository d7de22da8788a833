"""Every hook is documented in docs/plugins.md and exercised by a test; the README stays true."""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from autotl import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("autotl_")]


def test_there_are_hooks():
    assert {"autotl_register_source_models", "autotl_register_target_adapters", "autotl_trial_finished",
            "autotl_search_finished"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_docs_section(hook):
    text = (ROOT / "docs" / "plugins.md").read_text()
    assert f"## `{hook}`" in text


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_typed_and_documented(hook):
    fn = getattr(hookspecs, hook)
    assert fn.__doc__ and len(fn.__doc__.strip()) > 40
    sig = inspect.signature(fn)
    assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values())


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_implemented_by_a_test_plugin(hook):
    sources = [p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.name != "test_docs.py"]
    assert any(f"def {hook}(" in s for s in sources)


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_plugin_example_is_short_and_public():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("```python", 1)[1].split("```", 1)[0]
    code = [line for line in block.strip().splitlines() if line.strip()]
    assert len(code) <= 15
    assert "from autotl import" in block and "autotl." not in block.replace("from autotl import", "")
