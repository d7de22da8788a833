"""Reports: report.json/.md/.html built from a real study agree with the storage, from a run
folder or a storage URL, for studies with pruned, failed, single and running trials."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import optuna
import pytest

import autotl
from autotl.cli import main
from autotl.report import open_report_study
from conftest import FIXTURE_PLUGINS

SPACE = """
epochs: 3
adapters: [linear]
sampler: random
pruner: {name: median, n_startup_trials: 3, n_warmup_steps: 1}
params:
  freeze_depth: {choices: [0.0, 1.0]}
  head_lr: {low: 1.0e-4, high: 1.0e-2, log: true}
  batch_size: 16
  warmup_epochs: 0
"""
SECTIONS = ("header", "leaderboard", "best", "curves", "importance", "backbones", "cost", "failed")
FIGURES = ("optimization_history", "learning_curves", "importance", "by_backbone", "freeze_depth", "timeline",
           "best_over_time", "confusion_matrix")


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """A real search on digits whose trials complete, get pruned and fail (a source that cannot build)."""
    root = tmp_path_factory.mktemp("report")
    data = "builtin:digits"
    space = root / "space.yaml"
    space.write_text(SPACE)
    result = autotl.search(data, space=str(space), backbones="broken/*,timm/test_vit,timm/test_resnet",
                           trials=10, seed=0, device="cpu", out=str(root / "run"), study="rep",
                           plugins=[str(FIXTURE_PLUGINS / "broken_build.py")])
    study, _, _ = open_report_study(str(root / "run"))
    return {"root": root, "run": root / "run", "result": result, "study": study, "data": data}


class Page(HTMLParser):
    """Tags of interest in a report.html: sections, images, table rows by table id, links."""

    def __init__(self):
        super().__init__()
        self.sections, self.images, self.rows, self.links, self.scripts = [], [], {}, [], 0
        self._table = None
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a.get("id"))
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "table":
            self._table = a.get("id")
            self.rows[self._table] = 0
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows[self._table] += 1
        elif tag in ("link", "script", "iframe"):
            self.scripts += 1
        if "href" in a and not a["href"].startswith("#"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False


def parse(path):
    page = Page()
    page.feed(path.read_text())
    return page


def test_the_fixture_has_every_trial_state(study_run):
    states = {t.state.name for t in study_run["study"].trials}
    assert states == {"COMPLETE", "PRUNED", "FAIL"}


def test_search_writes_three_report_files_with_the_same_facts(study_run):
    run = study_run["run"]
    facts = json.loads((run / "report.json").read_text())
    assert facts == json.loads(json.dumps(dict(study_run["result"].report) | {"figures": facts["figures"]}))
    assert sorted(facts["figures"]["drawn"]) == sorted(FIGURES)
    for name in FIGURES:
        assert (run / "report_files" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "report.md").is_file() and (run / "report.html").is_file()


def test_leaderboard_matches_the_study_trials(study_run):
    study = study_run["study"]
    facts = json.loads((study_run["run"] / "report.json").read_text())
    complete = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda t: (-t.value, t.number))
    rows = facts["leaderboard"]
    assert [r["trial"] for r in rows] == [t.number for t in complete]
    assert [r["rank"] for r in rows] == list(range(1, len(complete) + 1))
    for row, t in zip(rows, complete):
        assert row["value"] == t.value
        assert row["backbone"] == t.params["backbone"] and row["adapter"] == t.params["adapter"]
        assert row["head_lr"] == pytest.approx(t.params["head_lr"])
        assert row["freeze_depth"] == t.params["freeze_depth"]
        assert row["epochs_run"] == t.user_attrs["epochs_run"] == len(t.intermediate_values)
        assert row["seconds"] == pytest.approx(t.user_attrs["seconds"], abs=1e-3)
        assert row["params"] == t.user_attrs["params"]
        assert row["other"]["batch_size"] == 16


def test_header_best_and_failures_match_the_storage(study_run):
    study = study_run["study"]
    facts = json.loads((study_run["run"] / "report.json").read_text())
    h = facts["header"]
    states = [t.state.name.lower() for t in study.trials]
    assert h["trials"]["complete"] == states.count("complete") and h["trials"]["pruned"] == states.count("pruned")
    assert h["trials"]["fail"] == states.count("fail") and h["trials"]["running"] == 0
    assert h["dataset"]["images"] == {"train": 75, "val": 75, "test": 746}
    assert h["dataset"]["classes"] == ["5", "6", "7", "8", "9"]
    assert h["budget"]["trials"] == 10 and h["budget"]["epochs"] == 3
    assert h["devices"] == ["cpu"] and h["autotl_version"] == autotl.__version__ and h["elapsed_s"] > 0
    best = facts["best"]
    assert best["trial"] == study.best_trial.number and best["val"]["accuracy"] == study.best_value
    assert best["test"] == {k: v for k, v in study.user_attrs["test_scores"][str(best["trial"])].items()
                            if k not in ("confusion_matrix", "details")}
    cm = best["confusion_matrix"]
    assert cm["split"] == "test" and cm["labels"] == ["5", "6", "7", "8", "9"]
    assert sum(map(sum, cm["matrix"])) == 746
    assert best["model_dir"] == str((study_run["run"] / "best").resolve())
    failed = {t.number: t.user_attrs["fail_reason"] for t in study.trials if t.state.name == "FAIL"}
    assert {f["trial"]: f["reason"] for f in facts["failed"]} == failed
    assert all("broken/net" in reason for reason in failed.values())


def test_curves_cost_and_backbones_match_the_storage(study_run):
    study = study_run["study"]
    facts = json.loads((study_run["run"] / "report.json").read_text())
    for t in study.trials:
        if t.intermediate_values:
            curve = facts["curves"][str(t.number)]
            assert curve["steps"] == sorted(t.intermediate_values)
            assert curve["values"] == [t.intermediate_values[s] for s in curve["steps"]]
            assert curve["state"] == t.state.name.lower()
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    assert [(p["trial"], p["stopped_at_epoch"]) for p in facts["pruned"]] == \
           [(t.number, max(t.intermediate_values)) for t in pruned]
    trained = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    cost = facts["cost"]
    assert cost["epochs_trained"] == sum(len(t.intermediate_values) for t in trained)
    assert cost["epochs_without_pruning"] == 3 * len(trained)
    assert cost["epochs_trained"] < cost["epochs_without_pruning"]
    assert cost["trials_to_best"] == study.best_trial.number + 1 and cost["time_to_best_s"] > 0
    assert [p["trial"] for p in cost["per_trial"]] == [t.number for t in study.trials]
    by = facts["by_backbone"]
    for name, entry in by.items():
        mine = [t for t in study.trials if t.params["backbone"] == name]
        assert entry["trials"] == len(mine)
        assert sorted(entry["values"]) == sorted(t.value for t in mine if t.state.name == "COMPLETE")
    assert set(facts["importance"]["fANOVA"]["values"]) >= {"head_lr", "freeze_depth"}
    assert set(facts["importance"]["PED-ANOVA"]["values"]) >= {"head_lr", "freeze_depth"}


def test_html_is_self_contained_with_every_section(study_run):
    page = parse(study_run["run"] / "report.html")
    assert page.sections == list(SECTIONS)
    assert len(page.images) == len(FIGURES)
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert page.scripts == 0 and page.links == []
    complete = sum(t.state.name == "COMPLETE" for t in study_run["study"].trials)
    assert page.rows["leaderboard"] == complete
    assert page.rows["failed"] == sum(t.state.name == "FAIL" for t in study_run["study"].trials)
    assert page.rows["pruned"] == sum(t.state.name == "PRUNED" for t in study_run["study"].trials)


def test_markdown_holds_the_same_tables_and_figures(study_run):
    md = (study_run["run"] / "report.md").read_text()
    facts = json.loads((study_run["run"] / "report.json").read_text())
    for title in ("## Search", "## Leaderboard", "## Best setup", "## Learning curves", "## What mattered",
                  "## By backbone", "## Cost", "## Failed trials"):
        assert title in md
    board = md.split("## Leaderboard")[1].split("## Best setup")[0]
    rows = [line for line in board.splitlines() if re.match(r"\| \d+ \|", line)]
    assert [int(r.split("|")[2]) for r in rows] == [r["trial"] for r in facts["leaderboard"]]
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (study_run["run"] / link).is_file()
    for failure in facts["failed"]:
        assert failure["reason"].replace("|", "\\|") in md


def leaderboard_header(html):
    """The column titles of report.html's leaderboard table."""
    head = re.search(r'<table id="leaderboard"><thead><tr>(.*?)</tr></thead>', html).group(1)
    return re.findall(r"<th>(.*?)</th>", head)


