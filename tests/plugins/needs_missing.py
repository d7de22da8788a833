"""An adapter that needs a module nobody has installed: a space listing it drops it with a warning."""
from autotl import TargetAdapter, hookimpl
from autotl_heads import attach_linear


@hookimpl
def autotl_register_target_adapters(register):
    register(TargetAdapter(name="needs_missing", attach=attach_linear, requires=("no_such_module_xyz",),
                           description="a linear head that needs no_such_module_xyz"))
