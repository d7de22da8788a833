"""Dataset sources -> labelled train/val/test splits of items (file paths, texts or in-memory samples).

Sources: an ImageFolder tree (class subfolders, or ``train/``, ``val/``, ``test/`` split folders
that each hold class subfolders), a CSV with ``path,label`` (and optional ``split``) columns,
a CSV with ``text,label[,split]`` columns (a text dataset: its items are the strings), or
``builtin:NAME`` from a dataset plugin. Either CSV takes ``labels`` (multilabel) or ``target``
(regression) instead of ``label``. Without a val split, a stratified split of train is
drawn with a fixed seed. Nothing is decoded here: each item's header is checked (an unreadable
one is skipped and counted), and the data path (:mod:`autotl.tensors`) decodes items when a
trial first needs them, at the size the trial's source needs.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from .errors import DataError, warn
from .modality import IMAGE, UNREADABLE, get_modality

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


@dataclass(frozen=True, eq=False)
class SampleSet:
    """One split: its items (file paths, or samples a dataset plugin holds in memory), their labels
    (indexing ``Dataset.classes``, or the task's target form), and the path shown for each.

    ``digest`` names the items' content (paths with their size and modification time, or the bytes
    of in-memory samples): stored forms and cached features are keyed on it.
    """

    items: Tuple[Any, ...]
    labels: np.ndarray
    paths: Tuple[str, ...]
    digest: str = ""
    modality: str = "image"  # the kind of item: "image" (files or in-memory images) or "text" (strings)

    def __len__(self) -> int:
        return len(self.items)

    def counts(self, classes: Sequence[str]) -> Dict[str, int]:
        c = Counter(self.labels.tolist())
        return {name: int(c.get(i, 0)) for i, name in enumerate(classes)}


@dataclass(frozen=True)
class Dataset:
    """A labelled dataset split three ways; ``test`` is None when the source has no test split."""

    name: str
    source: str
    classes: Tuple[str, ...]
    train: SampleSet
    val: SampleSet
    test: Optional[SampleSet]
    val_from: str  # "given", "stratified" or "random"
    skipped: int
    task: str = "multiclass"  # labels: class indices (N,); multilabel: 0/1 (N, C); regression: floats (N,)
    modality: str = "image"  # what the items are; a search uses only source models of this modality

    def describe(self) -> Dict[str, Any]:
        """JSON-able facts for summaries and reports."""
        facts: Dict[str, Any] = {
            "name": self.name, "source": self.source, "task": self.task, "modality": self.modality,
            "classes": list(self.classes),
            "images": {s: (len(getattr(self, s)) if getattr(self, s) is not None else 0)
                       for s in ("train", "val", "test")},
            "val_from": self.val_from, "skipped": self.skipped,
        }
        if self.task == "regression":
            y = self.train.labels
            facts["target"] = {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()),
                               "max": float(y.max())}
        elif self.task == "multilabel":
            facts["positives"] = {c: int(v) for c, v in zip(self.classes, self.train.labels.sum(0))}
        return facts


Item = Tuple[Any, str, str]  # (path or in-memory sample, label, shown path)


def _probe_all(items: Sequence[Item], modality: Any) -> Tuple[List[Item], List[str]]:
    """The items whose header reads, and the shown paths of those that do not."""
    good, bad = [], []
    for obj, label, shown in items:
        try:
            modality.probe(obj)
            good.append((obj, label, shown))
        except UNREADABLE:
            bad.append(shown)
    return good, bad


def items_digest(items: Sequence[Any], modality: str = "image") -> str:
    """A hash naming the items' content: a file by its path, size and modification time; an
    in-memory sample by its bytes; a text (``modality="text"``) by its characters."""
    h = hashlib.blake2b(digest_size=16)
    if "+" in modality:  # a composite's item holds one input per part (image+text: path, text)
        for part, name in enumerate(modality.split("+")):
            h.update(f"part{part}:{items_digest([item[part] for item in items], name)}".encode())
        return h.hexdigest()
    for item in items:
        if modality == "text":
            data = str(item).encode("utf-8", "surrogatepass")
            h.update(f"t{len(data)}|".encode())
            h.update(data)
        elif isinstance(item, np.ndarray):
            h.update(f"a{item.dtype}{item.shape}".encode())
            h.update(np.ascontiguousarray(item).tobytes())
        elif hasattr(item, "tobytes") and hasattr(item, "mode"):  # a PIL image
            h.update(f"i{item.mode}{item.size}".encode())
            h.update(item.tobytes())
        else:
            path = str(item)
            try:
                st = os.stat(path)
                h.update(f"p{path}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"p{path}|missing".encode())
    return h.hexdigest()


def _class_folder_items(root: Path) -> List[Item]:
    items: List[Item] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                items.append((f, class_dir.name, str(f)))
    return items


def _split_dir(root: Path, split: str) -> Optional[Path]:
    for name in SPLIT_NAMES[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _folder_splits(root: Path) -> Dict[str, List[Item]]:
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist", "pass an image folder, a CSV file or builtin:NAME")
    if _split_dir(root, "train"):
        splits = {s: _class_folder_items(d) for s in SPLIT_NAMES if (d := _split_dir(root, s))}
    else:
        splits = {"train": _class_folder_items(root)}
    if not splits["train"]:
        raise DataError(f"no images found in {str(root)!r}",
                        "put images in one subfolder per class (or train/, val/, test/ folders of class subfolders)")
    return splits


#: The CSV column that holds the target, per task; ``auto`` picks the task by which column exists.
TASK_COLUMNS = {"multilabel": "labels", "regression": "target", "multiclass": "label"}
LABEL_SEPARATOR = ";"


def _csv_task(path: Path, columns: Sequence[str], task: str) -> Tuple[str, str, str]:
    """The task, the column holding its target, and the column holding the inputs (``path`` for
    image files, ``text`` for texts)."""
    if "image" in columns and "text" in columns and "path" not in columns:
        inputs = ["image+text"]  # one image file and one text per row
    else:
        inputs = [c for c in ("path", "text") if c in columns]
    if len(inputs) == 2:
        raise DataError(f"{path.name} has both a path and a text column",
                        "keep path (image files) or text (one text per row), not both; for an image and a text "
                        "per row, name the columns image and text")
    if task == "auto":
        task = next((name for name, column in TASK_COLUMNS.items() if column in columns), "multiclass")
    candidates = [TASK_COLUMNS[task], *[c for c in TASK_COLUMNS.values() if c != TASK_COLUMNS[task]]]
    column = next((c for c in candidates if c in columns), None)
    if not inputs or column is None:
        missing = [c for c in ("path or text" if not inputs else "", TASK_COLUMNS[task] if column is None else "") if c]
        raise DataError(f"{path.name} lacks the column(s) {', '.join(missing)} (found: {', '.join(columns) or 'none'})",
                        "give the CSV a header row with path (image files), text, or image and text, and label (one "
                        "class), labels (several, separated by ;) or target (a number), and optionally split")
    return task, column, inputs[0]


def _csv_target(task: str, value: str, where: str) -> Any:
    if task == "multilabel":
        return tuple(sorted({v.strip() for v in value.split(LABEL_SEPARATOR) if v.strip()}))
    if not value:
        raise DataError(f"{where}: missing {'target' if task == 'regression' else 'label'}",
                        "label every row, or drop unlabelled rows")
    if task == "regression":
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if not np.isfinite(number):
            raise DataError(f"{where}: target {value!r} is not a finite number", "write a plain number such as 3.25")
        return number
    return value


def _csv_splits(path: Path, task: str = "auto") -> Tuple[Dict[str, List[Item]], str, str]:
    """The CSV's rows per split, its task, and its modality (``image`` for a path column, ``text``
    for a text column, ``image+text`` for image and text columns: an item is (image path, text))."""
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist", "check the path")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        task, column, source = _csv_task(path, columns, task)
        splits: Dict[str, List[Item]] = {}
        for line, row in enumerate(reader, start=2):
            row = {(k or "").strip(): (v or "").strip() if isinstance(v, str) or v is None else "" for k, v in row.items()}
            for column_name in (("image", "text") if source == "image+text" else (source,)):
                if not row.get(column_name):
                    what = "text" if column_name == "text" else "image path"
                    raise DataError(f"{path.name} line {line}: empty {column_name}", f"fill in the {what} or drop the row")
            shown = row["path"] if source == "path" else row["image"] if source == "image+text" else _short(row["text"])
            target = _csv_target(task, row.get(column, ""), f"{path.name} line {line} ({shown!r})")
            split = (row.get("split") or "train").lower()
            canon = next((s for s, names in SPLIT_NAMES.items() if split in names), None)
            if canon is None:
                raise DataError(f"{path.name} line {line}: unknown split {split!r}", "use train, val or test")
            if source == "text":  # the text itself is the item; its row is what warnings show
                splits.setdefault(canon, []).append((row["text"], target, f"{path.name} line {line}"))
                continue
            img_path = Path(row["image" if source == "image+text" else "path"])
            img_path = img_path if img_path.is_absolute() else path.parent / img_path
            item = (img_path, row["text"]) if source == "image+text" else img_path
            splits.setdefault(canon, []).append((item, target, str(img_path)))
    if not splits.get("train"):
        raise DataError(f"{path.name} has no training rows", "add rows (split empty or train)")
    return splits, task, {"path": "image", "text": "text"}.get(source, source)


def _short(text: str, width: int = 40) -> str:
    """A text cut to ``width`` characters for an error line."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3] + "..."


