"""Image+text through the same core: the ``image,text,label`` CSV, composite (image+text) sources chosen
part by part with --backbones, late fusion with a freeze depth and learning-rate multiplier per part, a
search end to end (pruning, report, best/, refit), predict on an unlabelled CSV, and bad inputs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import autotl
from autotl import DataError, SpaceError
from autotl.data import load_dataset
from conftest import make_image
from helpers import one_line, run_cli
from test_text import sentence

PAIR = "timm/test_resnet+text/test-bert"


def make_pairs_csv(root: Path, n: int = 48, seed: int = 0) -> Path:
    """``image,text,label`` rows whose label needs both parts: the image's class (cat or dog, by
    colour) and the text's sentiment (pos or neg), four classes."""
    rng = np.random.RandomState(seed)
    root.mkdir(parents=True, exist_ok=True)
    with (root / "pairs.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "text", "label"])
        for i in range(n):
            animal, mood = ("cat", "dog")[i % 2], ("pos", "neg")[(i // 2) % 2]
            make_image(root / "img" / f"{i}.png", animal, rng)
            writer.writerow([f"img/{i}.png", sentence(mood, i, rng), f"{animal}-{mood}"])
    return root / "pairs.csv"


def unlabelled_pairs(data: Path, n: int, name: str):
    """The first ``n`` rows of a pairs CSV, and a CSV beside it with only their image and text columns."""
    rows = list(csv.DictReader(data.open()))[:n]
    new = data.parent / name
    with new.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "text"])
        writer.writerows([r["image"], r["text"]] for r in rows)
    return rows, new


SPACE = """
epochs: 2
min_epochs: 1
backbones: {include: ["*"], exclude: ["zoo/*"]}
adapters: [linear]
sampler: {name: tpe, n_startup_trials: 3}
pruner: {name: asha-promotion, reduction_factor: 2}
params:
  freeze_depth: FREEZE
  text_freeze_depth: TEXT_FREEZE
  head_lr: 3.0e-3
  backbone_lr: multiplier
  backbone_lr_mult: 1.0
  text_lr_mult: {low: 0.1, high: 1.0, log: true}
  batch_size: 8
  warmup_epochs: 0
  hflip: {choices: [0.0, 0.5], when: {modality: [image, image+text]}}
"""


def space_file(tmp_path: Path, freeze: str = "{choices: [0.0, 1.0]}", text_freeze: str = "{choices: [0.0, 1.0]}") -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.replace("TEXT_FREEZE", text_freeze).replace("FREEZE", freeze))
    return path


@pytest.fixture(scope="module")
def pair_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusion")
    data = make_pairs_csv(root / "data")
    result = autotl.search(str(data), space=str(space_file(root)), backbones="timm/test_resnet,timm/test_vit,text/test-bert",
                           trials=3, seed=0, device="cpu", out=str(root / "run"), default_trials=1, quiet=True)
    return {"result": result, "root": root, "data": data, "run": root / "run"}


# -- data ------------------------------------------------------------------------------------------

def test_an_image_text_csv_loads_pairs_with_paths_relative_to_the_csv(tmp_path):
    ds = load_dataset(str(make_pairs_csv(tmp_path / "d", n=16)), seed=0)
    assert ds.modality == "image+text" and ds.classes == ("cat-neg", "cat-pos", "dog-neg", "dog-pos")
    image, text = ds.train.items[0]
    assert Path(image).is_file() and Path(image).parent == tmp_path / "d" / "img" and isinstance(text, str)
    assert ds.describe()["modality"] == "image+text"


@pytest.mark.parametrize("rows, message", [
    ("image,text,label\nimg/0.png,,pos\n", r"pairs.csv line 2: empty text — fill in the text"),
    ("image,text,label\n,the film,pos\n", r"pairs.csv line 2: empty image — fill in the image path"),
])
def test_bad_image_text_rows_are_one_line_errors(tmp_path, rows, message):
    path = tmp_path / "pairs.csv"
    path.write_text(rows)
    with pytest.raises(DataError, match=message):
        load_dataset(str(path))


