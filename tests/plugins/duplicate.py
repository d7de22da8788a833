"""A plugin registering a source model name the timm plugin already uses."""
from autotl import SourceModel, hookimpl


@hookimpl
def autotl_register_source_models(register):
    register(SourceModel(name="timm/test_resnet", build=lambda: None))