def _builtin_splits(name: str, plugins: Any) -> Dict[str, List[Item]]:
    source = plugins.datasets.get(name)
    try:
        raw = source.load()
    except Exception as exc:
        raise DataError(f"builtin dataset {name!r} (plugin {plugins.datasets.owner(name)!r}) failed to load: "
                        f"{type(exc).__name__}: {exc}", "fix the dataset plugin") from exc
    if "train" not in raw:
        raise DataError(f"builtin dataset {name!r} has no train split", "fix the dataset plugin")
    return {split: [(img, str(label), f"{name}/{split}/{i}") for i, (img, label) in enumerate(rows)]
            for split, rows in raw.items() if split in SPLIT_NAMES}


def _sample_set(rows: Sequence[Item], index: Mapping[str, int], task: str, modality: str = "image") -> SampleSet:
    if task == "regression":
        labels = np.array([r[1] for r in rows], dtype=np.float32)
    elif task == "multilabel":
        labels = np.zeros((len(rows), len(index)), dtype=np.float32)
        for i, r in enumerate(rows):
            labels[i, [index[v] for v in r[1]]] = 1.0
    else:
        labels = np.array([index[r[1]] for r in rows], dtype=np.int64)
    items = tuple(r[0] for r in rows)
    return SampleSet(items=items, labels=labels, paths=tuple(r[2] for r in rows), digest=items_digest(items, modality),
                     modality=modality)


