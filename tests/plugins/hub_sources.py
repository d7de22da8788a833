"""A third party's hub-weight sources, public API only: timm's tiny test networks by their hub tag.

``acme/hub-resnet`` is ``test_resnet.r160_in1k`` (weights on the Hugging Face hub as
``timm/test_resnet.r160_in1k``) and ``acme/hub-vit`` is ``test_vit.r160_in1k``, both at 32 px.
tests/test_offline.py puts the first into a fabricated Hugging Face cache and leaves the second out.
"""
from autotl import hookimpl
from autotl_timm import timm_source

SMALL = {"input_size": (3, 32, 32)}


@hookimpl
def autotl_register_source_models(register):
    register(timm_source("acme/hub-resnet", "test_resnet.r160_in1k", hub=True, data_config=SMALL))
    register(timm_source("acme/hub-vit", "test_vit.r160_in1k", hub=True, model_kwargs={"img_size": 32},
                         data_config=SMALL))
