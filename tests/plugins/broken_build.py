"""A source model whose build raises: its trials must fail and the search go on."""
from autotl import SourceModel, hookimpl


def explode():
    raise RuntimeError("checkpoint corrupt")


@hookimpl
def autotl_register_source_models(register):
    register(SourceModel(name="broken/net", build=explode, data_config={"input_size": (3, 32, 32)}))