def test_leaderboard_shows_only_the_params_that_vary(study_run):
    """Params every completed trial shares (batch size, adapter, ...) get no column but one line above
    the table; those that differ (head lr) keep theirs. report.json still holds every trial's params."""
    run = study_run["run"]
    facts = json.loads((run / "report.json").read_text())
    rows, columns, fixed = facts["leaderboard"], facts["leaderboard_columns"], facts["leaderboard_fixed"]
    assert len(rows) >= 2
    assert {"batch_size": 16, "warmup_epochs": 0, "adapter": "linear"}.items() <= fixed.items()
    assert "head_lr" in columns and not set(columns) & set(fixed)
    everything = lambda r: {"backbone": r["backbone"], "adapter": r["adapter"], **r["params"]}  # noqa: E731
    for name in columns:
        assert len({json.dumps(everything(r).get(name)) for r in rows}) > 1, name
    for name, value in fixed.items():
        assert all(everything(r)[name] == value for r in rows), name
    assert all(r["params"]["batch_size"] == 16 for r in rows)
    md = (run / "report.md").read_text()
    board = md.split("## Leaderboard")[1].split("## Best setup")[0]
    line = next(line for line in board.splitlines() if line.startswith("Fixed in every trial: "))
    assert "batch_size 16" in line and "adapter linear" in line and "head_lr" not in line
    md_header = next(line for line in board.splitlines() if line.startswith("| rank | trial |"))
    html = (run / "report.html").read_text()
    for header in (md_header, " | ".join(leaderboard_header(html))):
        assert "head lr" in header and "batch size" not in header and "adapter" not in header
    assert html.index("Fixed in every trial: ") < html.index('<table id="leaderboard">')


