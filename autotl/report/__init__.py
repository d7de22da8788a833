"""Reports on a study: ``report.html``, ``report.md`` and ``report.json`` with the same facts.

``collect_facts`` reads the study (any storage, even while it runs), ``draw_all`` draws the
figures, ``build_sections`` orders what to show and ``render`` writes Markdown and HTML.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import optuna

from ..errors import UsageError
from .facts import collect_facts, mask_url
from .terminal import format_leaderboard

HTML_NAME = "report.html"
MARKDOWN_NAME = "report.md"
JSON_NAME = "report.json"
IMAGE_DIR = "report_files"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_report(study: optuna.Study, out_dir: Path, *, facts: Optional[Mapping[str, Any]] = None,
                 storage: Optional[str] = None) -> Dict[str, Any]:
    """Write the three report files (and the Markdown's figures) to ``out_dir``; return the facts."""
    from .plots import draw_all
    from .render import to_html, to_markdown
    from .sections import build_sections

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    facts = dict(facts) if facts is not None else collect_facts(study, run_dir=out_dir, storage=storage)
    images, skipped = draw_all(study, facts)
    facts["figures"] = {"drawn": sorted(images), "skipped": skipped}
    sections = build_sections(facts, skipped)
    title = f"autotl report: {facts['header']['study']}"
    (out_dir / IMAGE_DIR).mkdir(exist_ok=True)
    for name, png in images.items():
        _write_atomic(out_dir / IMAGE_DIR / f"{name}.png", png)
    _write_atomic(out_dir / HTML_NAME, to_html(title, sections, images).encode("utf-8"))
    _write_atomic(out_dir / MARKDOWN_NAME, to_markdown(title, sections, IMAGE_DIR).encode("utf-8"))
    _write_atomic(out_dir / JSON_NAME, json.dumps(facts, indent=2, default=str).encode("utf-8"))
    return facts


def _pick_study(storage: Any, name: Optional[str], label: str) -> str:
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name:
        if name not in names:
            listing = ", ".join(names[:10]) or "none"
            raise UsageError(f"no study {name!r} in {label} (studies: {listing})", "pass one of those to --study")
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError(f"{label} holds no study", "check the storage URL, or run `autotl search` first")
    raise UsageError(f"{label} holds {len(names)} studies: {', '.join(names[:10])}", "pick one with --study NAME")


def open_report_study(run_dir: Optional[str] = None, storage: Optional[str] = None,
                      study: Optional[str] = None) -> Tuple[optuna.Study, Optional[Path], str]:
    """The study a report is about: from a run folder, or from a storage URL and a study name.

    Returns the study, the run folder (None when only a storage was given) and the storage
    label with any password masked.
    """
    from ..runfolder import SUMMARY_NAME
    from ..storage import JOURNAL_NAME, make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder: Optional[Path] = None
    if run_dir is not None:
        folder = Path(run_dir)
        if not folder.is_dir():
            raise UsageError(f"run folder {run_dir!r} does not exist", "pass the --out folder of an autotl search")
        summary: Dict[str, Any] = {}
        if (folder / SUMMARY_NAME).is_file():
            try:
                summary = json.loads((folder / SUMMARY_NAME).read_text())
            except (json.JSONDecodeError, OSError) as exc:
                raise UsageError(f"{folder / SUMMARY_NAME} is not valid JSON ({exc})",
                                 "pass --storage URL --study NAME instead") from exc
        study = study or summary.get("study")
        if storage is None:
            if (folder / JOURNAL_NAME).is_file():
                storage = str(folder / JOURNAL_NAME)
            elif summary.get("storage"):
                storage = summary["storage"]
            else:
                raise UsageError(f"{run_dir!r} holds no {JOURNAL_NAME} and no {SUMMARY_NAME}",
                                 "pass the folder an autotl search wrote, or --storage URL --study NAME")
    if not storage:
        raise UsageError("nothing to report on", "pass a run folder, or --storage URL (and --study NAME)")
    if (storage.endswith(".journal") or storage.startswith("journal:")) and not Path(
            storage.split(":", 1)[1] if storage.startswith("journal:") else storage).is_file():
        raise UsageError(f"journal file {storage!r} does not exist", "check the path")
    if storage.startswith("sqlite:///") and not Path(storage[len("sqlite:///"):]).is_file():
        raise UsageError(f"SQLite file {storage[len('sqlite:///'):]!r} does not exist", "check the path")
    backend = make_storage(storage, folder or Path("."))
    label = mask_url(storage) or storage
    name = _pick_study(backend, study, label)
    return optuna.load_study(study_name=name, storage=backend), folder, label


def report(run_dir: Optional[str] = None, *, storage: Optional[str] = None, study: Optional[str] = None,
           out: Optional[str] = None) -> Tuple[Path, Dict[str, Any]]:
    """Build the report for a run folder or a stored study; return the folder written and the facts.

    The report goes to ``out``, else to the run folder, else to ``runs/<study>``.
    """
    loaded, folder, label = open_report_study(run_dir, storage, study)
    out_dir = Path(out) if out else (folder if folder is not None else Path("runs") / loaded.study_name)
    facts = collect_facts(loaded, run_dir=folder, storage=label if run_dir is None else None)
    return out_dir, write_report(loaded, out_dir, facts=facts)


__all__ = ["report", "write_report", "collect_facts", "open_report_study", "format_leaderboard", "mask_url",
           "HTML_NAME", "MARKDOWN_NAME", "JSON_NAME", "IMAGE_DIR"]
