"""Small builders shared by tests (not fixtures)."""
from __future__ import annotations

from autotl.space import TrialParams


def trial_params(**changes) -> TrialParams:
    base = dict(backbone="timm/test_resnet", adapter="linear", freeze_depth=0.0, head_lr=3e-3,
                backbone_lr="multiplier", backbone_lr_mult=0.1, layer_decay=None, weight_decay=0.01,
                batch_size=16, warmup_epochs=0, label_smoothing=0.0)
    base.update(changes)
    return TrialParams(**base)


def build(plugins, backbone="timm/test_resnet", adapter="linear", outputs=3, adapter_params=None):
    from autotl.model import build_model

    return build_model(plugins.sources.get(backbone), plugins.adapters.get(adapter), outputs, adapter_params or {})


def tensors(dataset, model):
    from autotl.tensors import to_tensors

    return (to_tensors(dataset.train.images, dataset.train.labels, model.data_config),
            to_tensors(dataset.val.images, dataset.val.labels, model.data_config))