def test_a_param_only_some_trials_set_varies(tmp_path):
    """A param None in some listed trials and set in others gets a column with — where it is unset;
    one set alike everywhere is fixed; without a `selection` attr or a test split, neither shows."""
    from autotl.report import format_leaderboard, report

    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    dist = {"backbone": optuna.distributions.CategoricalDistribution(["a", "b"]),
            "optimizer": optuna.distributions.CategoricalDistribution(["adamw", "sgd"]),
            "freeze_depth": optuna.distributions.FloatDistribution(0, 1),
            "lp_fraction": optuna.distributions.FloatDistribution(0, 1)}
    for i, extra in enumerate([{}, {"lp_fraction": 0.4}, {}]):
        params = {"backbone": "a", "optimizer": "adamw", "freeze_depth": i / 4, **extra}
        study.add_trial(optuna.trial.create_trial(params=params, distributions={k: dist[k] for k in params},
                                                  value=0.5 + i / 10, intermediate_values={1: 0.5}))
    out, facts = report(storage=url, study="plain", out=str(tmp_path / "out"))
    assert facts["leaderboard_columns"] == ["freeze_depth", "lp_fraction"]
    assert facts["leaderboard_fixed"] == {"backbone": "a", "optimizer": "adamw"}
    md = (out / "report.md").read_text()
    assert "Fixed in every trial: backbone a, optimizer adamw" in md
    assert "| 1 | 2 | 0.5 | — | 0.7 |" in md and "| 2 | 1 | 0.25 | 0.4 | 0.6 |" in md
    assert leaderboard_header((out / "report.html").read_text()) == [
        "rank", "trial", "freeze depth", "lp fraction", "val value", "epochs", "seconds"]
    assert facts["best"]["selection"] is None and "Selection rule" not in md
    assert facts["best"]["val_test_gap"] == {"metric": "value", "val": 0.7, "test": None, "gap": None}
    assert "Best trial: val value 0.7." in md and "val − test" not in md
    assert "Fixed in every trial: backbone a, optimizer adamw" in format_leaderboard(facts)


