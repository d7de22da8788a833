"""The frozen-feature cache: compute a trial's frozen prefix once, reuse it every epoch and trial.

When a trial's first layer groups are frozen and run deterministically (eval mode, no augmentation,
mixup or drop-path on its inputs), their output is the same in every epoch, and in every trial that
shares the source weights, the cut, the data and the preprocessing. A :class:`Split` cuts the
network there: ``prefix`` (frozen, run once, cached) and ``rest`` (trained). A linear probe caches
the pooled features and trains only the head; a partly frozen timm network of a known family
(ResNet, ViT/DeiT, ConvNeXt, EfficientNet/MobileNet, RegNet) runs only its unfrozen stages.

Keys hash the prefix's own weights and buffers, the cut, the preprocessed data's bytes, and the
device and autocast dtype, so a cached entry can never be served for another model, depth,
transform or dataset. Every split is checked once against the whole network's output before use.
The cache is an LRU bounded in megabytes; evicted entries spill to a folder (the run folder's
``feature_cache/``) through atomic renames, so several workers can share it.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .model import AdaptedModel


@dataclass
class Split:
    """The network cut in two: ``rest(prefix(x)) == module(x)``, with no trainable weight in ``prefix``."""

    kind: str  # "probe" (pooled features -> head) or "partial" (after `cut` layer groups)
    cut: int
    prefix: Callable[[torch.Tensor], torch.Tensor]
    rest: Callable[[torch.Tensor], torch.Tensor]
    prefix_names: FrozenSet[str]  # parameters (and the modules whose buffers) the prefix reads
    #: A composite network's parts ("towers"): the prefix's output is theirs side by side, each cached
    #: on its own (label, function, the parameters it reads; none: the part's raw input, not cached),
    #: so a frozen image part's features serve every trial of that image source, whatever its text part.
    parts: Tuple[Tuple[str, Callable[[torch.Tensor], torch.Tensor], FrozenSet[str]], ...] = ()

    @property
    def label(self) -> str:
        if self.kind == "towers":
            return "towers(" + ",".join(label for label, _, names in self.parts if names) + ")"
        return "probe" if self.kind == "probe" else f"partial@{self.cut}"


def uncacheable_reason(params: Any, task: Any = None, modality: Any = None) -> Optional[str]:
    """Why this trial's frozen prefix is not deterministic, or None when it is. Augmentation and
    mixup count only where the ``modality`` applies them (text takes neither)."""
    from .tensors import Augmentation

    if Augmentation.from_params(params).active and getattr(modality, "augments", True):
        return "augmentation"
    if (getattr(params, "mixup_alpha", 0) > 0 or getattr(params, "cutmix_alpha", 0) > 0) and \
            getattr(modality, "mixable", True):
        return "mixup"
    if getattr(params, "drop_path", 0) > 0:
        return "drop_path"
    return None


# -- where a network can be cut ---------------------------------------------------------------

Atom = Tuple[Callable[[torch.Tensor], torch.Tensor], List[str]]  # (stage, the parameter names it owns)


def _names(net: nn.Module, modules: Sequence[nn.Module], extra: Sequence[str] = ()) -> List[str]:
    ids = {id(p) for m in modules for p in m.parameters()}
    return [n for n, p in net.named_parameters() if id(p) in ids] + [n for n in extra if n in dict(net.named_parameters())]


def _timm_atoms(net: nn.Module) -> Optional[Tuple[List[Atom], Callable[[torch.Tensor], torch.Tensor]]]:
    """The stages of a known timm family in forward order, and the tail (``forward_head``)."""
    try:
        from timm.models.convnext import ConvNeXt
        from timm.models.efficientnet import EfficientNet
        from timm.models.mobilenetv3 import MobileNetV3
        from timm.models.regnet import RegNet
        from timm.models.resnet import ResNet
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # pragma: no cover - an older timm
        return None
    if getattr(net, "grad_checkpointing", False):
        return None
    if isinstance(net, ResNet):
        stem = [net.conv1, net.bn1, net.act1, net.maxpool]
        atoms = [(lambda x: net.maxpool(net.act1(net.bn1(net.conv1(x)))), _names(net, stem))]
        atoms += [(m, _names(net, [m])) for m in (net.layer1, net.layer2, net.layer3, net.layer4)]
    elif isinstance(net, VisionTransformer):
        embed = [net.patch_embed, net.patch_drop, net.norm_pre]
        atoms = [(lambda x: net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x)))),
                  _names(net, embed, ("cls_token", "pos_embed", "reg_token")))]
        atoms += [(b, _names(net, [b])) for b in net.blocks]
        atoms.append((net.norm, _names(net, [net.norm])))
    elif isinstance(net, ConvNeXt):
        atoms = [(net.stem, _names(net, [net.stem]))] + [(s, _names(net, [s])) for s in net.stages]
        atoms.append((net.norm_pre, _names(net, [net.norm_pre])))
    elif isinstance(net, (EfficientNet, MobileNetV3)):
        atoms = [(lambda x: net.bn1(net.conv_stem(x)), _names(net, [net.conv_stem, net.bn1]))]
        atoms += [(b, _names(net, [b])) for b in net.blocks]
        if isinstance(net, EfficientNet):
            atoms.append((lambda x: net.bn2(net.conv_head(x)), _names(net, [net.conv_head, net.bn2])))
    elif isinstance(net, RegNet):
        atoms = [(net.stem, _names(net, [net.stem]))]
        atoms += [(getattr(net, f"s{i}"), _names(net, [getattr(net, f"s{i}")])) for i in range(1, 5)]
        atoms.append((net.final_conv, _names(net, [net.final_conv])))
    else:
        return None
    return atoms, net.forward_head


def _sequence(stages: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        for stage in stages:
            x = stage(x)
        return x
    return run


def _parts(module: nn.Module) -> Optional[Tuple[nn.Module, str, Callable[[torch.Tensor], torch.Tensor], nn.Module]]:
    """(the network with the stages, its name prefix in ``module``, pooled-features fn, classifier)."""
    if hasattr(module, "forward_features") and hasattr(module, "forward_head") and hasattr(module, "get_classifier"):
        classifier = module.get_classifier()
        if isinstance(classifier, nn.Module):
            return module, "", lambda x: module.forward_head(module.forward_features(x), pre_logits=True), classifier
    backbone, head = getattr(module, "backbone", None), getattr(module, "head", None)
    if isinstance(backbone, nn.Module) and isinstance(head, nn.Module):
        return backbone, "backbone.", backbone, head
    return None


def plan_split(model: AdaptedModel, trainable: FrozenSet[int]) -> Optional[Split]:
    """Where to cut this trial's network: after its frozen leading groups, or before the head."""
    module = model.module
    parts = _parts(module)
    n = len(model.groups)
    cut = min(trainable) if trainable else n
    if parts is None:
        return None
    net, prefix_path, pooled, classifier = parts
    training = {name for name, p in module.named_parameters() if p.requires_grad}
    head_names = {name for name, p in module.named_parameters() if any(p is q for q in classifier.parameters())}
    if cut >= n and training <= head_names:
        names = frozenset(name for name, _ in module.named_parameters() if name not in head_names)
        return Split("probe", n, pooled, classifier, names)
    if model.towers:
        return _tower_split(model, net, classifier, training) if prefix_path else None
    if cut == 0:
        return None
    found = _timm_atoms(net)
    if found is None or cut >= n:
        return None
    atoms, tail = found
    prefix_names = frozenset(name for g in model.groups[:cut] for name in g)
    covered: List[str] = []
    for i, (_, names) in enumerate(atoms):
        covered += [prefix_path + name for name in names]
        if set(covered) == prefix_names:
            head = (lambda x: classifier(tail(x, pre_logits=True))) if prefix_path else tail
            return Split("partial", cut, _sequence([a for a, _ in atoms[:i + 1]]),
                         _sequence([a for a, _ in atoms[i + 1:]] + [head]), prefix_names)
        if not set(covered) <= prefix_names:
            return None  # the groups do not fall on a stage boundary
    return None


