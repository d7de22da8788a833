"""First-party plugin: timm networks as source models.

Registers a short list of strong pretrained timm backbones (``timm/<name>``), whose weights come
from the Hugging Face hub through timm, or from a local safetensors file when one is found in
the weights folder (``AUTOTL_TIMM_WEIGHTS``, default ``~/.cache/autotl/timm``) as
``<name>.safetensors``. It also registers timm's tiny ``test_*`` networks at 32 px
(``timm/test_resnet``, ...) for smoke tests and for pretraining demo source models; they start
from random weights unless a local file is found.

Hub weights and no network: each hub source's ``precheck`` passes when its weights are in the
local Hugging Face cache, or when the hub can be reached (:func:`autotl.hub.hub_problem`: one
short probe per process, none under ``HF_HUB_OFFLINE=1``). Otherwise the space leaves it out with
one warning line for all of them, instead of huggingface_hub's minutes of retries. When the hub
cannot be reached, cached weights are read straight from the cache, so the hub client is never
called.

:func:`timm_source` builds such a ``SourceModel`` for any timm architecture and weights file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from autotl import BuildError, SourceModel, hookimpl
from autotl.hub import cache_dir, cached_file, hub_problem, offline_setting, quiet_hub

WEIGHTS_ENV = "AUTOTL_TIMM_WEIGHTS"
DEFAULT_WEIGHTS_DIR = "~/.cache/autotl/timm"

#: Pretrained backbones a search considers by default: (timm name, description, ImageNet-1k top-1 %).
#: The top-1 figures are timm's published results (rounded); the search tries the most accurate
#: sources first, since ImageNet accuracy predicts transfer accuracy (Kornblith et al. 2019).
HUB_MODELS = (
    ("resnet18.a1_in1k", "ResNet-18, ImageNet-1k", 71.5),
    ("resnet50.a1_in1k", "ResNet-50, ImageNet-1k", 80.4),
    ("efficientnet_b0.ra_in1k", "EfficientNet-B0, ImageNet-1k", 77.7),
    ("mobilenetv3_large_100.ra_in1k", "MobileNetV3-L, ImageNet-1k", 75.8),
    ("convnext_tiny.fb_in22k_ft_in1k", "ConvNeXt-T, ImageNet-22k then 1k", 82.9),
    ("vit_small_patch16_224.augreg_in21k_ft_in1k", "ViT-S/16, ImageNet-21k then 1k", 81.4),
    ("deit_small_patch16_224.fb_in1k", "DeiT-S/16, ImageNet-1k", 79.9),
    ("regnety_016.tv2_in1k", "RegNetY-1.6GF, ImageNet-1k", 80.7),
)

#: timm's tiny test networks, run at 32 px: (architecture, create_model kwargs).
TEST_MODELS = (
    ("test_resnet", {}),
    ("test_efficientnet", {}),
    ("test_convnext", {}),
    ("test_vit", {"img_size": 32}),
)
TEST_DATA_CONFIG = {"input_size": (3, 32, 32)}


def weights_dir() -> Path:
    return Path(os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS_DIR).expanduser()


#: The safetensors file timm loads in place of each hub weights file name (timm prefers it when present).
_SAFE_NAMES = {"pytorch_model.bin": "model.safetensors", "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}


def hub_file(architecture: str) -> Optional[Tuple[str, str, Optional[str]]]:
    """``(repo_id, filename, revision)`` of the safetensors file timm loads from the Hugging Face hub
    for ``architecture`` (with or without a pretrained tag), from timm's pretrained config; None
    when its weights come from elsewhere (a URL) or it has none."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(architecture)
    except RuntimeError:  # an unknown pretrained tag: timm's own build will say so
        return None
    if cfg is None or not cfg.hf_hub_id:
        return None
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    filename = cfg.hf_hub_filename or "pytorch_model.bin"
    if not filename.endswith(".safetensors"):
        filename = _SAFE_NAMES.get(filename) or f"{filename.rsplit('.', 1)[0]}.safetensors"
    return repo_id, filename, revision or None


def cached_hub_weights(architecture: str) -> Optional[str]:
    """The hub weights of ``architecture`` in the local Hugging Face cache, or None (no request made)."""
    where = hub_file(architecture)
    return cached_file(*where) if where else None


