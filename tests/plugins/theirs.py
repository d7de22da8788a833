"""A third party's plugin: a timm network with its own safetensors weights, public API only.

The weights file is named by the THEIRS_WEIGHTS environment variable (tests write it).
"""
import os

import timm

from autotl import SourceModel, hookimpl

WEIGHTS = os.environ.get("THEIRS_WEIGHTS", "theirs.safetensors")


@hookimpl
def autotl_register_source_models(register):
    for arch, kwargs in (("test_resnet", {}), ("test_vit", {"img_size": 32})):
        register(SourceModel(
            name=f"theirs/{arch}",
            build=lambda arch=arch, kwargs=kwargs: timm.create_model(
                arch, pretrained=True, num_classes=0,  # their file's head size does not matter
                pretrained_cfg_overlay=dict(file=WEIGHTS.replace("ARCH", arch)), **kwargs),
            data_config={"input_size": (3, 32, 32)},
            architecture=arch, model_kwargs=kwargs,
            description=f"their {arch}",
        ))