def test_an_unreadable_image_of_a_pair_is_skipped_with_a_warning(tmp_path):
    data = make_pairs_csv(tmp_path / "d", n=16)
    (tmp_path / "d" / "img" / "3.png").write_bytes(b"not a png")
    with pytest.warns(autotl.AutotlWarning, match="skipped 1 unreadable"):
        ds = load_dataset(str(data), seed=0)
    assert ds.skipped == 1 and len(ds.train) + len(ds.val) == 15


# -- composite sources -------------------------------------------------------------------------------

def test_backbones_choose_each_part_and_pairs_are_never_listed(tmp_path, capsys):
    code, out, _ = run_cli(["backbones"], capsys)
    assert code == 0 and "text/test-bert" in out and "+" not in out
    data = make_pairs_csv(tmp_path / "d", n=16)
    code, _, err = run_cli(["search", str(data), "--backbones", "timm/test_resnet", "--trials", "1",
                            "--out", str(tmp_path / "run")], capsys)
    assert code == 2
    assert "image+text data needs a image and text source model each" in one_line(err)
    assert "--backbones 'zoo/*,text/*'" in one_line(err)


def test_a_search_on_image_text_data_pairs_every_image_with_every_text_source(tmp_path):
    from autotl.plugins import get_plugin_manager
    from autotl.space import load_space_file, resolve_space

    plugins = get_plugin_manager()
    space = resolve_space(load_space_file(str(space_file(tmp_path))), plugins,
                          backbones=["timm/test_resnet", "timm/test_vit", "text/*"], modality="image+text")
    assert set(space.backbones) == {f"{i}+{t}" for i in ("timm/test_resnet", "timm/test_vit")
                                    for t in ("text/test-bert", "text/minilm-l6")
                                    if t in plugins.sources.names()}
    source = plugins.sources.get(PAIR)
    assert source.modality == "image+text" and plugins.sources.owner(PAIR) == "autotl_fusion"
    with pytest.raises(autotl.RegistryError):
        plugins.sources.get("timm/test_resnet+timm/test_vit")  # two image parts make no registered composite


def test_each_part_freezes_and_scales_its_rate_on_its_own():
    from autotl.freeze import model_trainable_groups, set_trainable
    from autotl.model import build_model
    from autotl.plugins import get_plugin_manager
    from autotl.space import TrialParams
    from autotl.trainer import make_optimizer

    plugins = get_plugin_manager()
    model = build_model(plugins.sources.get(PAIR), plugins.adapters.get("linear"), 4, {})
    (image, image_groups), (text, text_groups) = model.towers
    assert (image, text) == ("image", "text") and set(image_groups).isdisjoint(text_groups)
    assert all(n.startswith("backbone.image.") for g in image_groups for n in model.groups[g])
    assert all(n.startswith("backbone.text.") for g in text_groups for n in model.groups[g])
    params = TrialParams(backbone=PAIR, adapter="linear", freeze_depth=0.0, head_lr=1e-2, backbone_lr="multiplier",
                         backbone_lr_mult=0.5, layer_decay=None, weight_decay=0.0, batch_size=8, warmup_epochs=0,
                         label_smoothing=0.0, text_freeze_depth=1.0, text_lr_mult=0.1)
    trainable = model_trainable_groups(model, params)
    assert trainable == frozenset(image_groups)  # the image part trains whole, the text part is frozen
    set_trainable(model, trainable)
    assert not any(p.requires_grad for n, p in model.module.named_parameters() if n.startswith("backbone.text."))
    thawed = TrialParams(**{**params.__dict__, "text_freeze_depth": 0.0})
    set_trainable(model, model_trainable_groups(model, thawed))
    optimizer, _ = make_optimizer(model, thawed, epochs=2, steps_per_epoch=1)
    rate = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    named = dict(model.module.named_parameters())
    text_rate = {rate[id(p)] for n, p in named.items() if n.startswith("backbone.text.")}
    image_rate = {rate[id(p)] for n, p in named.items() if n.startswith("backbone.image.")}
    assert sorted(image_rate) == pytest.approx([1e-2 * 0.5]) and sorted(text_rate) == pytest.approx([1e-2 * 0.5 * 0.1])


