"""First-party plugin: every model in the model zoo folder becomes a source model ``zoo/<name>``.

The zoo holds what ``autotl pretrain`` writes: ``<name>.safetensors`` beside ``<name>.json``
(architecture, create_model kwargs, classes, data config, source task and accuracy). The folder is
``--zoo DIR``, ``AUTOTL_ZOO``, or ``~/.cache/autotl/zoo``. A sidecar that cannot be read is
skipped with a warning.
"""
from __future__ import annotations

import json
from pathlib import Path

from autotl import SourceModel, hookimpl
from autotl.errors import warn

SIDE_CAR_KEYS = ("architecture", "num_classes")
#: Weights beside a sidecar, in order of preference; torch files are read with weights_only=True.
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def zoo_source(sidecar: Path) -> SourceModel:
    """The ``SourceModel`` described by a zoo sidecar JSON file."""
    meta = json.loads(sidecar.read_text())
    missing = [k for k in SIDE_CAR_KEYS if k not in meta]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")
    weights = next((sidecar.with_suffix(s) for s in WEIGHT_SUFFIXES if sidecar.with_suffix(s).is_file()), None)
    if weights is None:
        raise ValueError(f"no weights file {sidecar.stem}.safetensors")
    arch, kwargs, n = meta["architecture"], dict(meta.get("model_kwargs") or {}), int(meta["num_classes"])

    def build():
        import timm

        from autotl import read_weights

        net = timm.create_model(arch, pretrained=False, num_classes=n, **kwargs)
        net.load_state_dict(read_weights(str(weights)))  # safetensors, or a torch file of tensors only
        return net

    def build_untrained():
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=n, **kwargs)

    acc = meta.get("accuracy")
    return SourceModel(
        name=f"zoo/{sidecar.stem}", build=build, build_untrained=build_untrained,
        data_config=meta.get("data_config"), architecture=arch, model_kwargs=kwargs,
        description=f"{arch} pretrained on {meta.get('source_task', '?')}"
                    + (f" (val accuracy {acc:.3f})" if isinstance(acc, (int, float)) else ""),
        source_task=meta.get("source_task"),
        metadata={k: meta[k] for k in ("accuracy", "classes", "epochs") if k in meta} | {"weights": str(weights)},
    )


@hookimpl
def autotl_register_source_models(register, settings):
    folder = Path(settings.zoo_dir)
    if not folder.is_dir():
        return
    for sidecar in sorted(folder.glob("*.json")):
        try:
            source = zoo_source(sidecar)
        except (ValueError, OSError) as exc:
            warn(f"zoo: skipped {sidecar.name}: {exc}", f"fix or remove {sidecar} (and its weights file)")
            continue
        register(source)