def random_split(rows: Sequence[Tuple[Any, Any, str]], fraction: float, seed: int) -> Tuple[list, list]:
    """Split rows into train/val at random, reproducibly: for targets that cannot be stratified."""
    from sklearn.model_selection import train_test_split

    if len(rows) < 4:
        raise DataError(f"{len(rows)} images are too few to hold out a validation set",
                        "add images or give a val split yourself")
    n_val = max(1, int(round(fraction * len(rows))))
    tr, va = train_test_split(np.arange(len(rows)), test_size=n_val, random_state=seed)
    return [rows[i] for i in sorted(tr)], [rows[i] for i in sorted(va)]


def stratified_split(rows: Sequence[Tuple[Any, str, str]], fraction: float, seed: int) -> Tuple[list, list]:
    """Split rows into train/val with every class in both, reproducibly (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    labels = [r[1] for r in rows]
    counts = Counter(labels)
    n_classes = len(counts)
    thin = sorted(c for c, n in counts.items() if n < 2)
    if thin:
        raise DataError(f"class {thin[0]!r} has {counts[thin[0]]} image; at least 2 are needed to split off a validation set",
                        "add images to it, drop it, or give a val/ split yourself")
    n_val = max(n_classes, int(round(fraction * len(rows))))
    if len(rows) - n_val < n_classes:
        raise DataError(f"{len(rows)} images are too few to hold out {n_val} for validation with {n_classes} classes",
                        "add images or give a val/ split yourself")
    idx = np.arange(len(rows))
    tr, va = train_test_split(idx, test_size=n_val, stratify=labels, random_state=seed)
    return [rows[i] for i in sorted(tr)], [rows[i] for i in sorted(va)]


def load_dataset(spec: str, plugins: Any = None, *, seed: int = 0, val_fraction: float = 0.2,
                 task: str = "auto") -> Dataset:
    """Load ``spec`` (a folder, a ``.csv`` file or ``builtin:NAME``) into labelled splits.

    ``task`` is ``auto`` (a CSV's ``labels`` column means multilabel, ``target`` regression,
    ``label`` multiclass; folders and builtins are multiclass), or one of those names. A CSV with a
    ``text`` column instead of ``path`` is a text dataset (``Dataset.modality == "text"``).

    Raises:
        DataError: empty source, one class, a class too small to split, bad CSV columns (neither or
            both of path and text), empty paths or texts, missing labels or targets, or val/test
            labels that train lacks.
    """
    modality = "image"
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if plugins is None:
            from .plugins import get_plugin_manager
            plugins = get_plugin_manager()
        raw, label, found = _builtin_splits(name, plugins), name, "multiclass"
    elif spec.lower().endswith(".csv"):
        (raw, found, modality), label = _csv_splits(Path(spec), task), Path(spec).stem
    else:
        raw, label, found = _folder_splits(Path(spec)), Path(spec).resolve().name, "multiclass"
    if task not in ("auto", found):
        raise DataError(f"{spec!r} holds {found} labels, not {task} ones",
                        "use a CSV with a labels column (multilabel) or a target column (regression), "
                        "or drop --task")
    task = found

    decoded: Dict[str, list] = {}
    skipped: List[str] = []
    if modality not in ("image", "text") and plugins is None:  # a plugin's modality: load the plugins
        from .plugins import get_plugin_manager
        plugins = get_plugin_manager()
    reader = IMAGE if modality == "image" else get_modality(modality) if modality != "text" else None
    for split, items in raw.items():  # texts were checked while reading: non-empty strings
        decoded[split], bad = _probe_all(items, reader) if reader is not None else (list(items), [])
        skipped += bad
    if skipped:
        warn(f"skipped {len(skipped)} unreadable or corrupt image(s), e.g. {skipped[0]}",
             "remove or replace them; the search goes on without them")
    if not decoded.get("train"):
        raise DataError(f"no readable training images in {spec!r}", "check the files are images")
    classes = _classes(spec, task, decoded)
    if decoded.get("val"):
        train_rows, val_rows, val_from = decoded["train"], decoded["val"], "given"
        missing = sorted(set(classes) - set(_label_names(task, val_rows))) if task == "multiclass" else []
        if missing:
            warn(f"the val split has no images of class(es) {', '.join(missing[:5])}",
                 "add some, or drop the val/ folder to let autotl split one off train")
    elif task == "multiclass":
        train_rows, val_rows = stratified_split(decoded["train"], val_fraction, seed)
        val_from = "stratified"
    else:
        train_rows, val_rows = random_split(decoded["train"], val_fraction, seed)
        val_from = "random"
    index = {c: i for i, c in enumerate(classes)}
    test = _sample_set(decoded["test"], index, task, modality) if decoded.get("test") else None
    return Dataset(name=label, source=spec, classes=classes, train=_sample_set(train_rows, index, task, modality),
                   val=_sample_set(val_rows, index, task, modality), test=test, val_from=val_from,
                   skipped=len(skipped), task=task, modality=modality)


def _label_names(task: str, rows: Sequence[Tuple[Any, Any, str]]) -> List[str]:
    if task == "multilabel":
        return sorted({name for r in rows for name in r[1]})
    return sorted({r[1] for r in rows})


def _classes(spec: str, task: str, decoded: Mapping[str, list]) -> Tuple[str, ...]:
    """The output names: classes, labels, or the regression target; checked against val and test."""
    if task == "regression":
        values = np.array([r[1] for r in decoded["train"]], dtype=np.float64)
        if len(values) > 1 and values.std() == 0:
            raise DataError(f"every training target in {spec!r} is {values[0]:g}", "a regression needs varying targets")
        return ("target",)
    classes = tuple(_label_names(task, decoded["train"]))
    if task == "multiclass" and len(classes) < 2:
        raise DataError(f"{spec!r} has a single class ({classes[0]!r})", "a classifier needs at least 2 classes")
    if task == "multilabel" and not classes:
        raise DataError(f"no training image of {spec!r} has a label", "list each image's labels, separated by ;")
    for split in ("val", "test"):
        unknown = sorted(set(_label_names(task, decoded.get(split, []))) - set(classes))
        if unknown:
            raise DataError(f"the {split} split has label(s) the train split lacks: {', '.join(map(repr, unknown[:5]))}",
                            f"add training images for them or remove them from {split}")
    return classes


def read_texts(path: str, modality: str = "text") -> List[Tuple[Any, str]]:
    """The inputs of an unlabelled CSV, each with its row as shown (``new.csv line 2``): what ``autotl
    predict`` reads for a model of another modality than images. ``text``: the ``text`` column, one
    text per row; ``image+text``: the ``image`` and ``text`` columns, an (image path relative to the
    CSV, text) pair per row. Other columns are ignored.

    Raises:
        DataError: the file is missing or not a CSV with those columns, a cell is empty, or it holds no rows.
    """
    needed = ("image", "text") if modality == "image+text" else ("text",)
    what = "an image and a text column" if len(needed) == 2 else "a text column, one text per row"
    file = Path(path)
    if not file.is_file() or file.suffix.lower() != ".csv":
        raise DataError(f"{path!r} is not a CSV file", f"pass CSV files with {what}")
    with file.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = [(c or "").strip() for c in (reader.fieldnames or [])]
        missing = [c for c in needed if c not in columns]
        if missing:
            raise DataError(f"{file.name} has no {' and no '.join(missing)} column (found: {', '.join(columns) or 'none'})",
                            f"give the CSV a header row with {what}")
        out: List[Tuple[Any, str]] = []
        for line, row in enumerate(reader, start=2):
            cells = {(k or "").strip(): (v or "").strip() for k, v in row.items() if isinstance(v, str) or v is None}
            for column in needed:
                if not cells.get(column):
                    raise DataError(f"{file.name} line {line}: empty {column}", f"fill in the {column} or drop the row")
            if modality == "image+text":
                image = Path(cells["image"])
                out.append(((image if image.is_absolute() else file.parent / image, cells["text"]), f"{file.name} line {line}"))
            else:
                out.append((cells["text"], f"{file.name} line {line}"))
    if not out:
        raise DataError(f"{file.name} has no rows", "add one input per row under the header")
    return out