def _tower_split(model: AdaptedModel, net: nn.Module, classifier: nn.Module, training: set) -> Optional[Split]:
    """A composite network whose parts are frozen whole (some, not all) is cut per part: each frozen
    part's pooled features come from the cache, the others' raw inputs pass through and train. The
    network says how its input splits (``autotl_tower_slices``: (start, end or None) per part), how a
    part reads its slice (``autotl_tower_input(i, x)``), which module each part runs
    (``autotl_tower_nets``) and how wide its features are (``autotl_tower_widths``); its output is the
    parts' features concatenated in order."""
    slices = getattr(net, "autotl_tower_slices", None)
    nets = getattr(net, "autotl_tower_nets", None)
    tower_widths = getattr(net, "autotl_tower_widths", None)
    if slices is None or nets is None or tower_widths is None or len(slices) != len(model.towers):
        return None
    parts, frozen_names = [], set()
    for i, ((tower, groups), (start, end)) in enumerate(zip(model.towers, slices)):
        names = frozenset(name for g in groups for name in model.groups[g])
        if names and not names & training:
            parts.append((tower, (lambda x, i=i, a=start, b=end: nets[i](net.autotl_tower_input(i, x[:, a:b]))), names))
            frozen_names |= names
        else:
            parts.append((tower, (lambda x, a=start, b=end: x[:, a:b]), frozenset()))
    if not frozen_names:
        return None
    widths = [int(tower_widths[i]) if names else None for i, (_, _, names) in enumerate(parts)]

    def prefix(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(x) for _, fn, _ in parts], 1)

    def rest(z: torch.Tensor) -> torch.Tensor:
        raw = z.shape[1] - sum(w for w in widths if w is not None)
        feats, at = [], 0
        for i, width in enumerate(widths):
            if width is not None:
                feats.append(z[:, at:at + width])
                at += width
            else:
                end = slices[i][1]
                span = raw if end is None else end - slices[i][0]
                feats.append(nets[i](net.autotl_tower_input(i, z[:, at:at + span])))
                at += span
        return classifier(torch.cat(feats, 1))

    return Split("towers", len(model.groups), prefix, rest, frozenset(frozen_names), tuple(parts))


