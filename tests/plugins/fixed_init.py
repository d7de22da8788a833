"""A timm network whose "pretrained" weights are one fixed random draw: every trial starts from the same
weights, as trials from a real pretrained source do (what a greedy soup needs), without a download."""
from autotl import hookimpl


def build():
    import timm
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(1234)
        return timm.create_model("test_resnet", pretrained=False)


@hookimpl
def autotl_register_source_models(register):
    from autotl import SourceModel

    register(SourceModel(name="fixed/test_resnet", build=build, architecture="test_resnet",
                         data_config={"input_size": (3, 32, 32)}))
