"""Live progress: a bar on a terminal, one plain line per trial in logs, nothing with --quiet."""
from __future__ import annotations

import io
import re

import pytest

import autotl
from autotl.cli import main
from autotl.progress import BarProgress, LineProgress, Progress, make_progress
from autotl.types import TrialRecord


class Terminal(io.StringIO):
    def isatty(self):
        return True


def record(number, state="complete", value=0.5, seconds=2.0):
    return TrialRecord(study="s", number=number, state=state, value=value, params={"freeze_depth": 0.5, "head_lr": 1e-3},
                       backbone="timm/test_vit", adapter="linear", curve=[value], epochs_run=1, seconds=seconds)


def test_make_progress_picks_by_stream():
    assert isinstance(make_progress(Terminal()), BarProgress)
    assert isinstance(make_progress(io.StringIO()), LineProgress)
    assert type(make_progress(Terminal(), quiet=True)) is Progress


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def test_line_progress_counts_trials_and_estimates_the_time_left():
    clock, out = Clock(), io.StringIO()
    progress = LineProgress(out, clock=clock)
    progress.search_started(4, None)
    clock.now += 10
    progress.trial_finished(record(0, value=0.5), 0.5)
    clock.now += 20
    progress.trial_finished(record(1, state="pruned", value=0.25), 0.5)
    first, second = out.getvalue().splitlines()
    assert first.startswith("trial   0 complete val=0.5 best=0.5  timm/test_vit  freeze=0.5  head_lr=0.001")
    assert first.endswith("[1/4 done, 10s elapsed, ETA 30s]")  # 10 s a trial, 3 left
    assert second.endswith("[2/4 done, 30s elapsed, ETA 30s]") and " pruned " in second  # 15 s a trial, 2 left


def test_timeout_caps_the_estimate():
    clock, out = Clock(), io.StringIO()
    progress = LineProgress(out, clock=clock)
    progress.search_started(None, 60)
    clock.now += 50
    progress.trial_finished(record(0), 0.5)
    assert out.getvalue().rstrip().endswith("[1 done, 50s elapsed, ETA 10s]")


def test_bar_on_a_terminal_shows_trial_backbone_epoch_value_best_and_eta(split_folder, tmp_path):
    screen = Terminal()
    autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=2, epochs=2, device="cpu",
                  out=str(tmp_path / "run"), progress=BarProgress(screen), report=False)
    text = screen.getvalue()
    assert "\r" in text  # redrawn in place
    assert re.search(r"search 0/2 \|", text) and re.search(r"search 2/2 \|", text)
    assert "trial 0: timm/test_vit, epoch 0/2" in text
    assert re.search(r"trial 1: timm/test_vit, epoch 2/2, val \d", text)
    assert "ETA " in text and re.search(r"best \d", text) and "elapsed" in text
    assert re.search(r"trial   0 (complete|pruned) ", text)  # finished trials are printed above the bar


def test_cli_prints_one_plain_line_per_trial_when_not_a_terminal(split_folder, tmp_path, capsys):
    assert main(["search", str(split_folder), "--space", "quick", "--backbones", "timm/test_vit", "--trials", "3",
                 "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-report"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and "\r" not in out
    assert all(re.search(r"\[\d/3 done, \d+s elapsed, ETA \d+s\]$", line) for line in lines)
    assert "Leaderboard (accuracy on val; " in out and not (tmp_path / "run" / "report.html").exists()


def test_quiet_prints_only_the_leaderboard(split_folder, tmp_path, capsys):
    assert main(["search", str(split_folder), "--space", "quick", "--backbones", "timm/test_vit", "--trials", "2",
                 "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "run"), "--quiet", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert not [line for line in out.splitlines() if line.startswith("trial ")]
    board = out.split("Leaderboard")[1].split("Best:")[0].strip().splitlines()
    # title, the params every trial shares, header, 1 row, the rest
    assert len(board) == 5 and board[1].startswith("Fixed in every trial: ") and board[-1] == "... 1 more in the report"
    assert "Report: " in out and (tmp_path / "run" / "report.html").is_file()


@pytest.mark.parametrize("top", ["0", "x"])
def test_bad_top_is_refused(top, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "builtin:digits", "--top", top])
    assert exc.value.code == 2 and "--top: expected a whole number >= 1" in capsys.readouterr().err
