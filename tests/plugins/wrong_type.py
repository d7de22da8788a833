"""A plugin registering a dict instead of a SourceModel."""
from autotl import hookimpl


@hookimpl
def autotl_register_source_models(register):
    register({"name": "acme/net"})
