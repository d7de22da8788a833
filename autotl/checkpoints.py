"""Reading weight files without ever running code from them.

A PyTorch checkpoint is a pickle, and unpickling can run arbitrary code. autotl reads weights only
through safetensors, or through ``torch.load(weights_only=True)``, which accepts tensors and plain
containers and refuses anything else. A refused file stops with one line that says why.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from .errors import ModelError

SAFE_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def _looks_like_pickle(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head[:2] == b"\x80\x02" or head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"  # pickle, or torch's zip


def read_weights(path: str) -> Dict[str, Any]:
    """The tensors of ``path`` (``.safetensors``, or ``.pt``/``.pth``/``.bin``/``.ckpt`` holding only tensors)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file {str(p)!r} does not exist", "check the path")
    if p.suffix in SAFE_SUFFIXES:
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except Exception as exc:
            if _looks_like_pickle(p):
                raise ModelError(f"{p.name} is a pickle, not a safetensors file; autotl does not unpickle it",
                                 "convert it to safetensors where you trust it, e.g. safetensors.torch.save_file"
                                 ) from exc
            raise ModelError(f"{p.name} is not a readable safetensors file ({type(exc).__name__})",
                             "re-export the weights") from exc
    if p.suffix in TORCH_SUFFIXES:
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError: the file wants to build objects or call functions
            first = " ".join(str(exc).split())[:160]
            raise ModelError(f"refused to load {p.name}: it holds pickled objects or code, not only tensors ({first})",
                             "save a plain state dict (or safetensors) from a trusted environment") from exc
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ModelError(f"{p.name} holds no state dict of tensors", "save model.state_dict()")
        return state
    raise ModelError(f"{p.name}: unknown weights format {p.suffix!r}",
                     f"use {', '.join(SAFE_SUFFIXES + TORCH_SUFFIXES)}")
