"""First-party plugin: timm networks as source models.

Registers a short list of strong pretrained timm backbones (``timm/<name>``), whose weights come
from the Hugging Face hub through timm, or from a local safetensors file when one is found in
the weights folder (``AUTOTL_TIMM_WEIGHTS``, default ``~/.cache/autotl/timm``) as
``<name>.safetensors``. It also registers timm's tiny ``test_*`` networks at 32 px
(``timm/test_resnet``, ...) for smoke tests and for pretraining demo source models; they start
from random weights unless a local file is found.

:func:`timm_source` builds such a ``SourceModel`` for any timm architecture and weights file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from autotl import SourceModel, hookimpl

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


def _create(architecture: str, weights: Optional[str], hub: bool, kwargs: Mapping[str, Any]):
    import timm

    if weights:
        # A local file may carry a classifier of any size; build without one (autotl adds its own head)
        # so timm drops the file's classifier instead of failing on a shape mismatch.
        kwargs = {"num_classes": 0, **kwargs}
        return timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)),
                                 **kwargs)
    return timm.create_model(architecture, pretrained=hub, **kwargs)


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
        model_kwargs: further ``timm.create_model`` arguments (e.g. ``img_size``).
    """
    kwargs: Dict[str, Any] = dict(model_kwargs or {})
    base_arch = architecture.split(".", 1)[0]
    return SourceModel(
        name=name,
        build=lambda: _create(architecture, weights, hub, kwargs),
        build_untrained=lambda: _create(architecture, None, False, kwargs),
        data_config=dict(data_config) if data_config else None,
        architecture=base_arch, model_kwargs=kwargs,
        description=description, source_task=source_task,
        metadata={"weights": str(weights) if weights else ("hub" if hub else "random init"), **(metadata or {})},
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