def test_best_setup_shows_the_selection_rule_and_the_val_test_gap(study_run, tmp_path):
    """The study's `selection` attr and the best trial's val − test gap reach report.json, the
    Markdown, the HTML and the terminal."""
    import shutil

    from autotl.report import format_leaderboard, write_report

    journal = tmp_path / "copy.journal"  # a copy, so the shared study stays as the search left it
    shutil.copy(study_run["run"] / "study.journal", journal)
    study, _, _ = open_report_study(storage=str(journal), study="rep")
    rule = {"rule": "last3", "description": "A trial scores the mean of its last three epochs' val accuracy."}
    study.set_user_attr("selection", rule)
    facts = write_report(study, tmp_path / "out")
    best = facts["best"]
    assert best["selection"] == rule
    val, test = best["val"]["accuracy"], best["test"]["accuracy"]
    assert best["val_test_gap"]["val"] == val and best["val_test_gap"]["test"] == test
    assert best["val_test_gap"]["gap"] == pytest.approx(val - test, abs=1e-6)
    gap = f"val accuracy {val:.4g}, test {test:.4g} (val − test = {best['val_test_gap']['gap']:.4g})"
    md = (tmp_path / "out" / "report.md").read_text().split("## Best setup")[1].split("## Learning curves")[0]
    html = (tmp_path / "out" / "report.html").read_text()
    for text in (f"Selection rule: last3 — {rule['description']}", f"Best trial: {gap}."):
        assert text in md and text in html.replace("&#x27;", "'")
    terminal = format_leaderboard(facts)
    assert gap in terminal and "Selection rule: last3" in terminal


def test_report_command_rebuilds_from_the_run_folder(study_run, capsys):
    run = study_run["run"]
    for name in ("report.html", "report.md", "report.json"):
        (run / name).unlink()
    assert main(["report", str(run), "--top", "1"]) == 0
    out = capsys.readouterr().out
    board = out.split("Leaderboard")[1].split("Best:")[0].strip().splitlines()
    assert board[1].startswith("Fixed in every trial: ") and "batch_size 16" in board[1]
    assert board[2].split()[:2] == ["rank", "trial"] and board[3].split()[:2] == ["1", str(study_run["study"].best_trial.number)]
    assert "more in the report" in board[-1]
    assert f"Best: trial {study_run['study'].best_trial.number}" in out
    assert (run / "report.html").is_file() and (run / "report.md").is_file()
    assert json.loads((run / "report.json").read_text())["leaderboard"][0]["trial"] == study_run["study"].best_trial.number


def test_report_command_from_a_storage_url(study_run, tmp_path, capsys):
    journal = study_run["run"] / "study.journal"
    out = tmp_path / "elsewhere"
    assert main(["report", "--storage", str(journal), "--study", "rep", "--out", str(out)]) == 0
    facts = json.loads((out / "report.json").read_text())
    assert facts["header"]["study"] == "rep" and facts["header"]["storage"] == str(journal)
    assert len(facts["leaderboard"]) == sum(t.state.name == "COMPLETE" for t in study_run["study"].trials)
    assert facts["best"]["model_dir"] == str((study_run["run"] / "best").resolve())  # found via the study's run_dir
    assert "Report: " in capsys.readouterr().out