@torch.no_grad()
def verify_split(model: AdaptedModel, split: Split, input_size: Optional[Sequence[int]] = None) -> Optional[int]:
    """The bytes one sample's prefix output takes, if the split reproduces the whole network on a
    random batch of the model's modality (eval mode, float32); None if it does not. ``input_size``
    overrides the data config's."""
    from .modality import modality_of

    module = model.module
    was_training = module.training
    module.eval()
    try:
        param = next(module.parameters())
        cfg = dict(model.data_config, **({"input_size": list(input_size)} if input_size is not None else {}))
        x = modality_of(cfg).example_input(cfg, 2).to(param.device)
        mid = split.prefix(x)
        whole, parts = module(x), split.rest(mid)
        same = whole.shape == parts.shape and torch.allclose(whole.float(), parts.float(), rtol=1e-4, atol=1e-5)
        return mid[0].numel() * mid.element_size() if same else None
    except Exception:
        return None
    finally:
        module.train(was_training)


# -- keys -------------------------------------------------------------------------------------

def _digest_tensor(h: "hashlib._Hash", t: torch.Tensor) -> None:
    h.update(str(t.dtype).encode())
    h.update(str(tuple(t.shape)).encode())
    h.update(_tensor_digest(t))


def _tensor_digest(t: torch.Tensor) -> bytes:
    """SHA-256 of the tensor's bytes, remembered on the tensor until it changes in place (its
    ``_version`` moves): a trial's train and validation features, and its phases, hash the
    prefix's weights once, not each time (a ViT-B/16 is 344 MB to copy off the GPU and hash). The
    storage's address is part of the check: assigning ``.data`` swaps it without moving ``_version``."""
    state = (t._version, t.data_ptr())
    memo = getattr(t, "_autotl_digest", None)
    if memo is not None and memo[0] == state:
        return memo[1]
    data = t.detach().to("cpu").contiguous()
    digest = hashlib.sha256(data.reshape(-1).view(torch.uint8).numpy() if data.numel() else b"").digest()
    try:
        t._autotl_digest = (state, digest)
    except (AttributeError, RuntimeError):  # a tensor type that takes no attributes: hash again next time
        pass
    return digest


def prefix_fingerprint(model: AdaptedModel, split: Split) -> str:
    """A hash of everything the prefix computes with: its weights and its modules' buffers."""
    h = hashlib.blake2b(digest_size=16)
    params = dict(model.module.named_parameters())
    modules = {name.rsplit(".", 1)[0] for name in split.prefix_names}
    for name in sorted(split.prefix_names):
        h.update(name.encode())
        _digest_tensor(h, params[name])
    for name, buf in sorted(model.module.named_buffers()):
        if name.rsplit(".", 1)[0] in modules:
            h.update(name.encode())
            _digest_tensor(h, buf)
    return h.hexdigest()


def data_digest(data: Any) -> str:
    """The name of a split's preprocessed content: carried by the set itself (so nothing here
    keeps a data set alive)."""
    return data.content_digest() if hasattr(data, "content_digest") else data.digest


# -- the cache --------------------------------------------------------------------------------

