"""First-party plugin: image+text data, searched by late fusion of one image and one text source.

The modality (``image+text``): an item is (image path, text), from a CSV with ``image,text,label``
columns. Its stored form is one uint8 array: a header (height, width, token count), the image as the
image modality stores it, then the text's token ids as the text modality stores them; each part keeps
its own preprocessing, cache key and augmentation (a trial's image knobs transform the image part; the
text part takes none). A batch reaches the device as ONE float tensor: the normalised image,
flattened, then the token ids (exact as floats below 2^24), so the trainer, pruning, ranking and
predict need nothing of their own for it.

The sources (composites, :mod:`autotl.composite`): every registered image source joined with every
registered text source, ``<image source>+<text source>`` (``zoo/digits-test_resnet+text/minilm-l6``),
made when a search or an export asks for one, never listed. Its network (:class:`FusionBackbone`) runs
each part's headless network on its part of the input and concatenates their pooled features: late
fusion, as in the project's founding example. The search's adapter puts the head on top (``linear``,
or ``mlp`` for interactions a linear head cannot express). Its layer groups are the image part's, then
the text part's (``autotl_towers``), so the image part takes ``freeze_depth`` and ``backbone_lr_mult``
and the text part its own ``text_freeze_depth`` and ``text_lr_mult`` (core knobs).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from autotl import BuildError, SourceModel, hookimpl, register_modality

MODALITY = "image+text"
PARTS = ("image", "text")
HEADER = 3  # int32 values before the image bytes: height, width, token count


class _PairView:
    """Stored pair -> one int32 row: the image view's uint8 (C, H, W) flattened, then the text view's
    padded ids. A class, so DataLoader worker processes can receive it."""

    def __init__(self, image_view: Any, text_view: Any) -> None:
        self.image_view, self.text_view = image_view, text_view

    def __call__(self, stored: np.ndarray) -> Any:
        import torch

        flat = np.asarray(stored).reshape(-1)
        h, w, n = (int(v) for v in np.frombuffer(flat[:HEADER * 4].tobytes(), dtype=np.int32))
        start = HEADER * 4
        image = flat[start:start + h * w * 3].reshape(h, w, 3)
        ids = np.frombuffer(flat[start + h * w * 3:start + h * w * 3 + 4 * n].tobytes(), dtype=np.int32)
        return torch.cat([self.image_view(image).reshape(-1).to(torch.int32), self.text_view(ids).to(torch.int32)])


class _PairToDevice:
    """A loader's (int32 rows, positions) batches as (float rows, positions) on the device: the image
    part becomes ``(x / 255 - mean) / std``, the ids stay their values."""

    def __init__(self, loader: Any, image_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                 device: Any) -> None:
        self.loader, self.device = loader, device
        self.image_size = tuple(int(v) for v in image_size)
        self.mean, self.std = tuple(mean), tuple(std)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        import torch

        c = self.image_size[0]
        numel = int(np.prod(self.image_size))
        mean = torch.tensor(self.mean, device=self.device).view(1, c, 1)
        std = torch.tensor(self.std, device=self.device).view(1, c, 1)
        for x, positions in self.loader:
            x = x.to(self.device, non_blocking=True)
            image = (x[:, :numel].float().view(len(x), c, -1) / 255.0 - mean) / std
            yield (torch.cat([image.view(len(x), -1), x[:, numel:].float()], 1),
                   positions.to(self.device, non_blocking=True))


class ImageTextModality:
    """(image path, text) items; see the module docstring. Data config: ``image`` and ``text`` (each
    part's own config), ``max_length`` (the text part's, so the ``max_length`` knob reaches it) and
    ``input_size`` ([image values + tokens])."""

    name = MODALITY
    parts = PARTS
    plugin = "autotl_fusion"
    stored_dtype = np.uint8
    augments = True  # the image part's
    mixable = False  # token ids cannot be blended
    onnx_input = "image_and_ids"  # an ONNX export's input: float (batch, image values + max_length)

    @staticmethod
    def _parts() -> Tuple[Any, Any]:
        from autotl.modality import get_modality

        return get_modality("image"), get_modality("text")

    def probe(self, item: Any) -> None:
        image, text = self._parts()
        image.probe(item[0])
        text.probe(item[1])

    def size(self, item: Any) -> Tuple[int, int]:
        return self._parts()[0].size(item[0])

    def resolve(self, data_config: Mapping[str, Any], net: Any = None) -> Dict[str, Any]:
        image, text = self._parts()
        cfg = dict(data_config)
        image_cfg = dict(getattr(net, "image_data_config", None) or cfg.get("image") or {})
        if "input_size" not in image_cfg:
            raise BuildError("the image part's data config has no input_size",
                             "build the fusion source's network before resolving its data config")
        text_cfg = dict(cfg.get("text") or {}, modality="text")
        if cfg.get("max_length") is not None:
            text_cfg["max_length"] = int(cfg["max_length"])
        text_cfg = text.resolve(text_cfg)
        image_cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in image_cfg.items()}
        cfg.update(modality=MODALITY, image=image_cfg, text=text_cfg, max_length=text_cfg["max_length"],
                   input_size=[int(np.prod(image_cfg["input_size"])) + int(text_cfg["max_length"])])
        return cfg

    def stored_key(self, data_config: Mapping[str, Any]) -> str:
        image, text = self._parts()
        return f"{MODALITY}:{image.stored_key(data_config['image'])}|{text.stored_key(data_config['text'])}"

    def decode(self, item: Any, data_config: Mapping[str, Any]) -> np.ndarray:
        image, text = self._parts()
        pixels = image.decode(item[0], data_config["image"])
        ids = np.asarray(text.decode(item[1], data_config["text"]), dtype=np.int32)
        header = np.array([pixels.shape[0], pixels.shape[1], len(ids)], dtype=np.int32)
        return np.concatenate([header.view(np.uint8), pixels.reshape(-1), ids.view(np.uint8)])

    def view(self, data_config: Mapping[str, Any], augment: Any = None) -> Any:
        image, text = self._parts()
        return _PairView(image.view(data_config["image"], augment), text.view(data_config["text"]))

    def to_device(self, loader: Any, data_config: Mapping[str, Any], device: Any) -> Any:
        image, _ = self._parts()
        mean, std = image.normalization(data_config["image"])
        return _PairToDevice(loader, data_config["image"]["input_size"], mean, std, device)

    def example_input(self, data_config: Mapping[str, Any], n: int) -> Any:
        import torch

        image, text = self._parts()
        pixels = image.example_input(data_config["image"], n).reshape(n, -1)
        return torch.cat([pixels, text.example_input(data_config["text"], n).float()], 1)

    def input_bytes(self, data_config: Mapping[str, Any]) -> int:
        return int(data_config["input_size"][0]) * 4

    def join(self, sources: Sequence[SourceModel]) -> SourceModel:
        """The composite source of an image source and a text source (:mod:`autotl.composite`)."""
        image, text = sources
        prechecks = [s.precheck for s in sources if s.precheck is not None]

        def precheck() -> None:
            for check in prechecks:
                check()

        return SourceModel(
            name=f"{image.name}+{text.name}", build=lambda: build_fusion(image, text), modality=MODALITY,
            data_config={"modality": MODALITY, "max_length": (text.data_config or {}).get("max_length"),
                         "text": dict(text.data_config or {})},
            precheck=precheck if prechecks else None,
            description=f"late fusion of {image.name} and {text.name}",
            source_task=f"{image.source_task or '?'} + {text.source_task or '?'}",
            metadata={"parts": [image.name, text.name]},
        )


IMAGE_TEXT = ImageTextModality()


def _module():
    import torch
    from torch import nn

    class FusionBackbone(nn.Module):
        """Late fusion: ``cat(image_net(image part), text_net(token ids))``, each net headless."""

        def __init__(self, image: nn.Module, text: nn.Module, image_data_config: Mapping[str, Any],
                     widths: Tuple[int, int], groups: Tuple[List[List[str]], List[List[str]]]) -> None:
            super().__init__()
            self.image, self.text = image, text
            self.image_data_config = dict(image_data_config)
            self.image_size = tuple(int(v) for v in image_data_config["input_size"])
            self.image_numel = int(np.prod(self.image_size))
            self.widths = tuple(int(w) for w in widths)
            self.num_features = sum(self.widths)
            self._groups = groups
            self.autotl_towers = [(PARTS[0], len(groups[0])), (PARTS[1], len(groups[1]))]

        @property
        def autotl_tower_slices(self) -> List[Tuple[int, Optional[int]]]:
            """Where each part's input lies in a row (the feature cache cuts the network there)."""
            return [(0, self.image_numel), (self.image_numel, None)]

        @property
        def autotl_tower_nets(self) -> List[nn.Module]:
            return [self.image, self.text]

        @property
        def autotl_tower_widths(self) -> Tuple[int, ...]:
            return self.widths

        def autotl_tower_input(self, i: int, x):
            """Part ``i``'s network input from its slice of a row: the image reshaped, the ids as ints."""
            return x.reshape(-1, *self.image_size) if i == 0 else x.round().long()

        def autotl_layer_groups(self) -> List[List[str]]:
            """The image part's layer groups, then the text part's, by their names in this network."""
            return [[f"image.{n}" for n in g] for g in self._groups[0]] + \
                   [[f"text.{n}" for n in g] for g in self._groups[1]]

        def forward(self, x):
            return torch.cat([self.image(self.autotl_tower_input(0, x[:, :self.image_numel])),
                              self.text(self.autotl_tower_input(1, x[:, self.image_numel:]))], 1)

    return FusionBackbone


def _part(source: SourceModel) -> Tuple[Any, Dict[str, Any], int, List[List[str]]]:
    """A part's headless network, its resolved data config, its feature width and its layer groups."""
    from autotl.errors import AutotlError
    from autotl.model import feature_width, layer_groups, resolve_data_config, strip_source_head

    try:
        net = source.build()
    except AutotlError as exc:
        raise BuildError(f"source model {source.name!r} failed to build: {exc.what}", exc.fix) from exc
    cfg = resolve_data_config(source, net)
    net = strip_source_head(net, source)
    return net, cfg, feature_width(net, source, cfg), layer_groups(net, source)


def build_fusion(image: SourceModel, text: SourceModel) -> Any:
    """The :class:`FusionBackbone` of two sources' pretrained networks."""
    image_net, image_cfg, image_width, image_groups = _part(image)
    text_net, _, text_width, text_groups = _part(text)
    return _module()(image_net, text_net, image_cfg, (image_width, text_width), (image_groups, text_groups))


@hookimpl
def autotl_register_source_models(register, settings):
    """Nothing to list: the composites are made on demand. Registering the modality here (not at
    import) keeps a blocked plugin (``--block-plugin autotl_fusion``) from reading image+text data."""
    register_modality(IMAGE_TEXT)