# -- a search end to end -------------------------------------------------------------------------------

def test_an_image_text_search_writes_the_run_folder(pair_run):
    run = pair_run["run"]
    summary = json.loads((run / "summary.json").read_text())
    pairs = {PAIR, "timm/test_vit+text/test-bert"}
    assert summary["dataset"]["modality"] == "image+text" and summary["best"]["backbone"] in pairs
    assert summary["epochs_total"] >= 2
    rank = json.loads((run / "rank.json").read_text())  # LogME / k-NN on the pairs' pooled features
    assert set(rank["order"]) == pairs and not rank["skipped"]
    config = json.loads((run / "best" / "config.json").read_text())
    assert config["format"] == "autotl" and config["source_model"] == summary["best"]["backbone"]
    cfg = config["data_config"]
    assert cfg["modality"] == "image+text" and cfg["image"]["input_size"] == [3, 32, 32]
    assert cfg["input_size"] == [3 * 32 * 32 + cfg["text"]["max_length"]]
    assert (run / "report.html").is_file() and summary["best"]["backbone"] in (run / "report.md").read_text()
    assert (run / "refit" / "model.safetensors").is_file()


def test_predict_reads_an_unlabelled_image_text_csv(pair_run, tmp_path, capsys):
    rows, new = unlabelled_pairs(pair_run["data"], 5, "new.csv")
    out = tmp_path / "pred.csv"
    code, _, err = run_cli(["predict", str(pair_run["run"]), str(new), "--out", str(out)], capsys)
    assert code == 0, err
    got = list(csv.DictReader(out.open()))
    assert len(got) == 5 and got[0]["row"] == "new.csv line 2" and got[0]["text"] == rows[0]["text"]
    assert Path(got[0]["image"]) == pair_run["data"].parent / rows[0]["image"]
    assert got[0]["label"] in ("cat-neg", "cat-pos", "dog-neg", "dog-pos")
    bad = tmp_path / "bad.csv"
    bad.write_text("text\nthe film was great\n")
    code, _, err = run_cli(["predict", str(pair_run["run"]), str(bad)], capsys)
    assert code == 1 and "bad.csv has no image column" in one_line(err)


def test_a_frozen_text_part_keeps_its_pretrained_weights(tmp_path):
    from safetensors.torch import load_file

    from autotl_text import build_test_bert

    data = make_pairs_csv(tmp_path / "d", n=24)
    autotl.search(str(data), space=str(space_file(tmp_path, freeze="0.0", text_freeze="1.0")),
                  backbones="timm/test_resnet,text/test-bert", trials=1, seed=0, device="cpu", out=str(tmp_path / "run"),
                  default_trials=0, quiet=True, refit=False)
    weights = load_file(str(tmp_path / "run" / "best" / "model.safetensors"))
    text = {k.split("backbone.text.", 1)[1]: v for k, v in weights.items() if k.startswith("backbone.text.")}
    pretrained = build_test_bert().state_dict()
    assert text and all(torch.equal(v, pretrained[k]) for k, v in text.items())
    from autotl.plugins import get_plugin_manager

    start = get_plugin_manager().sources.get("timm/test_resnet").build().state_dict()
    image = {k.split("backbone.image.", 1)[1]: v for k, v in weights.items() if k.startswith("backbone.image.")}
    assert image and any(not torch.equal(v, start[k]) for k, v in image.items() if v.dtype.is_floating_point)


def test_without_the_fusion_plugin_image_text_data_says_what_is_missing(tmp_path, capsys):
    data = make_pairs_csv(tmp_path / "d", n=16)
    code, _, err = run_cli(["search", str(data), "--block-plugin", "autotl_fusion", "--trials", "1",
                            "--out", str(tmp_path / "run")], capsys)
    assert code != 0 and "no loaded plugin provides the input modality 'image+text'" in one_line(err)