class FeatureCache:
    """An LRU of feature tensors bounded by ``max_mb``; evicted entries spill to ``spill_dir``."""

    def __init__(self, max_mb: float = 2048, spill_dir: Optional[Path] = None, spill_max_mb: Optional[float] = None):
        self.max_bytes = int(max_mb * 2**20)
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.spill_max_bytes = int((spill_max_mb if spill_max_mb is not None else 4 * max_mb) * 2**20)
        self._mem: "OrderedDict[str, torch.Tensor]" = OrderedDict()
        self.bytes = 0
        self.stats = {"hits": 0, "disk_hits": 0, "misses": 0, "spilled": 0, "too_big": 0}

    @staticmethod
    def size(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def _file(self, key: str) -> Optional[Path]:
        return self.spill_dir / f"{key}.safetensors" if self.spill_dir else None

    def get(self, key: str) -> Optional[torch.Tensor]:
        if key in self._mem:
            self._mem.move_to_end(key)
            self.stats["hits"] += 1
            return self._mem[key]
        path = self._file(key)
        if path is not None and path.is_file():
            try:
                from safetensors.torch import load_file

                t = load_file(str(path))["features"]
            except Exception:  # a damaged file is a miss, never a wrong answer
                return None
            self.stats["disk_hits"] += 1
            self.put(key, t, spill=False)
            return t
        return None

    def put(self, key: str, t: torch.Tensor, spill: bool = True) -> bool:
        """Keep ``t``; False when it alone exceeds the bound (it is then not kept)."""
        size = self.size(t)
        if size > self.max_bytes:
            self.stats["too_big"] += 1
            return False
        self._mem[key] = t
        self._mem.move_to_end(key)
        self.bytes += size
        while self.bytes > self.max_bytes:
            old_key, old = self._mem.popitem(last=False)
            self.bytes -= self.size(old)
            if spill:
                self._spill(old_key, old)
        return True

    def _spill(self, key: str, t: torch.Tensor) -> None:
        path = self._file(key)
        if path is None or path.is_file():
            return
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({"features": t.contiguous()}, str(tmp))
        os.replace(tmp, path)  # atomic: another worker sees all of it or none
        self.stats["spilled"] += 1
        self._trim_disk()

    def _trim_disk(self) -> None:
        files = sorted(self.spill_dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in files)
        for p in files:
            if total <= self.spill_max_bytes:
                break
            total -= p.stat().st_size
            p.unlink(missing_ok=True)

    def features(self, model: AdaptedModel, split: Split, data: Any, device: torch.device,
                 autocast: Any, batch_size: int = 256) -> torch.Tensor:
        """The prefix's output for every sample of ``data``, from the cache or computed now; a split by
        parts caches each frozen part's features on its own and passes the others' inputs through."""
        if split.parts:
            outs = []
            for label, fn, names in split.parts:
                part = Split("part", 0, fn, fn, names)
                outs.append(self._features(model, part, f"part:{label}", data, device, autocast, batch_size)
                            if names else self._compute(model, fn, data, device, autocast, batch_size))
            return torch.cat(outs, 1)
        return self._features(model, split, split.label, data, device, autocast, batch_size)

    def _features(self, model: AdaptedModel, split: Split, label: str, data: Any, device: torch.device,
                  autocast: Any, batch_size: int) -> torch.Tensor:
        amp = getattr(autocast, "fast_dtype", None) if getattr(autocast, "_enabled", True) else None
        key = hashlib.blake2b(json.dumps([prefix_fingerprint(model, split), label, data_digest(data),
                                          device.type, str(amp)]).encode(), digest_size=16).hexdigest()
        found = self.get(key)
        if found is not None:
            return found
        self.stats["misses"] += 1
        feats = self._compute(model, split.prefix, data, device, autocast, batch_size)
        self.put(key, feats)
        return feats

    @staticmethod
    def _compute(model: AdaptedModel, prefix: Callable[[torch.Tensor], torch.Tensor], data: Any,
                 device: torch.device, autocast: Any, batch_size: int) -> torch.Tensor:
        """``prefix`` over every sample of ``data``, in eval mode, on the CPU."""
        from .streaming import sequential

        module = model.module
        was_training = module.training
        module.eval()
        outs = []
        with torch.no_grad():
            for x, positions in data.batches(sequential(len(data), batch_size), device):
                if device.type == "cuda" and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast:
                    outs.append(prefix(x).detach().to("cpu"))
        if sum(len(o) for o in outs) != len(data):  # a streamed sample was unreadable: rows would not line up
            module.train(was_training)
            raise RuntimeError("a sample could not be read")
        module.train(was_training)
        return torch.cat(outs) if outs else torch.zeros(0)


def describe(cache: Optional[FeatureCache]) -> Dict[str, Any]:
    return {} if cache is None else {**cache.stats, "megabytes": round(cache.bytes / 2**20, 1)}


def warn_once(message: str, fix: str = "", _seen: set = set()) -> None:  # noqa: B006 - the set is the memory
    from .errors import warn

    if message not in _seen:
        _seen.add(message)
        warn(message, fix)
