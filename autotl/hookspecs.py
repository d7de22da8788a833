"""The plugin contract: every hook autotl calls, grouped by lifecycle.

A plugin is a module (or object) with functions decorated by ``autotl.hookimpl``
whose names are the hooks below. An implementation may accept any subset of a
hook's arguments. Each hook has a section in ``docs/plugins.md``.
"""
from __future__ import annotations

from typing import Callable

import pluggy

from .types import DatasetSource, PluginSettings, RunResult, SourceModel, TargetAdapter, TrialRecord

PROJECT = "autotl"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration: called once, when the registries are built -------------------------------

@hookspec
def autotl_register_source_models(register: Callable[[SourceModel], None], settings: PluginSettings) -> None:
    """Register pretrained networks the search may start from.

    Call ``register(SourceModel(...))`` once per model. Names must be unique across all plugins;
    namespace them (``acme/xray-resnet``). ``settings.zoo_dir`` is the model-zoo folder.
    """


@hookspec
def autotl_register_target_adapters(register: Callable[[TargetAdapter], None], settings: PluginSettings) -> None:
    """Register ways to adapt a backbone to the target task (heads, LoRA, ...).

    Call ``register(TargetAdapter(...))`` once per adapter.
    """


@hookspec
def autotl_register_datasets(register: Callable[[DatasetSource], None], settings: PluginSettings) -> None:
    """Register named datasets reachable as ``builtin:NAME``.

    Call ``register(DatasetSource(...))`` once per dataset.
    """


# --- lifecycle: observers, called while a search runs ----------------------------------------

@hookspec
def autotl_trial_finished(record: TrialRecord) -> None:
    """Observe a trial that just ended, whether complete, pruned or failed.

    Called in the process that ran the trial, after its state is stored. Exceptions raised here
    are reported as warnings and never fail the trial or stop the search.
    """


@hookspec
def autotl_search_finished(result: RunResult) -> None:
    """Observe a search that just ended, after the run folder is written.

    Exceptions raised here are reported as warnings; the run folder is already complete.
    """
