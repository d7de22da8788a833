"""The plain data objects that plugins register and that modules pass along.

Nothing here imports torch, so the CLI starts fast. Fields typed ``Any`` hold
torch objects (networks, tensors) created by plugins.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

#: Keys a timm-style data config may hold.
DATA_CONFIG_KEYS = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")


@dataclass(frozen=True)
class SourceModel:
    """A pretrained network that a search may start from.

    Args:
        name: unique, namespaced name such as ``timm/resnet50.a1_in1k`` or ``acme/xray-resnet``.
        build: zero-argument callable returning the pretrained network (a ``torch.nn.Module``).
            It may keep its source classifier; autotl replaces it.
        data_config: timm-style preprocessing (``input_size``, ``mean``, ``std``,
            ``interpolation``, ``crop_pct``). By default timm resolves it from the network.
        layer_groups: for networks without timm's ``group_matcher``: regular expressions over
            parameter names, one per layer group, in input-to-output order. Freeze depth and
            layer-wise learning rates count these groups.
        head: for networks without timm's ``reset_classifier``: the attribute path of the source
            classifier (e.g. ``"fc"``), which autotl replaces. Leave empty when ``build`` already
            returns pooled features.
        num_features: width of the pooled features; inferred with one forward pass when missing.
        architecture: the timm architecture (``resnet50``) that rebuilds this network with
            ``timm.create_model``; lets exported models load without autotl.
        model_kwargs: keyword arguments for ``timm.create_model`` besides ``num_classes``.
        build_untrained: optional zero-argument callable returning the same architecture
            without weights; ``autotl backbones`` uses it so listing never downloads.
        modality: the input kind: ``"image"`` (the default), or another modality a plugin registers
            (``"text"``); ``data_config["modality"]``, when given, takes precedence. A search uses
            only the sources of its data's modality.
        description: one line for ``autotl backbones``.
        source_task: what the weights were trained on (``imagenet-1k``, ``builtin:digits-source``).
        metadata: any further JSON-able facts (source accuracy, licence, ...).
        precheck: optional zero-argument callable that says, cheaply and without building or
            downloading anything, whether ``build`` can work on this machine: it raises
            ``autotl.BuildError(what, fix)`` when it cannot (e.g. the weights are on a hub that
            cannot be reached and not in its local cache). A space leaves such a source out,
            with one warning line per reason, instead of failing its trials one by one.
        plain_export: optional ``plain_export(state, folder, config) -> Mapping`` that writes a
            trained model of this source, when its adapter is the plain head (a linear layer on the
            pooled features, or an adapter merged into one), in its own library's format (e.g. a
            ``transformers/`` subfolder) into ``folder``, the model folder being written.
            ``state``: the model's exported weights (backbone and head, by the adapted model's
            names); ``config``: what ``config.json`` holds (classes, data config, task). It returns
            what ``config.json`` records under ``plain_export`` (``library``, ``folder``, a ``load``
            snippet), or raises ``autotl.ModelError(what, fix)`` when these weights do not fit
            (recorded as ``why_not``). The export calls it for every model folder it writes
            (``best/``, ``top/``, ``refit/``, a soup), so it must not depend on the network's code
            being importable later.
    """

    name: str
    build: Callable[[], Any]
    data_config: Optional[Mapping[str, Any]] = None
    layer_groups: Optional[Sequence[str]] = None
    head: Optional[str] = None
    num_features: Optional[int] = None
    architecture: Optional[str] = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    build_untrained: Optional[Callable[[], Any]] = None
    modality: str = "image"
    description: str = ""
    source_task: Optional[str] = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    precheck: Optional[Callable[[], None]] = None
    plain_export: Optional[Callable[[Any, Any, Mapping[str, Any]], Mapping[str, Any]]] = None


def source_modality(source: SourceModel) -> str:
    """The input modality a source model reads: its ``data_config["modality"]``, else ``modality``."""
    return str((source.data_config or {}).get("modality") or source.modality or "image")


@dataclass(frozen=True)
class TargetAdapter:
    """How a backbone is adapted to the target task (a linear head, an MLP head, LoRA, ...).

    Args:
        name: unique name such as ``linear``.
        attach: ``attach(backbone, num_outputs, params) -> nn.Module``. ``backbone`` is the
            source network with its source classifier already removed when autotl knows how;
            ``params`` holds this adapter's sampled hyperparameters (without the prefix).
            Parameters the adapter creates count as the head: they always train and get the
            head's learning rate.
        space: this adapter's hyperparameters as a search-space fragment, in the syntax of the
            ``params`` section of a space file. They are sampled only when this adapter is chosen
            and reach ``attach`` by their short names.
        exports_plain_timm: True when the exported model (after ``merge``) is the plain timm
            network with a ``num_classes`` head, so its weights load into ``timm.create_model``.
        description: one line for listings.
        trains_backbone: which of the backbone's own parameters may train, as a predicate over
            their names in the attached model; None lets every one train (subject to the freeze
            strategy). LoRA: ``lambda name: False``; BitFit: biases only.
        merge: folds the adapter into plain layers before export, e.g. LoRA's
            ``merge_and_unload``; ``best/`` and ``autotl predict`` then need no adapter code.
        exports_as: after ``merge``, the model has the structure that this other adapter builds:
            its name, or ``autotl.PLAIN_HEAD`` for the registered ``plain_head`` adapter (LoRA);
            the export records that adapter so it can be rebuilt.
        requires: importable modules the adapter needs (e.g. ``("peft",)``). A space that lists
            the adapter while one is missing drops it with a warning that says what to install.
        trains: which parameters train, in a few words (``"LoRA matrices + head"``), for
            ``autotl adapters``; empty shows ``?`` there.
        plain_head: True for an adapter that only puts a plain linear layer on the backbone's
            pooled features (``linear``). The core uses such an adapter wherever it needs just a
            head and no searched adapter: ranking's features, ``autotl pretrain``, and the
            structure a merged ``exports_as=PLAIN_HEAD`` adapter (LoRA) is exported as; the
            search's default recipe prefers it. With none registered those say so in one line.
    """

    name: str
    attach: Callable[[Any, int, Mapping[str, Any]], Any]
    space: Mapping[str, Any] = field(default_factory=dict)
    exports_plain_timm: bool = False
    description: str = ""
    trains_backbone: Optional[Callable[[str], bool]] = None
    merge: Optional[Callable[[Any], Any]] = None
    exports_as: Optional[str] = None
    requires: Sequence[str] = ()
    trains: str = ""
    plain_head: bool = False


@dataclass(frozen=True)
class DatasetSource:
    """A named dataset that ``builtin:NAME`` refers to.

    Args:
        name: the NAME in ``builtin:NAME``.
        load: zero-argument callable returning ``{split: [(image, label), ...]}`` with split in
            ``train``, ``val``, ``test`` (``val`` and ``test`` optional). Images are PIL images or
            HxW(xC) uint8 arrays; labels are strings.
        description: one line for listings.
    """

    name: str
    load: Callable[[], Mapping[str, Sequence[tuple]]]
    description: str = ""


@dataclass(frozen=True)
class PluginSettings:
    """Settings the run passes to registration hooks (e.g. where the model zoo lives)."""

    zoo_dir: str
    options: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TrialRecord:
    """What one finished trial did; passed to ``autotl_trial_finished``.

    ``state`` is ``complete``, ``pruned`` or ``fail``; ``curve`` is the validation metric per
    epoch; ``value`` is the best validation metric (None when failed). ``lineage`` is, for a trial
    that resumed paused ones (promotion-based search), their numbers, first to last, then its own.
    """

    study: str
    number: int
    state: str
    value: Optional[float]
    params: Mapping[str, Any]
    backbone: Optional[str]
    adapter: Optional[str]
    curve: Sequence[float]
    epochs_run: int
    seconds: float
    fail_reason: Optional[str] = None
    lineage: Sequence[int] = ()


@dataclass(frozen=True)
class RunResult:
    """What a search left behind; passed to ``autotl_search_finished`` and returned by ``search()``."""

    study: str
    out_dir: str
    storage: str
    metric: str
    direction: str
    summary: Mapping[str, Any]
    trials: Sequence[TrialRecord]
    report: Mapping[str, Any] = field(default_factory=dict)  # the facts report.json holds

    @property
    def best(self) -> Optional[Mapping[str, Any]]:
        """The ``best`` entry of ``summary.json``."""
        return self.summary.get("best")
