"""Scale-out you can trust: budgets shared by concurrent commands, a kill -9 and an immediate rerun, a
live trial that another worker's reaper must leave alone, Ctrl-C that touches only its own trials,
``best/`` read while it is replaced, a stale ``best/``, and a resume on other data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest

import autotl
import autotl.storage
from autotl.errors import ConfigError
from test_workers import pg_database, space_file  # noqa: F401  (a fixture)

LONG = 1500  # epochs of a trial that must still run while something else happens


def search_cmd(data, space, out, study, *extra):
    return [sys.executable, "-m", "autotl", "search", str(data), "--space", str(space), "--backbones",
            "timm/test_vit", "--device", "cpu", "--out", str(out), "--study", study, "--quiet", "--no-report",
            "--default-trials", "0", "--no-rank", "--soup", "0", "--warm-start", "off", *extra]


def search_kw(tmp_path, out, study, **extra):
    """The API's options for a quick search of the tiny data on one tiny network."""
    return dict(space=str(space_file(tmp_path)), backbones="timm/test_vit", device="cpu", out=str(out), study=study,
                report=False, default_trials=0, rank=False, soup=0, warm_start="off", quiet=True, **extra)


def searched_once(split_folder, tmp_path, study):
    """One quick trial in a new study; returns its run folder, the options used, and the study."""
    out = tmp_path / "run"
    kw = search_kw(tmp_path, out, study)
    autotl.search(str(split_folder), trials=1, **kw)
    return out, kw, load(study, autotl.storage.make_storage(None, out))


def quiet_env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def load(study, storage):
    return optuna.load_study(study_name=study, storage=storage)


def wait_for(study_name, storage, condition, limit=240):
    deadline = time.time() + limit
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            study = load(study_name, storage)
        except KeyError:
            continue
        if condition(study.trials):
            return study
    raise AssertionError("timed out waiting for the study")


def running(trials):
    return [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]


