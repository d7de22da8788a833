"""A network that runs out of memory on training batches larger than $OOM_LIMIT.

By default the failure is only simulated. With $OOM_HOARD_MB set, the forward first really allocates
that much memory (held by a local of the forward frame, as a failed CUDA allocation leaves
activations behind) and then raises ``torch.OutOfMemoryError``; on the first training forward after
a failure (the retry at half the batch) it writes to $OOM_RECORD how many failed attempts there were
and how many of their allocations are still alive. A traceback kept alive by the retry keeps the
forward frame, and so the allocation, alive.
"""
import json
import os
import weakref

import torch
from torch import nn

from autotl import SourceModel, hookimpl

FAILED = []  # weak references to the allocations of failed attempts


class Hungry(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        hoard_mb = int(os.environ.get("OOM_HOARD_MB", "0"))
        if self.training and x.shape[0] > int(os.environ.get("OOM_LIMIT", "4")):
            if hoard_mb:
                hoard = torch.ones(hoard_mb * 2**20 // 4)  # written, so really resident
                FAILED.append(weakref.ref(hoard))
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {x.shape[0]}")
        record = os.environ.get("OOM_RECORD")
        if self.training and FAILED and record and not os.path.exists(record):
            alive = sum(ref() is not None for ref in FAILED)
            with open(record, "w") as fh:
                json.dump({"failed_attempts": len(FAILED), "alive_at_retry": alive, "batch": x.shape[0]}, fh)
        return self.fc(self.body(x))


@hookimpl
def autotl_register_source_models(register):
    register(SourceModel(name="acme/hungry", build=Hungry, head="fc", layer_groups=(r"^body",),
                         data_config={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}))
