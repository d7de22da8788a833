"""A dataset plugin: ``builtin:colours`` made of small random colour images."""
import numpy as np

from autotl import DatasetSource, hookimpl


def load():
    rng = np.random.RandomState(0)
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220)}
    rows = [(np.clip(np.array(c) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8), name)
            for name, c in colours.items() for _ in range(6)]
    return {"train": rows[0:4] + rows[6:10], "val": rows[4:6] + rows[10:12]}


@hookimpl
def autotl_register_datasets(register):
    register(DatasetSource(name="colours", load=load, description="two colours"))
