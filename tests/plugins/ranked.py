"""Sources whose recorded source accuracy ranks them: a learner and a network that ignores its input,
once with honest metadata (acme/good 0.9, acme/constant 0.1) and once with misleading metadata
(acme/learner 0.1, acme/blind 0.9), which only a look at the target data can see through."""
import timm
import torch
from torch import nn

from autotl import SourceModel, hookimpl


class Constant(nn.Module):
    """Predicts the same class for every image: the worst a source can do."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.body(torch.zeros(x.shape[0], 3, device=x.device)))


def learner():
    return timm.create_model("test_vit", img_size=32, num_classes=0)


@hookimpl
def autotl_register_source_models(register):
    size = {"input_size": (3, 32, 32)}
    for good, bad, good_acc, bad_acc in (("acme/good", "acme/constant", 0.9, 0.1),
                                         ("acme/learner", "acme/blind", 0.1, 0.9)):
        register(SourceModel(name=good, build=learner, data_config=size, metadata={"accuracy": good_acc}))
        register(SourceModel(name=bad, build=Constant, head="fc", layer_groups=(r"^body",), data_config=size,
                             metadata={"accuracy": bad_acc}))
