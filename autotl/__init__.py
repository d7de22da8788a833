"""autotl: AutoML for transfer learning.

The public API. Importing it is cheap (no torch), so ``autotl --help`` answers fast.

    from autotl import hookimpl, SourceModel, TargetAdapter

    @hookimpl
    def autotl_register_source_models(register):
        register(SourceModel(name="acme/net", build=make_my_net))
"""
from __future__ import annotations

from typing import Any

from .checkpoints import read_weights
from .errors import (AutotlError, AutotlWarning, BuildError, ConfigError, DataError, ModelError, PluginError, RegistryError,
                     SpaceError, TrialError, UsageError)
from .heads import PLAIN_HEAD
from .hookspecs import hookimpl
from .types import DatasetSource, PluginSettings, RunResult, SourceModel, TargetAdapter, TrialRecord

__version__ = "0.1.0"

__all__ = [
    "__version__", "hookimpl", "SourceModel", "TargetAdapter", "PLAIN_HEAD", "DatasetSource", "PluginSettings",
    "TrialRecord", "RunResult", "search", "pretrain", "predict", "export_model", "refit_run", "get_plugin_manager",
    "AutotlError", "UsageError", "ConfigError", "SpaceError", "DataError", "PluginError", "RegistryError",
    "TrialError", "BuildError", "ModelError", "AutotlWarning", "read_weights", "register_modality",
]


def search(data: str, **options: Any) -> RunResult:
    """Run a transfer-learning search; see :func:`autotl.api.search`."""
    from .api import search as _search
    return _search(data, **options)


def pretrain(data: str, **options: Any) -> Any:
    """Train a source model on a source task; see :func:`autotl.api.pretrain`."""
    from .api import pretrain as _pretrain
    return _pretrain(data, **options)


def predict(model_dir: str, images: Any, **options: Any) -> Any:
    """Predict with a saved best model; see :func:`autotl.api.predict`."""
    from .api import predict as _predict
    return _predict(model_dir, images, **options)


def export_model(model_dir: str, **options: Any) -> Any:
    """Export a saved best model to ONNX and check it against PyTorch; see :func:`autotl.api.export`.

    Not named ``export``: that is the submodule ``autotl.export``, which replaces a package
    attribute of the same name as soon as it is imported."""
    from .api import export as _export
    return _export(model_dir, **options)


def refit_run(run_dir: str, **options: Any) -> Any:
    """Train a finished search's best setup on train + validation; see :func:`autotl.api.refit`
    (``search(..., refit=True)`` does it at the end of a search). Not named ``refit``: that is the
    submodule ``autotl.refit``."""
    from .api import refit as _refit
    return _refit(run_dir, **options)


def register_modality(modality: Any) -> Any:
    """Make an input modality (see :class:`autotl.modality.Modality`) available to the data path under
    its ``name``; a source model selects it with ``data_config["modality"]``. Call it from a plugin's
    registration hook, never at import time. Imported lazily: torch loads only when a plugin calls it."""
    from .modality import register_modality as _register
    return _register(modality)


def get_plugin_manager(*args: Any, **kwargs: Any) -> Any:
    """Load plugins and build the registries; see :func:`autotl.plugins.get_plugin_manager`."""
    from .plugins import get_plugin_manager as _get
    return _get(*args, **kwargs)
