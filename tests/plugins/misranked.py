"""Two sources whose recorded source accuracy is misleading: the learner claims 0.1, the network
that ignores its input claims 0.9. Only a look at the target data tells them apart."""
import timm
import torch
from torch import nn

from autotl import SourceModel, hookimpl


class Constant(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.body(torch.zeros(x.shape[0], 3, device=x.device)))


@hookimpl
def autotl_register_source_models(register):
    register(SourceModel(name="acme/learner", build=lambda: timm.create_model("test_vit", img_size=32, num_classes=0),
                         data_config={"input_size": (3, 32, 32)}, metadata={"accuracy": 0.1}))
    register(SourceModel(name="acme/blind", build=Constant, head="fc", layer_groups=(r"^body",),
                         data_config={"input_size": (3, 32, 32)}, metadata={"accuracy": 0.9}))