def test_image_text_spaces_gate_their_knobs(tmp_path):
    from autotl.plugins import get_plugin_manager
    from autotl.space import load_space_file, resolve_space

    plugins = get_plugin_manager()
    image = resolve_space(load_space_file("default"), plugins, backbones=["timm/test_resnet"])
    pair = resolve_space(load_space_file("default"), plugins, backbones=["timm/test_resnet", "text/test-bert"],
                         modality="image+text")
    import optuna

    def sampled(space):
        study = optuna.create_study()
        return space.suggest(study.ask())

    assert sampled(image).text_lr_mult is None and sampled(image).text_freeze_depth is None
    params = sampled(pair)
    assert params.text_lr_mult is not None and params.text_freeze_depth is not None
    with pytest.raises(SpaceError):
        resolve_space(load_space_file("default"), plugins, backbones=["text/*"], modality="image+text")


@pytest.mark.parametrize("freeze, text_freeze, label", [("0.0", "1.0", "towers(text)"), ("1.0", "0.0", "towers(image)")])
def test_the_feature_cache_serves_a_frozen_part_on_its_own(tmp_path, freeze, text_freeze, label):
    """A trial whose image part trains and text part is frozen (or the reverse) caches the frozen part's
    features, keyed by that part alone, and trains exactly as without the cache."""
    import optuna

    data = make_pairs_csv(tmp_path / "d", n=24)
    space = space_file(tmp_path, freeze=freeze, text_freeze=text_freeze)
    space.write_text(space.read_text().replace("{choices: [0.0, 0.5], when: {modality: [image, image+text]}}", "0.0"))
    curves = {}
    for cached in (True, False):
        out = tmp_path / f"run-{cached}"
        autotl.search(str(data), space=str(space), backbones="timm/test_resnet,text/test-bert", trials=2, seed=0,
                      device="cpu", out=str(out), default_trials=0, quiet=True, refit=False, feature_cache=cached)
        study = optuna.load_study(study_name=None, storage=autotl.storage.make_storage(None, out))
        trials = sorted(study.trials, key=lambda t: t.number)
        curves[cached] = [v for t in trials for v in t.intermediate_values.values()]
        attrs = [t.user_attrs.get("feature_cache") for t in trials]
        if cached:
            assert all(a and set(a) == {label} for a in attrs), attrs
        else:
            assert all(label not in a for a in attrs), attrs
    assert curves[True] == pytest.approx(curves[False], abs=1e-6)
    from safetensors.torch import load_file

    weights = [load_file(str(tmp_path / f"run-{cached}" / "best" / "model.safetensors")) for cached in (True, False)]
    assert weights[0].keys() == weights[1].keys()
    # The cache computes the frozen part in larger batches (text: padded to another length), which moves
    # its features by float rounding (~1e-7); training carries that on, far below what training moves.
    head = "head.weight"
    gap = (weights[0][head] - weights[1][head]).abs().max().item()
    assert gap < 0.1 * weights[1][head].abs().max().item()


@pytest.mark.slow
def test_an_image_text_model_exports_to_onnx_and_predicts_the_same(pair_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    _, new = unlabelled_pairs(pair_run["data"], 6, "onnx_new.csv")
    code, out, err = run_cli(["export", str(pair_run["run"]), "--format", "onnx", "--out", str(tmp_path / "onnx"),
                              "--images", str(new)], capsys)
    assert code == 0, err
    assert "parity on 6 input(s)" in out
    report = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert report["modality"] == "image+text" and report["max_abs_diff"] <= 1e-3
    outs = {}
    for name, model in (("torch", pair_run["run"]), ("onnx", tmp_path / "onnx")):
        code, _, err = run_cli(["predict", str(model), str(new), "--out", str(tmp_path / f"{name}.csv")], capsys)
        assert code == 0, err
        outs[name] = list(csv.DictReader((tmp_path / f"{name}.csv").open()))
    assert [r["label"] for r in outs["torch"]] == [r["label"] for r in outs["onnx"]]
    assert all(abs(float(a["confidence"]) - float(b["confidence"])) < 1e-4 for a, b in zip(outs["torch"], outs["onnx"]))