# -- budgets ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_commands_with_trials_8_on_one_study_finish_16(pg_database, split_folder, tmp_path):  # noqa: F811
    space = space_file(tmp_path)
    procs = [subprocess.Popen(search_cmd(split_folder, space, tmp_path / f"run{i}", "shared", "--trials", "8",
                                         "--storage", pg_database, "--seed", "0"),
                              env=quiet_env(AUTOTL_WORKER_INDEX=str(i)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    trials = load("shared", pg_database).trials
    assert len(trials) == 16 and all(t.state.is_finished() for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 16  # no repeated parameters


@pytest.mark.slow
def test_array_tasks_creating_one_databases_schema_at_once_all_start(pg_database, tmp_path):  # noqa: F811
    """The first tasks of a Slurm array open a fresh PostgreSQL database together: its schema creation races."""
    code = ("import sys, time\nfrom pathlib import Path\nimport autotl.storage\n"
            "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
            "autotl.storage.make_storage(sys.argv[1], Path(sys.argv[3]))\n")
    start = str(time.time() + 4.0)
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_database, start, str(tmp_path)], env=quiet_env(),
                              stderr=subprocess.PIPE, text=True) for _ in range(6)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-1500:]


@pytest.mark.slow
def test_max_trials_caps_the_whole_study_across_commands(split_folder, tmp_path):
    space, out = space_file(tmp_path), tmp_path / "run"
    procs = [subprocess.Popen(search_cmd(split_folder, space, out, "capped", "--trials", "8", "--max-trials", "6"),
                              env=quiet_env(AUTOTL_WORKER_INDEX=str(i)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    trials = load("capped", autotl.storage.make_storage(None, out)).trials
    # Each command checks the cap before it starts a trial, counting running ones; two that check in
    # the same few milliseconds may both start, so the cap holds to within one trial per extra command.
    assert 6 <= len(trials) <= 7, [(t.number, t.state.name, t.user_attrs.get("pid")) for t in trials]


def test_trials_counts_this_commands_trials_on_a_resumed_study(split_folder, tmp_path):
    kw = search_kw(tmp_path, tmp_path / "run", "again")
    autotl.search(str(split_folder), trials=2, **kw)
    result = autotl.search(str(split_folder), trials=2, **kw)
    assert sum(result.summary["trials"].values()) == 4
    capped = autotl.search(str(split_folder), trials=5, max_trials=5, **kw)
    assert sum(capped.summary["trials"].values()) == 5  # the cap counts every trial of the study


@pytest.mark.slow
def test_timeout_holds_across_workers(split_folder, tmp_path):
    space = space_file(tmp_path, epochs=3)
    started = time.time()
    # 15 s: two workers must start (import torch, load the data) before the deadline on a loaded machine.
    result = autotl.search(str(split_folder), space=str(space), backbones="timm/test_vit", timeout=15, workers=2,
                           device="cpu", out=str(tmp_path / "run"), study="t", report=False, default_trials=0,
                           rank=False, soup=0, warm_start="off", quiet=True)
    study = load("t", autotl.storage.make_storage(None, tmp_path / "run"))
    assert sum(result.summary["trials"].values()) >= 1
    # No worker starts a trial after the command's deadline (start-up plus 15 s, once the data is loaded).
    assert max(t.datetime_start.timestamp() for t in study.trials) < started + 15 + 30
    assert all(t.state.is_finished() for t in study.trials)


# -- crashes and the reaper -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_kill_9_then_an_immediate_rerun_leaves_no_trial_running(backend, split_folder, tmp_path, request):
    url = request.getfixturevalue("pg_database") if backend == "postgresql" else None
    storage = autotl.storage.make_storage(url, tmp_path / "run")
    space = space_file(tmp_path, epochs=LONG)
    cmd = search_cmd(split_folder, space, tmp_path / "run", "k9", *(["--storage", url] if url else []))
    worker = subprocess.Popen(cmd + ["--trials", "50"], env=quiet_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_for("k9", storage, lambda ts: len(ts) >= 1 and ts[-1].state == optuna.trial.TrialState.RUNNING
             and "params" in ts[-1].user_attrs)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    killed = running(load("k9", storage).trials)
    assert len(killed) == 1
    # At once, with the default 20 s heartbeat: the rerun on this machine sees that the owner is gone.
    rerun = subprocess.run(cmd + ["--trials", "1", "--epochs", str(LONG)], env=quiet_env(), capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    trials = load("k9", storage).trials
    assert not running(trials)
    dead = trials[killed[0].number]
    assert dead.state == optuna.trial.TrialState.FAIL
    assert dead.user_attrs["fail_reason"].startswith("stale: its worker stopped responding (its process (pid")
    retry = [t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == dead.number]
    assert len(retry) == 1 and retry[0].state == optuna.trial.TrialState.COMPLETE
    assert retry[0].params == dead.params and "fail_reason" not in retry[0].user_attrs
    assert retry[0].user_attrs["owner"]["pid"] != dead.user_attrs["owner"]["pid"]


@pytest.mark.slow
def test_a_live_trial_is_not_reaped_by_a_worker_with_a_shorter_heartbeat_or_a_skewed_clock(split_folder, tmp_path):
    out = tmp_path / "run"
    storage = autotl.storage.make_storage(None, out)
    cmd = search_cmd(split_folder, space_file(tmp_path, epochs=LONG), out, "live")
    owner = subprocess.Popen(cmd + ["--trials", "2"], env=quiet_env(AUTOTL_HEARTBEAT_S="1.5"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for("live", storage, lambda ts: len(ts) == 1 and "params" in ts[0].user_attrs)
    # Another worker, whose own heartbeat setting is 0.2 s and whose clock runs an hour ahead, runs the
    # reaper before and after its trial, which lasts many of its own intervals, while the first one's run.
    skew = tmp_path / "skew"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text("import time\n_t = time.time\ntime.time = lambda: _t() + 3600\n")
    other = subprocess.run(cmd + ["--trials", "1"], capture_output=True, text=True, timeout=600,
                           env=quiet_env(AUTOTL_HEARTBEAT_S="0.2",
                                         PYTHONPATH=f"{skew}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"))
    assert other.returncode == 0, other.stderr[-2000:]
    assert owner.wait(timeout=600) == 0, owner.stderr.read()[-2000:]
    trials = load("live", storage).trials
    assert len(trials) == 3
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3, \
        [t.user_attrs.get("fail_reason") for t in trials]


def test_an_rdb_heartbeat_goes_on_after_a_storage_error(tmp_path, monkeypatch):
    """Optuna's heartbeat thread ends at its first exception: a lost connection would leave a live
    trial silent, failed as stale while its worker still trains it."""
    from optuna.storages import RDBStorage

    monkeypatch.setenv("AUTOTL_HEARTBEAT_S", "1")
    storage = autotl.storage.make_storage(f"sqlite:///{tmp_path / 'beats.db'}", tmp_path)
    beats = []
    real = RDBStorage.record_heartbeat

    def flaky(self, trial_id):
        beats.append(time.time())
        if len(beats) == 2:
            raise RuntimeError("server closed the connection unexpectedly")
        real(self, trial_id)

    monkeypatch.setattr(RDBStorage, "record_heartbeat", flaky)
    study = optuna.create_study(storage=storage)
    study.optimize(lambda trial: time.sleep(3.6) or 1.0, n_trials=1)
    assert len(beats) >= 4  # beats 3 and 4 came after the failed one


def test_ctrl_c_fails_only_this_process_s_own_trials(split_folder, tmp_path):
    import socket

    out, kw, study = searched_once(split_folder, tmp_path, "mine")
    # A trial of a process in another container: the same PID as this one, another PID namespace.
    other = study.ask()
    other.set_user_attr("pid", os.getpid())
    other.set_user_attr("owner", {"host": socket.gethostname(), "boot": "same", "pidns": "pid:[1]", "pid": os.getpid(),
                                  "start": 1})

    def stop(record):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        autotl.search(str(split_folder), trials=3, on_trial=stop, **kw)
    trials = load("mine", autotl.storage.make_storage(None, out)).trials
    assert trials[other.number].state == optuna.trial.TrialState.RUNNING  # not this process's trial


# -- best/ ------------------------------------------------------------------------------------------

WRITER = """
import sys, torch, timm
from autotl.export import save_model
from autotl.plugins import get_plugin_manager
pm = get_plugin_manager()
source, adapter = pm.sources.get("timm/test_resnet"), pm.adapters.get("linear")
states = []
for n in (2, 3):
    net = timm.create_model("test_resnet", num_classes=n)
    states.append((n, net.state_dict()))
i = 0
while True:
    n, state = states[i % 2]
    save_model(sys.argv[1], state, source=source, adapter=adapter, adapter_params={},
               classes=[f"c{k}" for k in range(n)], data_config={"input_size": (3, 32, 32)},
               extra={"study": "s", "trial": i, "value": 0.5})
    i += 1
"""


@pytest.mark.slow
def test_best_is_read_whole_while_another_worker_replaces_it(tmp_path):
    from autotl.export import load_model

    best = tmp_path / "run" / "best"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(best)], env=quiet_env())
    try:
        deadline = time.time() + 120
        while not (best / "config.json").is_file():
            assert time.time() < deadline and writer.poll() is None
            time.sleep(0.05)
        shapes = set()
        for _ in range(300):
            module, config = load_model(str(tmp_path / "run"))  # never a config of one model, weights of another
            assert module.get_classifier().out_features == config["num_classes"]
            shapes.add(config["num_classes"])
        assert shapes == {2, 3}  # the writer really replaced it meanwhile
    finally:
        writer.kill()
        writer.wait()


def test_a_best_folder_of_a_trial_that_never_completed_is_replaced(split_folder, tmp_path):
    out, kw, study = searched_once(split_folder, tmp_path, "torn")
    # A crash between writing best/ and storing the trial: best/ holds a trial that never completed.
    crashed = study.ask()
    study.tell(crashed, state=optuna.trial.TrialState.FAIL)
    config = json.loads((out / "best" / "config.json").read_text())
    (out / "best" / "config.json").write_text(json.dumps({**config, "trial": crashed.number, "value": 1.0}))
    result = autotl.search(str(split_folder), trials=1, **kw)
    best = result.summary["best"]
    assert best["model_dir"] is not None and best["test"] is not None  # exported and scored again
    assert json.loads((out / "best" / "config.json").read_text())["trial"] == best["trial"]


# -- resume -----------------------------------------------------------------------------------------


def test_resuming_on_other_data_another_split_or_seed_is_refused(split_folder, image_folder, tmp_path, capsys):
    from autotl.cli import main

    args = ["search", str(split_folder), "--space", str(space_file(tmp_path)), "--backbones", "timm/test_vit",
            "--device", "cpu", "--out", str(tmp_path / "run"), "--study", "fp", "--trials", "1", "--quiet",
            "--no-report", "--default-trials", "0", "--no-rank", "--soup", "0", "--warm-start", "off"]
    assert main(args) == 0
    capsys.readouterr()
    other = list(args)
    other[1] = str(image_folder)
    assert main(other) != 0
    err = capsys.readouterr().err
    assert "study 'fp' was searched on other data" in err and "start a new --study" in err and "Traceback" not in err
    assert main(args + ["--seed", "1"]) != 0
    assert "was started with --seed 0, not 1" in capsys.readouterr().err
    kw = search_kw(tmp_path, tmp_path / "run2", "fp2", trials=1)
    autotl.search(str(image_folder), **kw)  # no val/ folder: the validation split is drawn with the seed
    with pytest.raises(ConfigError, match="validated on another split"):
        autotl.search(str(image_folder), val_fraction=0.3, **kw)
    assert main(args) == 0  # the same search resumes


# -- the API ----------------------------------------------------------------------------------------


def test_the_api_shows_progress_unless_quiet(split_folder, tmp_path, capsys):
    autotl.search(str(split_folder), trials=1, **{**search_kw(tmp_path, tmp_path / "a", "a"), "quiet": False})
    assert "trial   0 complete" in capsys.readouterr().out
    autotl.search(str(split_folder), trials=1, **search_kw(tmp_path, tmp_path / "b", "b"))
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_on_trial_is_called_for_every_trial_of_the_workers(split_folder, tmp_path):
    seen = []
    result = autotl.search(str(split_folder), trials=4, workers=2, on_trial=seen.append,
                           **search_kw(tmp_path, tmp_path / "run", "w"))
    assert sorted(r.number for r in seen) == sorted(r.number for r in result.trials) and len(seen) == 4
