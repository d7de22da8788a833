"""The model card: ``README.md`` in ``best/`` and ``refit/``, for whoever receives the folder alone.

It says what the model was trained on and for, how well it did on data it never saw, how it was
chosen, what the search cost, and how to load it with plain timm (images), plain transformers (text
models with a plain head, from the ``transformers/`` copy the source's plugin wrote) or onnxruntime.
Written at the end of a search (and of a refit), from ``summary.json`` and the folder's own
``config.json``, under the folder's swap lock, and only while the folder still holds the model the
summary describes (another worker may have replaced it since).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

CARD_NAME = "README.md"


def _scores(test: Optional[Mapping[str, Any]]) -> List[str]:
    if not test:
        return ["No test split: the data had none, so no held-out score."]
    return [f"- test {k}: {v:.4f}" if isinstance(v, (int, float)) else f"- test {k}: {v}" for k, v in test.items()]


def _loading(config: Mapping[str, Any], folder: Path) -> List[str]:
    data = config.get("data_config") or {}
    size = "x".join(str(s) for s in (data.get("input_size") or [])[1:]) or "?"
    lines = ["## Loading it", ""]
    if config.get("format") == "timm":
        lines += ["With plain timm (no autotl):", "", "```python", config.get("load", ""), "model.eval()", "```"]
    else:
        lines += [f"This network needs the plugin that registers `{config.get('source_model')}`:", "",
                  "```bash", str(config.get("load", "")), "```"]
    if data.get("modality", "image") != "image":
        lines += ["", f"Inputs: {data.get('modality')}, prepared as `data_config` in `config.json` says (for text: "
                      f"token ids of the source's tokenizer, at most {data.get('max_length')} tokens). Outputs "
                      "follow `classes` in `config.json`.",
                  "", f"Predict a CSV of new inputs: `autotl predict {folder} new.csv --out preds.csv`."]
        lines += _plain_library(config)
        lines += ["", "With onnxruntime: export once (tokenization stays in autotl: `autotl predict` on the ONNX "
                      "folder tokenizes as `data_config` says).", "", "```bash",
                  f"autotl export {folder} --format onnx --out exported/",
                  "autotl predict exported/model.onnx new.csv --out preds.csv", "```"]
        return lines
    lines += ["", f"Inputs: RGB images resized and centre-cropped to {size} "
                  f"({data.get('interpolation', 'bilinear')}), scaled to [0, 1], normalised with mean "
                  f"{data.get('mean')} and std {data.get('std')}. Outputs follow `classes` in `config.json`.",
              "", "With onnxruntime: export once, then load the ONNX file anywhere.", "", "```bash",
              f"autotl export {folder} --format onnx --out exported/", "```", "", "```python",
              "import onnxruntime as ort",
              "session = ort.InferenceSession('exported/model.onnx')",
              "probabilities = session.run(None, {session.get_inputs()[0].name: batch})[0]  # batch: N x 3 x H x W float32",
              "```", "", f"Or predict a folder of images: `autotl predict {folder} IMAGES --out preds.csv`."]
    return lines


def _plain_library(config: Mapping[str, Any]) -> List[str]:
    """The lines on the copy of the model in its source's own library (``plain_export`` in
    ``config.json``, written by the source's plugin): the code that reproduces autotl's outputs, or
    why there is none."""
    plain = config.get("plain_export")
    if not isinstance(plain, Mapping):
        return []
    if plain.get("load") and plain.get("library"):
        return ["", f"Without autotl, with plain {plain['library']} + torch: `{plain.get('folder')}/` in this folder "
                    f"holds the model ({', '.join(plain.get('files') or [])}). Run this from this folder; "
                    "its `predict` gives the outputs `autotl predict` reports:",
                "", "```python", str(plain["load"]).rstrip("\n"), "```"]
    return ["", f"No copy for plain libraries: {plain.get('why_not', 'the source could not write one')}."]


def model_card(config: Mapping[str, Any], summary: Mapping[str, Any], folder: Path, refit: bool = False) -> str:
    """The card's Markdown for the model ``folder`` holds (``config`` is its ``config.json``)."""
    data = summary.get("dataset") or {}
    best = summary.get("best") or {}
    images = data.get("images") or {}
    classes = list(config.get("classes") or [])
    test = (summary.get("refit") or {}).get("test") if refit else best.get("test")
    selection = summary.get("selection") or {}
    trials = summary.get("trials") or {}
    title = "refit of the best setup on train + validation" if refit else "the search's best model"
    lines = [f"# {config.get('source_model')} for {data.get('name', 'this data')}: {title}", "",
             f"Made by autotl {summary.get('autotl_version', '')} (study `{summary.get('study')}`).", "",
             "## Data", "",
             f"- source: `{data.get('source')}`; task: {data.get('task', 'multiclass')}",
             f"- {len(classes)} classes: {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}",
             f"- samples: {images.get('train', 0)} train, {images.get('val', 0)} validation "
             f"({data.get('val_from', 'given')}), {images.get('test', 0)} test",
             "", "## Scores", "", f"Metric: {summary.get('metric')} ({summary.get('direction')}).", ""]
    if refit:
        info = summary.get("refit") or {}
        lines += [f"Trained on train + validation ({info.get('train_images')} images) for {info.get('epochs')} "
                  f"epochs with trial {info.get('trial')}'s setup and seed; it has no validation score of its own.",
                  ""]
    else:
        lines += [f"Validation {summary.get('metric')}: {best.get('value')} (trial {best.get('trial')}).", ""]
    lines += _scores(test)
    lines += ["", "## How it was chosen", "",
              f"- selection rule: {selection.get('rule', '?')}: {selection.get('description', '')}",
              f"- setup: backbone `{config.get('source_model')}`, adapter `{config.get('adapter')}`",
              f"- params: `{json.dumps(config.get('params') or best.get('params') or {}, default=str)}`",
              f"- search: {sum(int(v) for v in trials.values())} trials ({trials.get('complete', 0)} complete, "
              f"{trials.get('pruned', 0)} pruned or paused, {trials.get('fail', 0)} failed), "
              f"{summary.get('epochs_total')} epochs in all, space `{summary.get('space')}`, "
              f"{summary.get('elapsed_s')} s on {summary.get('device')}", ""]
    lines += _loading(config, folder)
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, summary: Mapping[str, Any], refit: bool = False) -> Optional[Path]:
    """Write ``folder/README.md`` when ``folder`` still holds the model ``summary`` describes; returns
    its path, or None (no model, or another trial's)."""
    from .export import CONFIG_NAME, model_lock
    from .locks import file_lock

    folder = Path(folder)
    expected = (summary.get("refit") or {}).get("trial") if refit else (summary.get("best") or {}).get("trial")
    if expected is None:
        return None
    with file_lock(model_lock(folder)):
        try:
            config: Dict[str, Any] = json.loads((folder / CONFIG_NAME).read_text())
        except (OSError, ValueError):
            return None
        if config.get("trial") != expected or config.get("study") != summary.get("study"):
            return None
        path = folder / CARD_NAME
        path.write_text(model_card(config, summary, folder, refit))
    return path


def write_model_cards(summary: Mapping[str, Any], artifacts: Path) -> None:
    """The cards of ``best/`` and, after a refit, ``refit/``."""
    from .export import BEST_DIR
    from .refit import REFIT_DIR

    write_model_card(Path(artifacts) / BEST_DIR, summary)
    if summary.get("refit"):
        write_model_card(Path(artifacts) / REFIT_DIR, summary, refit=True)
