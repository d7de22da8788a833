"""Many workers on one study (PostgreSQL and the embedded journal), and a study read back from another
folder through its storage and artifact folder (crashes, budgets and best/ under concurrency: test_scaleout)."""
from __future__ import annotations

import json
import os
import uuid

import optuna
import pytest

import autotl
import autotl.storage
from autotl.cli import main

PG = os.environ.get("AUTOTL_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
SPACE = "epochs: {epochs}\npruner: none\nparams:\n  freeze_depth: 1.0\n  batch_size: 16\n  head_lr: {{low: 1.0e-3, high: 1.0e-2, log: true}}\n"


def space_file(tmp_path, epochs=1):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE.format(epochs=epochs))
    return path


@pytest.fixture
def pg_database():
    """A fresh PostgreSQL database on the machine's server, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(f"{PG}/test", connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") or os.environ.get("AUTOTL_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"no PostgreSQL server: {exc}")
    name = f"autotl_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield f"{PG}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
            cur.execute(f"DROP DATABASE IF EXISTS {name}")
        admin.close()


def check_every_trial_once(study, at_least):
    numbers = [t.number for t in study.trials]
    assert numbers == list(range(len(numbers))) and len(numbers) >= at_least  # no duplicates, none lost
    assert all(t.state.is_finished() for t in study.trials)
    assert {t.state for t in study.trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    return {t.user_attrs["pid"] for t in study.trials}


@pytest.mark.slow
def test_four_workers_share_one_postgresql_study(pg_database, split_folder, tmp_path):
    result = autotl.search(str(split_folder), space=str(space_file(tmp_path)), backbones="timm/test_vit", trials=24,
                           workers=4, device="cpu", out=str(tmp_path / "run"), storage=pg_database, study="pg4",
                           report=False, default_trials=0)
    study = optuna.load_study(study_name="pg4", storage=pg_database)
    pids = check_every_trial_once(study, 24)
    assert len(study.trials) == 24  # --trials is this command's count, shared by its workers
    assert len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 24  # no repeated parameters
    assert len(pids) >= 2 and os.getpid() not in pids  # the trials ran in the worker processes
    assert sum(result.summary["trials"].values()) == len(study.trials)
    assert "***" not in result.summary["storage"] or ":" in result.summary["storage"]
    assert autotl.predict(str(tmp_path / "run"), [str(split_folder / "test")], device="cpu")


@pytest.mark.slow
def test_four_workers_share_the_embedded_journal(split_folder, tmp_path):
    autotl.search(str(split_folder), space=str(space_file(tmp_path)), backbones="timm/test_vit", trials=40, workers=4,
                  device="cpu", out=str(tmp_path / "run"), study="j4", report=False, default_trials=0)
    study = optuna.load_study(study_name="j4", storage=autotl.storage.make_storage(None, tmp_path / "run"))
    pids = check_every_trial_once(study, 40)
    assert len(pids) >= 2


def test_report_and_predict_from_elsewhere_with_only_the_storage_and_artifacts(split_folder, tmp_path, monkeypatch,
                                                                              capsys):
    url = f"sqlite:///{tmp_path / 'shared' / 'studies.db'}"
    (tmp_path / "shared").mkdir()
    artifacts = tmp_path / "shared" / "artifacts"
    autotl.search(str(split_folder), space=str(space_file(tmp_path, epochs=2)), backbones="timm/test_vit", trials=2,
                  device="cpu", out=str(tmp_path / "run"), storage=url, study="far", artifacts=str(artifacts),
                  report=False, default_trials=0)
    assert (artifacts / "best" / "model.safetensors").is_file() and not (tmp_path / "run" / "best").exists()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["report", "--storage", url, "--study", "far", "--out", "report"]) == 0
    facts = json.loads((elsewhere / "report" / "report.json").read_text())
    assert facts["best"]["model_dir"] == str((artifacts / "best").resolve())
    assert main(["predict", str(artifacts), str(split_folder / "test" / "cat")]) == 0
    assert "cat_0.png" in capsys.readouterr().out


def test_resuming_with_another_space_is_refused(split_folder, tmp_path, capsys):
    args = ["search", str(split_folder), "--backbones", "timm/test_vit", "--trials", "1", "--device", "cpu",
            "--out", str(tmp_path / "run"), "--study", "same", "--no-report", "--default-trials", "0"]
    assert main(args + ["--space", str(space_file(tmp_path, epochs=1))]) == 0
    assert main(args + ["--space", "quick", "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: study 'same' was searched with another space (space.yaml" in err.replace(str(tmp_path) + "/", "")
    assert "pass the same --space, --backbones and --epochs, or start a new --study" in err


def test_keep_top_holds_exactly_the_k_best_models(split_folder, tmp_path):
    import math

    out = tmp_path / "run"
    result = autotl.search(str(split_folder), space=str(space_file(tmp_path, epochs=1)), backbones="timm/test_vit",
                           trials=5, device="cpu", out=str(out), keep_top=2, report=False, default_trials=0, seed=2)
    study = optuna.load_study(study_name=result.study, storage=autotl.storage.make_storage(None, out))
    kept = sorted(int(p.name.split("-")[1]) for p in (out / "top").iterdir() if not p.name.startswith("."))
    values = sorted(((t.value, -t.number) for t in study.trials), reverse=True)
    assert len(kept) == 2
    kept_values = sorted((study.trials[n].value for n in kept), reverse=True)
    assert all(math.isclose(a, b) for a, b in zip(kept_values, [v for v, _ in values[:2]]))
    for n in kept:
        assert json.loads((out / "top" / f"trial-{n}" / "config.json").read_text())["trial"] == n
    assert json.loads((out / "best" / "config.json").read_text())["value"] == values[0][0]


def test_a_trials_attributes_are_one_journal_append_that_reads_back_like_one_write_each(tmp_path):
    """set_trial_attrs stores what trial.set_user_attr would, key by key (every reader sees the same
    attributes, on resume and in other workers), but in one locked append of the journal file."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from autotl.study import set_trial_attrs

    attrs = {"backbone": "timm/test_vit", "params": {"head_lr": 0.01, "batch_size": 16}, "curve": [0.5, 0.75],
             "epochs_run": 2, "seconds": 1.25}
    stored, appends = {}, {}
    for how in ("one write each", "batched"):
        path = tmp_path / f"{how}.journal"
        backend = JournalFileBackend(str(path))
        calls = appends.setdefault(how, [])
        real = backend.append_logs
        backend.append_logs = lambda logs, real=real, calls=calls: (calls.append(len(logs)), real(logs))[1]
        study = optuna.create_study(study_name="s", storage=JournalStorage(backend))
        trial = study.ask()
        del calls[:]
        if how == "batched":
            set_trial_attrs(trial, attrs)
        else:
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
        assert trial.user_attrs == attrs  # what the running trial reads back
        study.tell(trial, 1.0)
        reread = optuna.load_study(study_name="s", storage=autotl.storage.make_storage(str(path), tmp_path))
        stored[how] = reread.trials[0].user_attrs
    assert stored["batched"] == stored["one write each"] == attrs
    assert appends["one write each"][:len(attrs)] == [1] * len(attrs)
    assert appends["batched"][0] == len(attrs)  # one append holds them all


