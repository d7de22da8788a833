"""Train a source model on a source task (e.g. to fill the model zoo for the offline demo).

Writes ``FILE.safetensors`` (plain timm weights with the source classifier) and ``FILE.json``
(architecture, data config, classes, source task, validation accuracy), the pair the ``zoo``
plugin turns into a source model. The network trains with the registered plain head adapter
(``plain_head=True``, e.g. ``autotl_heads``' ``linear``), so the weights are plain timm.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

from . import __version__
from .errors import UsageError


def pretrain_source(data: str, plugins: Any, *, backbone: str, out: str, epochs: int, lr: float, batch_size: int,
                    seed: int, device: str) -> Dict[str, Any]:
    from safetensors.torch import save_file

    from .data import load_dataset
    from .heads import plain_head_adapter
    from .model import build_model
    from .space import TrialParams
    from .tensors import TensorCache
    from .trainer import fit, resolve_device

    target = Path(out)
    if target.suffix != ".safetensors":
        raise UsageError(f"--out {out!r} must end in .safetensors", "name the weights file e.g. zoo/my_model.safetensors")
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise UsageError(f"epochs, lr and batch size must be positive (got {epochs}, {lr}, {batch_size})",
                         "pass --epochs 1 or more and a positive --lr")
    head = plain_head_adapter(plugins, "pretraining")
    source = plugins.sources.get(backbone)
    if not source.architecture:
        raise UsageError(f"source model {backbone!r} has no timm architecture, so the zoo could not rebuild it",
                         "pretrain a timm-based source model")
    dataset = load_dataset(data, plugins, seed=seed)
    dev = resolve_device(device)
    import torch

    torch.manual_seed(seed)
    model = build_model(source, head, len(dataset.classes), {})
    cfg = model.data_config
    params = TrialParams(backbone=backbone, adapter=head.name, freeze_depth=0.0, head_lr=lr, backbone_lr="multiplier",
                         backbone_lr_mult=1.0, layer_decay=None, weight_decay=0.05, batch_size=batch_size,
                         warmup_epochs=1, label_smoothing=0.0)
    tensors = TensorCache()
    result = fit(model, tensors.get(dataset.train, cfg), tensors.get(dataset.val, cfg), params, epochs=epochs, metric="accuracy",
                 device=dev, seed=seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in result.state_dict.items()}, str(target))
    sidecar = {
        "name": target.stem, "architecture": source.architecture, "model_kwargs": dict(source.model_kwargs),
        "num_classes": len(dataset.classes), "classes": list(dataset.classes), "data_config": cfg,
        "source_task": data, "source_model": backbone, "accuracy": result.best_value, "epochs": epochs,
        "autotl_version": __version__,
    }
    target.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return {**sidecar, "weights": str(target)}