def _no_hub(why: str) -> BuildError:
    """Why a hub source cannot be built here, and the ways out. The text names no source, so the
    space can show every hub source it leaves out for this reason on one line."""
    setting = offline_setting()
    fetch = ("pre-download them into that cache where there is a network (`hf download timm/NAME`) and bring it "
             "here, " + (f"or unset {setting.split('=')[0]} where the hub can be reached" if setting else
                         "then set HF_HUB_OFFLINE=1 to skip the probe"))
    return BuildError(f"weights on the Hugging Face hub ({why}), and not in the Hugging Face cache ({cache_dir()})",
                      f"{fetch}; or narrow --backbones; or put local weights at {weights_dir()}/NAME.safetensors "
                      f"({WEIGHTS_ENV})")


def _hub_precheck(architecture: str) -> None:
    """Cheap: passes when the weights are cached or the hub answers (one probe per process)."""
    if hub_file(architecture) is None or cached_hub_weights(architecture):
        return
    why = hub_problem()
    if why:
        raise _no_hub(why)


def _from_file(architecture: str, weights: str, kwargs: Mapping[str, Any]):
    import timm

    # A local file may carry a classifier of any size; build without one (autotl adds its own head)
    # so timm drops the file's classifier instead of failing on a shape mismatch.
    return timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
                             **{"num_classes": 0, **kwargs})


def _create(architecture: str, weights: Optional[str], hub_weights: bool, kwargs: Mapping[str, Any]):
    import timm

    if weights:
        return _from_file(architecture, weights, kwargs)
    if hub_weights and hub_file(architecture) is not None:
        why = hub_problem()
        if why:  # no hub here: read the cache directly (no request, no retry), or fail in one line
            cached = cached_hub_weights(architecture)
            if cached is None:
                raise _no_hub(why)
            return _from_file(architecture, cached, kwargs)
        with quiet_hub():
            return timm.create_model(architecture, pretrained=True, **kwargs)
    return timm.create_model(architecture, pretrained=hub_weights, **kwargs)


def timm_source(name: str, architecture: str, *, weights: Optional[str] = None, hub: bool = True,
                model_kwargs: Optional[Mapping[str, Any]] = None, data_config: Optional[Mapping[str, Any]] = None,
                description: str = "", source_task: Optional[str] = None,
                metadata: Optional[Mapping[str, Any]] = None) -> SourceModel:
    """A ``SourceModel`` for a timm architecture.

    Args:
        name: the registered name, e.g. ``timm/resnet50.a1_in1k``.
        architecture: the timm model name, with or without a pretrained tag.
        weights: a local safetensors (or .pth) file to load instead of the hub's weights.
        hub: without ``weights``, load timm's pretrained weights from the hub (False: random init).
            Without a network, weights already in the Hugging Face cache are read from there, and
            a space leaves the source out (one warning) when they are not; see the module docstring.
        model_kwargs: further ``timm.create_model`` arguments (e.g. ``img_size``).
    """
    kwargs: Dict[str, Any] = dict(model_kwargs or {})
    base_arch = architecture.split(".", 1)[0]
    from_hub = hub and not weights
    return SourceModel(
        name=name,
        build=lambda: _create(architecture, weights, from_hub, kwargs),
        build_untrained=lambda: _create(architecture, None, False, kwargs),
        data_config=dict(data_config) if data_config else None,
        architecture=base_arch, model_kwargs=kwargs,
        description=description, source_task=source_task,
        metadata={"weights": str(weights) if weights else ("hub" if hub else "random init"), **(metadata or {})},
        precheck=(lambda: _hub_precheck(architecture)) if from_hub else None,
    )


def _local_weights(name: str) -> Optional[str]:
    path = weights_dir() / f"{name}.safetensors"
    return str(path) if path.is_file() else None


@hookimpl
def autotl_register_source_models(register):
    for name, description, top1 in HUB_MODELS:
        register(timm_source(f"timm/{name}", name, weights=_local_weights(name), description=description,
                             source_task=name.split(".", 1)[1] if "." in name else None,
                             metadata={"imagenet_top1": top1}))
    for arch, kwargs in TEST_MODELS:
        register(timm_source(f"timm/{arch}", arch, weights=_local_weights(arch), hub=False, model_kwargs=kwargs,
                             data_config=TEST_DATA_CONFIG,
                             description=f"timm's tiny {arch} at 32 px (random init unless a local file)"))
