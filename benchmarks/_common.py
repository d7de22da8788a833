"""Shared helpers of the benchmark scripts: threads, the machine line, RESULTS.md, the digits zoo.

Not a benchmark itself. The scripts import it as ``_common`` (Python puts ``benchmarks/`` on the
path when a script there runs). Nothing here imports torch at module level, so a script can set
``OMP_NUM_THREADS`` before torch loads.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, List, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
DEMO_ARCHS = ("test_resnet", "test_efficientnet", "test_vit")
_OMP_AT_START = os.environ.get("OMP_NUM_THREADS")  # as the user set it, before set_threads


def set_threads(threads: Optional[int]) -> None:
    """Pin torch's intra-op threads. Call before importing torch (``OMP_NUM_THREADS`` is read once)."""
    if threads is None:
        return
    if threads < 1:
        raise SystemExit("--threads must be 1 or more")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set once in this process
        pass


def default_zoo() -> str:
    """The zoo folder ``make demo`` fills: ``$AUTOTL_ZOO`` or ``~/.cache/autotl/zoo``."""
    return os.environ.get("AUTOTL_ZOO") or str(Path("~/.cache/autotl/zoo").expanduser())


def machine_summary(device: str = "cpu") -> str:
    """``uname -m``, CPU count, torch version, torch threads (and the GPU when one is used)."""
    import torch

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    parts = [platform.machine() or "?", f"{cpus} CPU{'s' if cpus != 1 else ''}", f"torch {torch.__version__}",
             f"{torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() != 1 else ''}"]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name(torch.device(device)))
    return ", ".join(parts)


def command_line() -> str:
    """The command that ran this script, as it could be pasted (with ``OMP_NUM_THREADS`` when set)."""
    exe = Path(sys.executable)
    try:
        shown = str(exe.relative_to(Path.cwd())) if not exe.is_symlink() else str(exe)
    except ValueError:
        shown = str(exe)
    venv = ROOT / ".venv" / "bin"
    if exe.parent == venv or str(exe).startswith(str(venv)):
        shown = ".venv/bin/python"
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(ROOT)
    except ValueError:
        pass
    env = f"OMP_NUM_THREADS={_OMP_AT_START} " if _OMP_AT_START else ""
    return env + shlex.join([shown, str(script), *sys.argv[1:]])


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table; floats are already formatted by the caller."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def result_block(title: str, device: str, tables: Sequence[str], notes: Sequence[str] = ()) -> str:
    """One dated run: the machine, the exact command, notes and tables."""
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    parts = [f"### {stamp}: {title}", "", f"Machine: {machine_summary(device)}", "",
             f"Command: `{command_line()}`", ""]
    for note in notes:
        parts += [note, ""]
    for table in tables:
        parts += [table, ""]
    return "\n".join(parts).rstrip() + "\n"


def append_results(heading: str, block: str, path: Path = RESULTS) -> None:
    """Add ``block`` at the end of the ``## heading`` section of RESULTS.md (the section is created once)."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    lines: List[str] = text.rstrip("\n").splitlines()
    head = f"## {heading}"
    if head in lines:
        start = lines.index(head)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        before = lines[:end]
        while before and not before[-1].strip():
            before.pop()
        lines = before + [""] + block.rstrip("\n").splitlines() + ([""] if end < len(lines) else []) + lines[end:]
    else:
        lines += ["", head, ""] + block.rstrip("\n").splitlines()
    path.write_text("\n".join(lines) + "\n")
    print(f"appended to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} under '{head}'")


def ensure_digits_zoo(zoo: str, archs: Sequence[str] = DEMO_ARCHS, epochs: int = 6, device: str = "cpu") -> List[str]:
    """Pretrain the missing ``digits-<arch>`` source models on ``builtin:digits-source``, like ``make demo``.

    Returns the zoo source names (``zoo/digits-<arch>``). Models already in the zoo are reused as they are.
    """
    import autotl

    folder = Path(zoo).expanduser()
    names = []
    for arch in archs:
        weights = folder / f"digits-{arch}.safetensors"
        if not (weights.is_file() and weights.with_suffix(".json").is_file()):
            print(f"pretraining timm/{arch} on builtin:digits-source ({epochs} epochs) -> {weights}", flush=True)
            autotl.pretrain("builtin:digits-source", backbone=f"timm/{arch}", out=str(weights), epochs=epochs,
                            device=device, zoo=str(folder))
        names.append(f"zoo/digits-{arch}")
    return names


def warm_up(data: str, zoo: str) -> None:
    """Import the heavy modules and decode the data once, so the first timed search does not pay for it."""
    import timm  # noqa: F401  (about 3 s: it imports torchvision and torch._dynamo)

    import autotl
    from autotl import api, study  # noqa: F401  (imports torch, optuna)
    from autotl.data import load_dataset
    from autotl.report import collect_facts  # noqa: F401

    load_dataset(data, autotl.get_plugin_manager(zoo_dir=zoo))


def parse_ints(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"expected comma-separated integers, got {text!r}") from None


def fmt(x: Any, spec: str = ".3f") -> str:
    """A number for a results table; a dash when there is none."""
    return "—" if x is None else format(x, spec)


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` of the seeds' values (sd 0 for one value); a dash when there are none."""
    import statistics

    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def add_run_args(p: Any, work: str) -> None:
    """The arguments every zoo-using benchmark takes: the zoo and how to fill it, the work folder, the
    device, torch threads and ``--append``."""
    p.add_argument("--zoo", default=default_zoo(), help="zoo folder (default $AUTOTL_ZOO or ~/.cache/autotl/zoo)")
    p.add_argument("--archs", default=",".join(DEMO_ARCHS),
                   help="timm architectures pretrained into the zoo as digits-<arch> (default: the demo's three)")
    p.add_argument("--pretrain-epochs", type=int, default=6, help="epochs for missing zoo models (default 6)")
    p.add_argument("--work", default=work, help="folder for tasks and run folders")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (sets OMP_NUM_THREADS too)")
    p.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
