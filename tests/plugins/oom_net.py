"""A network that runs out of (simulated) GPU memory on training batches larger than OOM_LIMIT."""
import os

import torch
from torch import nn

from autotl import SourceModel, hookimpl

LIMIT = int(os.environ.get("OOM_LIMIT", "4"))


class Hungry(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        if self.training and x.shape[0] > LIMIT:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {x.shape[0]}")
        return self.fc(self.body(x))


@hookimpl
def autotl_register_source_models(register):
    register(SourceModel(name="acme/hungry", build=Hungry, head="fc", layer_groups=(r"^body",),
                         data_config={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}))
