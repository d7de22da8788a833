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
    from autotl.tensors import TensorCache

    cache = TensorCache()
    return cache.get(dataset.train, model.data_config), cache.get(dataset.val, model.data_config)


def one_epoch(data, device="cpu"):
    """Every input of a resident or streamed set, in order, as one CPU tensor (a streamed set's
    augmented views are drawn anew each call)."""
    import torch

    from autotl.streaming import sequential

    return torch.cat([x.cpu() for x, _ in data.batches(sequential(len(data)), torch.device(device))])


def fit_paused(plugins, dataset, params, epochs, pause_at, tmp_path, cache, selection=None, device="cpu"):
    """The same fit run straight through, and paused at ``pause_at`` (its checkpoint written to disk and
    read back) then resumed on a freshly built network."""
    import torch

    from autotl.pausing import FitCheckpoint
    from autotl.tensors import Augmentation
    from autotl.trainer import fit

    def data(model):
        aug = Augmentation.from_params(params)
        return cache.train(dataset.train, model.data_config, aug), cache.get(dataset.val, model.data_config)

    kw = dict(epochs=epochs, metric="accuracy", device=torch.device(device), seed=3, selection=selection)
    torch.manual_seed(0)
    model = build(plugins, "timm/test_vit")
    straight = fit(model, *data(model), params, **kw)
    torch.manual_seed(0)
    model = build(plugins, "timm/test_vit")
    first = fit(model, *data(model), params, pause_at=pause_at, **kw)
    assert first.paused and first.epochs_run == pause_at and len(first.curve) == pause_at
    checkpoint = FitCheckpoint.load(first.checkpoint.save(tmp_path / "ckpt.safetensors"))
    torch.manual_seed(123)  # another initialisation: everything must come from the checkpoint
    model = build(plugins, "timm/test_vit")
    resumed = fit(model, *data(model), params, resume=checkpoint, **kw)
    return straight, resumed


def run_cli(args, capsys):
    """Run the CLI as a user would: (exit code, stdout, stderr)."""
    from autotl.cli import main

    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    """The one ``error:`` line of ``err``; fails when there is none, more than one, or a traceback."""
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
