"""A non-timm network: declares its classifier, layer groups and a registered adapter of its own."""
import torch
from torch import nn

from autotl import SourceModel, TargetAdapter, hookimpl


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def attach_scaled(backbone, num_outputs, params):
    head = nn.Sequential(nn.Dropout(params["dropout"]), nn.Linear(16, num_outputs))
    return nn.Sequential(backbone, head)


@hookimpl
def autotl_register_source_models(register):
    register(SourceModel(name="acme/tiny", build=TinyNet, head="classifier", layer_groups=(r"^stem", r"^block"),
                         data_config={"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3}))


@hookimpl
def autotl_register_target_adapters(register):
    register(TargetAdapter(name="dropout_linear", attach=attach_scaled,
                           space={"dropout": {"low": 0.0, "high": 0.5}}))