def test_set_trial_attrs_on_other_storages_writes_each_key():
    from autotl.study import set_trial_attrs

    study = optuna.create_study()  # in memory
    trial = study.ask()
    set_trial_attrs(trial, {"a": 1, "b": [1, 2]})
    assert trial.user_attrs == {"a": 1, "b": [1, 2]} and study.trials[0].user_attrs == {"a": 1, "b": [1, 2]}


def test_the_heap_is_frozen_for_the_search_only():
    import gc

    from autotl.study import steady_heap

    assert gc.get_freeze_count() == 0
    with steady_heap():
        assert gc.get_freeze_count() > 0  # the per-trial collection skips these objects
    assert gc.get_freeze_count() == 0
    gc.freeze()  # a host process that freezes its own heap keeps it as it is
    try:
        frozen = gc.get_freeze_count()
        with steady_heap():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()


@pytest.mark.slow
def test_workers_sample_distinct_parameters(split_folder, tmp_path):
    """Every worker opens the study at the same moment: with one sampler seed they drew the same
    random startup points, and a 2-worker search repeated trials."""
    space = tmp_path / "space.yaml"
    space.write_text("epochs: 1\nsampler: {name: random}\npruner: {name: none}\nadapters: [linear]\n"
                     "params:\n  freeze_depth: 1.0\n  head_lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
                     "  weight_decay: {low: 1.0e-4, high: 1.0e-1, log: true}\n")
    autotl.search(str(split_folder), space=str(space), backbones="timm/test_resnet", trials=8, workers=2,
                  device="cpu", out=str(tmp_path / "run"), study="distinct", report=False, default_trials=0,
                  rank=False, soup=0, warm_start="off")
    study = optuna.load_study(study_name="distinct", storage=autotl.storage.make_storage(None, tmp_path / "run"))
    drawn = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(drawn) >= 8 and len(set(drawn)) == len(drawn), drawn


def test_array_job_tasks_get_their_own_sampler_stream(monkeypatch):
    from autotl.study import worker_index

    monkeypatch.delenv("AUTOTL_WORKER_INDEX", raising=False)
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert worker_index() == 3 and worker_index(1) == 1
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "7")
    assert worker_index() == 7


def test_workers_that_open_the_study_together_draw_different_trials(tmp_path):
    """Two workers open a study at the same moment (the same trial count) with the same --seed: they must
    not sample the same parameters (the old sampler seed was --seed + trials so far, equal for both)."""
    from autotl.space import load_space_file
    from autotl.storage import make_storage
    from autotl.study import open_study

    space_path = tmp_path / "space.yaml"
    space_path.write_text("epochs: 1\nsampler: {name: random}\nparams:\n  head_lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n")
    space = autotl.space.resolve_space(load_space_file(str(space_path)), autotl.get_plugin_manager(),
                                       ("timm/test_resnet",), None)
    storage = make_storage(None, tmp_path / "run")
    first = open_study("together", storage, space, "accuracy", seed=0, worker=1)
    second = open_study("together", storage, space, "accuracy", seed=0, worker=2)
    a, b = first.ask(), second.ask()
    assert a.suggest_float("x", 0, 1) != b.suggest_float("x", 0, 1)
