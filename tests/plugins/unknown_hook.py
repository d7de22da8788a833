"""A plugin implementing a hook that does not exist (a typo)."""
from autotl import hookimpl


@hookimpl
def autotl_register_source_modles(register):
    pass