def test_storage_passwords_are_masked():
    from autotl.report import mask_url

    assert mask_url("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert mask_url("sqlite:///a.db") == "sqlite:///a.db"
    assert mask_url("postgresql://bob:s3/cret@db:5432/x") == "postgresql://bob:***@db:5432/x"  # a "/" inside
    assert mask_url("postgresql://bob@db/x?password=s3cret&sslmode=require") == \
        "postgresql://bob@db/x?sslmode=require&password=***"
    error = "cannot connect to postgresql://bob:s3/cret@db/x?password=zz: refused"  # a URL inside a message
    assert "s3/cret" not in mask_url(error) and "zz" not in mask_url(error)


@pytest.mark.parametrize("args, message", [
    (["report"], "error: nothing to report on — pass a run folder, or --storage URL"),
    (["report", "no/such/run"], "error: run folder 'no/such/run' does not exist"),
    (["report", "--storage", "missing.journal"], "error: journal file 'missing.journal' does not exist"),
    (["report", "--storage", "sqlite:///missing.db"], "error: SQLite file 'missing.db' does not exist"),
    (["report", "--storage", "bogus://x"], "error: cannot open storage 'bogus://x'"),
    (["report", "run", "--top", "0"], "argument --top: expected a whole number >= 1, got '0'"),
])
def test_report_bad_input_is_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    try:
        code = main(args)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_report_names_the_studies_when_the_storage_holds_several(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'many.db'}"
    for name in ("alpha", "beta"):
        optuna.create_study(study_name=name, storage=url)
    assert main(["report", "--storage", url]) == 2
    assert "holds 2 studies: alpha, beta — pick one with --study NAME" in capsys.readouterr().err
    assert main(["report", "--storage", url, "--study", "gamma"]) == 2
    assert "no study 'gamma'" in capsys.readouterr().err


def test_empty_run_folder_is_refused(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no study.journal and no summary.json" in capsys.readouterr().err


def test_single_trial_report(tmp_path, split_folder):
    result = autotl.search(str(split_folder), space="quick", backbones="timm/test_vit", trials=1, epochs=1,
                           device="cpu", out=str(tmp_path / "one"))
    facts = json.loads((tmp_path / "one" / "report.json").read_text())
    assert len(facts["leaderboard"]) == 1 and facts["best"]["trial"] == 0
    assert "importance" in facts["figures"]["skipped"]  # one trial explains nothing
    assert facts["importance"]["fANOVA"]["error"] == "needs at least 2 completed trials, the study has 1"
    page = parse(tmp_path / "one" / "report.html")
    assert page.rows["leaderboard"] == 1 and page.sections == list(SECTIONS)
    assert len(page.images) == len(facts["figures"]["drawn"]) >= 6
    assert result.report["best"]["trial"] == 0


def test_hand_made_study_with_pruned_failed_and_running_trials(tmp_path):
    """A study made with plain Optuna (no autotl attrs) with every state renders."""
    from autotl.report import report

    url = f"sqlite:///{tmp_path / 'plain.db'}"
    study = optuna.create_study(study_name="plain", storage=url, direction="maximize")
    dist = {"backbone": optuna.distributions.CategoricalDistribution(["a", "b"]),
            "freeze_depth": optuna.distributions.FloatDistribution(0, 1)}
    for i, (state, value) in enumerate([("COMPLETE", 0.5), ("COMPLETE", 0.7), ("PRUNED", None), ("FAIL", None)]):
        study.add_trial(optuna.trial.create_trial(
            params={"backbone": "ab"[i % 2], "freeze_depth": i / 4}, distributions=dist, value=value,
            state=getattr(optuna.trial.TrialState, state), intermediate_values={1: 0.3 + i / 10, 2: 0.4 + i / 10}))
    running = study.ask({"backbone": dist["backbone"], "freeze_depth": dist["freeze_depth"]})
    running.report(0.2, 1)
    out, facts = report(storage=url, study="plain", out=str(tmp_path / "out"))
    assert facts["header"]["trials"] == {"complete": 2, "pruned": 1, "fail": 1, "running": 1, "waiting": 0}
    assert [r["trial"] for r in facts["leaderboard"]] == [1, 0]
    assert facts["failed"] == [{"trial": 3, "backbone": "b", "reason": "(no reason recorded)"}]
    assert facts["running"] == [{"trial": 4, "backbone": running.params["backbone"], "epochs_so_far": 1}]
    html = (out / "report.html").read_text()
    assert "still running" in html and "no autotl attributes" in html
    assert parse(out / "report.html").rows["leaderboard"] == 2


HARNESS = """<!DOCTYPE html><html><body><pre id="result">pending</pre>
<iframe id="report" src="report.html" style="width:1200px;height:900px"></iframe>
<script>
document.getElementById("report").addEventListener("load", function () {
  var doc = this.contentDocument;
  var images = Array.prototype.map.call(doc.images, function (img) {
    return {alt: img.alt, complete: img.complete, naturalWidth: img.naturalWidth};
  });
  var rows = doc.querySelectorAll("#leaderboard tbody tr").length;
  document.getElementById("result").textContent = JSON.stringify({images: images, leaderboard_rows: rows});
});
</script></body></html>"""


def find_chromium():
    import os
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("AUTOTL_REQUIRE_BROWSER"):
        pytest.fail("Chromium is not installed; `make test` installs Debian's chromium package")
    pytest.skip("Chromium is not installed (make test installs it)")


def chromium(binary, profile, *args):
    import subprocess

    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_html_report_renders_in_a_real_browser(study_run, tmp_path):
    """Headless Chromium decodes every figure, shows one leaderboard row per completed trial, and
    leaves a screenshot in this test's temporary folder."""
    import functools
    import http.server
    import shutil
    import threading

    binary = find_chromium()
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(study_run["run"] / "report.html", site / "report.html")  # alone: nothing beside it is needed
    (site / "harness.html").write_text(HARNESS)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        dom = chromium(binary, tmp_path / "profile1", "--virtual-time-budget=10000", "--dump-dom",
                       f"{base}/harness.html")
        shot = tmp_path / "report-screenshot.png"
        chromium(binary, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,2400",
                 f"{base}/report.html")
    finally:
        server.shutdown()
    match = re.search(r'<pre id="result">(.*?)</pre>', dom.stdout, re.S)
    assert match, f"no result in the page: {dom.stdout[-500:]} {dom.stderr[-500:]}"
    result = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    facts = json.loads((study_run["run"] / "report.json").read_text())
    assert len(result["images"]) == len(facts["figures"]["drawn"]) == len(FIGURES)
    assert all(img["complete"] and img["naturalWidth"] > 0 for img in result["images"]), result["images"]
    complete = sum(t.state.name == "COMPLETE" for t in study_run["study"].trials)
    assert result["leaderboard_rows"] == complete
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        assert len(img.convert("L").resize((64, 120)).getcolors(4096) or []) > 20  # a rendered page, not a blank one
    print(f"screenshot: {shot}")


@pytest.mark.slow
def test_report_from_a_storage_url_while_another_process_adds_trials(tmp_path):
    """A worker process keeps adding trials to a SQLite study; reports built meanwhile agree with
    the storage at that moment, and a final one sees every trial."""
    import subprocess
    import sys
    import time

    from autotl.report import report

    url = f"sqlite:///{tmp_path / 'live.db'}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "autotl", "search", "builtin:digits", "--space", "quick", "--backbones",
         "timm/test_vit", "--trials", "12", "--epochs", "3", "--device", "cpu", "--storage", url, "--study", "live",
         "--out", str(tmp_path / "run"), "--no-report", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    snapshots = []
    try:
        deadline = time.time() + 300
        while worker.poll() is None and time.time() < deadline and len(snapshots) < 2:
            time.sleep(0.5)
            study = None
            try:
                study = optuna.load_study(study_name="live", storage=url)
            except KeyError:
                continue
            if not any(t.state.is_finished() for t in study.trials):
                continue
            _, facts = report(storage=url, study="live", out=str(tmp_path / f"snap{len(snapshots)}"))
            if worker.poll() is None:  # the worker was still adding trials while the report was built
                snapshots.append(facts)
        out, err = worker.communicate(timeout=300)
    finally:
        worker.kill()
    assert worker.returncode == 0, err[-2000:]
    assert snapshots, "no report was built while the worker ran"
    for facts in snapshots:
        counts = facts["header"]["trials"]
        assert 1 <= counts["complete"] + counts["pruned"] + counts["fail"] < 12
        assert len(facts["leaderboard"]) == counts["complete"]
    _, final = report(storage=url, study="live", out=str(tmp_path / "final"))
    study = optuna.load_study(study_name="live", storage=url)
    assert sum(final["header"]["trials"].values()) == len(study.trials) == 12
    assert [r["trial"] for r in final["leaderboard"]] == [
        t.number for t in sorted(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
                                 key=lambda t: (-t.value, t.number))]
    assert (tmp_path / "snap0" / "report.html").is_file()


def test_without_a_test_split_the_confusion_matrix_is_on_val(image_folder, tmp_path):
    autotl.search(str(image_folder), space="quick", backbones="timm/test_vit", trials=1, epochs=2, device="cpu",
                  out=str(tmp_path / "run"), seed=0)
    facts = json.loads((tmp_path / "run" / "report.json").read_text())
    cm = facts["best"]["confusion_matrix"]
    assert cm["split"] == "val" and facts["best"]["test"] is None
    assert sum(map(sum, cm["matrix"])) == facts["header"]["dataset"]["images"]["val"] > 0
    correct = sum(cm["matrix"][i][i] for i in range(len(cm["matrix"])))
    assert correct / sum(map(sum, cm["matrix"])) == pytest.approx(facts["best"]["val"]["accuracy"])  # best epoch
    assert "confusion_matrix" in facts["figures"]["drawn"]
    assert "no test split" in (tmp_path / "run" / "report.md").read_text()
