"""Promotion-based multi-fidelity search: trials pause at rungs, the promoted ones go on from their
checkpoint, and the rest of autotl sees one trial per configuration."""
from __future__ import annotations

import optuna
import pytest

import autotl
import autotl.storage
from autotl.promotion import CONTINUES_ATTR, PAUSED_ATTR, RESUME_ATTR, Rungs
from test_workers import pg_database  # noqa: F401  (a fixture)

SPACE = """epochs: 9
min_epochs: 1
pruner: {name: asha-promotion, reduction_factor: 3}
params:
  freeze_depth: 1.0
  batch_size: 16
  head_lr: {low: 1.0e-4, high: 3.0e-2, log: true}
"""


def test_rungs_are_min_epochs_times_powers_of_eta():
    rungs = Rungs(1, 9, 3)
    assert rungs.levels() == [1, 3] and rungs.next_pause(0) == 1 and rungs.next_pause(1) == 3
    assert rungs.next_pause(3) is None and Rungs(2, 30, 2).levels() == [2, 4, 8, 16]


def promotion_search(split_folder, tmp_path, **extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    kw = dict(space=str(space), backbones="timm/test_vit", device="cpu", out=str(tmp_path / "run"), study="asha",
              report=True, default_trials=0, rank=False, soup=0, warm_start="off", quiet=True, seed=1)
    kw.update(extra)
    return autotl.search(str(split_folder), **kw)


def test_paused_trials_go_on_from_their_checkpoint_and_count_once(split_folder, tmp_path):
    result = promotion_search(split_folder, tmp_path, trials=9)
    study = optuna.load_study(study_name="asha", storage=autotl.storage.make_storage(None, tmp_path / "run"))
    trials = {t.number: t for t in study.trials}
    continuations = [t for t in trials.values() if CONTINUES_ATTR in t.user_attrs]
    assert continuations, "the best third of the first rung must be promoted"
    assert len({t.user_attrs[CONTINUES_ATTR] for t in continuations}) == len(continuations)  # each once
    # A resumed linear probe still trains on the search's cached features.
    assert all(t.user_attrs["feature_cache"][-1] == "probe" for t in continuations)
    trained = 0
    for t in trials.values():
        parent = trials.get(t.user_attrs.get(CONTINUES_ATTR))
        inherited = parent.user_attrs[PAUSED_ATTR] if parent is not None else 0
        if parent is not None:  # the continuation's curve starts with its parent's epochs, unchanged
            assert t.user_attrs[RESUME_ATTR] == parent.user_attrs["checkpoint"]
            assert {s: v for s, v in t.intermediate_values.items() if s <= inherited} == parent.intermediate_values
        trained += len(t.intermediate_values) - inherited
    assert result.summary["epochs_total"] == trained  # every epoch trained counted once
    # One record per configuration: the 9 sampled trials, whatever their number of fragments.
    assert len(result.trials) == 9 and sum(result.summary["trials"].values()) == 9
    assert any(r.state == "complete" and r.epochs_run == 9 for r in result.trials)  # a lineage reached the end
    assert result.summary["best"]["model_dir"] is not None
    assert (tmp_path / "run" / "report.html").is_file()
    import csv

    rows = {int(r["number"]): r for r in csv.DictReader(open(tmp_path / "run" / "trials.csv"))}
    last = max(continuations, key=lambda t: t.number)
    chain = rows[last.number]["lineage"].split(">")
    assert chain[-1] == str(last.number) and chain[-2] == str(last.user_attrs[CONTINUES_ATTR])
    assert all(int(n) not in rows for n in chain[:-1])  # the paused fragments are not rows of their own


def test_a_continued_lineage_trains_bit_for_bit_like_its_never_paused_self(split_folder, tmp_path):
    """In the search, not just in the trainer: a continuation resumes with its lineage's seed, so the
    whole lineage's curve and losses equal one uninterrupted fit of the same setup on the CPU."""
    import torch

    from autotl.data import load_dataset
    from autotl.features import FeatureCache
    from autotl.model import build_model
    from autotl.plugins import get_plugin_manager
    from autotl.selection import Selection
    from autotl.space import load_space_file, resolve_space
    from autotl.tasks import make_task
    from autotl.tensors import Augmentation, TensorCache
    from autotl.trainer import fit

    promotion_search(split_folder, tmp_path, trials=9)
    study = optuna.load_study(study_name="asha", storage=autotl.storage.make_storage(None, tmp_path / "run"))
    done = [t for t in study.trials if CONTINUES_ATTR in t.user_attrs and t.state.name == "COMPLETE"]
    assert done, "a lineage must reach the last epoch"
    lineage = done[0]
    root = study.trials[lineage.user_attrs["lineage"]]
    assert lineage.user_attrs["seed"] == root.user_attrs["seed"] == 1 + root.number

    plugins = get_plugin_manager()
    dataset = load_dataset(str(split_folder), plugins, seed=1)
    space = resolve_space(load_space_file(str(tmp_path / "space.yaml")), plugins, ["timm/test_vit"], None,
                          task=dataset.task)
    params = space.suggest(optuna.trial.FixedTrial(dict(lineage.params)))
    task = make_task(dataset.task, dataset.train.labels)
    torch.manual_seed(lineage.user_attrs["seed"])
    model = build_model(plugins.sources.get(params.backbone), plugins.adapters.get(params.adapter),
                        task.num_outputs(dataset.classes), params.adapter_params)
    tensors = TensorCache(task)
    train = tensors.train(dataset.train, model.data_config, Augmentation.from_params(params))
    straight = fit(model, train, tensors.get(dataset.val, model.data_config), params, epochs=space.epochs,
                   metric="accuracy", task=task, labels=list(dataset.classes), device=torch.device("cpu"),
                   seed=lineage.user_attrs["seed"], feature_cache=FeatureCache(),
                   selection=Selection.from_section(space.file.selection))
    assert straight.train_loss == lineage.user_attrs["train_loss"]  # every epoch, before and after the pauses
    assert straight.curve == [lineage.intermediate_values[e] for e in range(1, space.epochs + 1)]


def test_a_worker_handed_a_new_trial_instead_of_its_continuation_never_runs_past_its_trials(
        split_folder, tmp_path, monkeypatch):
    """The race the 4-worker test can hit, made certain: each time this worker queues a continuation,
    "another worker" pops it first, so Optuna hands this worker a new trial it holds no claim for. It
    claims it if --trials has room, and otherwise does not run it: never a configuration too many."""
    import autotl.promotion as promotion
    from autotl.promotion import NOT_RUN_ATTR

    real = promotion.promote

    def promote_then_lose_it(study, *args, **kwargs):
        number = real(study, *args, **kwargs)
        if number is not None:  # another worker takes the continuation before this one asks
            stolen = study.ask()
            study.tell(stolen, state=optuna.trial.TrialState.PRUNED)
        return number

    monkeypatch.setattr(promotion, "promote", promote_then_lose_it)
    promotion_search(split_folder, tmp_path, trials=9, report=False, timeout=60)  # the old code never ended
    study = optuna.load_study(study_name="asha", storage=autotl.storage.make_storage(None, tmp_path / "run"))
    sampled = [t for t in study.trials if CONTINUES_ATTR not in t.user_attrs and NOT_RUN_ATTR not in t.user_attrs]
    assert len(sampled) == 9  # the old code charged such trials after the fact: one too many each time
    assert any(NOT_RUN_ATTR in t.user_attrs for t in study.trials)  # the path ran
    assert all(not t.params for t in study.trials if NOT_RUN_ATTR in t.user_attrs)  # nothing was sampled


@pytest.mark.slow
def test_four_workers_on_postgresql_continue_each_paused_trial_once(pg_database, split_folder, tmp_path):  # noqa: F811
    result = promotion_search(split_folder, tmp_path, trials=18, workers=4, storage=pg_database, report=False)
    study = optuna.load_study(study_name="asha", storage=pg_database)
    continued = [t.user_attrs[CONTINUES_ATTR] for t in study.trials if CONTINUES_ATTR in t.user_attrs]
    assert continued and len(continued) == len(set(continued))  # no paused trial continued twice
    assert len({t.user_attrs["pid"] for t in study.trials if CONTINUES_ATTR in t.user_attrs}) >= 1
    assert all(t.state.is_finished() for t in study.trials)
    assert len(result.trials) == 18


def test_a_timeout_stops_continuations_too(split_folder, tmp_path):
    import time

    started = time.time()
    result = promotion_search(split_folder, tmp_path, timeout=2.0, report=False)
    study = optuna.load_study(study_name="asha", storage=autotl.storage.make_storage(None, tmp_path / "run"))
    assert all(t.state.is_finished() for t in study.trials) and sum(result.summary["trials"].values()) >= 1
    assert max(t.datetime_start.timestamp() for t in study.trials) < started + 2.0 + 20  # none after the deadline


def test_the_checkpoint_disk_bound_holds(split_folder, tmp_path):
    free = promotion_search(split_folder, tmp_path / "free", trials=9)
    folder = tmp_path / "free" / "run" / "checkpoints"
    sizes = [f.stat().st_size for f in folder.iterdir() if f.is_file()]
    assert free and sizes
    one = max(sizes)
    bounded = promotion_search(split_folder, tmp_path / "bounded", trials=9, checkpoint_mb=2.5 * one / 2 ** 20)
    kept = [f.stat().st_size for f in (tmp_path / "bounded" / "run" / "checkpoints").iterdir() if f.is_file()]
    # The bound is enforced before each trial: at most one checkpoint written after the last check.
    assert sum(kept) <= 2.5 * one + one
    assert sum(bounded.summary["trials"].values()) == 9
    with pytest.raises(autotl.ConfigError, match="checkpoint_mb"):
        promotion_search(split_folder, tmp_path / "bad", trials=1, checkpoint_mb=-1)


@pytest.mark.slow
def test_a_kill_9_during_a_resumed_trial_requeues_it_from_its_checkpoint(split_folder, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    from test_scaleout import load, running, search_cmd, wait_for

    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("epochs: 9\nmin_epochs: 1", "epochs: 2700\nmin_epochs: 300"))
    out = tmp_path / "run"
    storage = autotl.storage.make_storage(None, out)
    cmd = search_cmd(split_folder, space, out, "k9")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen(cmd + ["--trials", "50"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("k9", storage, lambda ts: any(t.state == optuna.trial.TrialState.RUNNING and CONTINUES_ATTR in t.user_attrs
                                           and "owner" in t.user_attrs for t in ts))
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    [killed] = running(load("k9", storage).trials)
    assert CONTINUES_ATTR in killed.user_attrs
    rerun = subprocess.run(cmd + ["--trials", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    trials = load("k9", storage).trials
    assert not running(trials)
    parent = trials[killed.user_attrs[CONTINUES_ATTR]]
    [retry] = [t for t in trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t)
               == killed.number]
    # The retry resumes from the parent's checkpoint: the same epochs inherited, then it trained on.
    assert retry.user_attrs[RESUME_ATTR] == killed.user_attrs[RESUME_ATTR] == parent.user_attrs["checkpoint"]
    assert {s: v for s, v in retry.intermediate_values.items() if s <= 300} == parent.intermediate_values
    assert max(retry.intermediate_values) > 300 and retry.state in (optuna.trial.TrialState.COMPLETE,
                                                                    optuna.trial.TrialState.PRUNED)


def test_a_warm_start_pauses_and_goes_on_like_any_trial(split_folder, tmp_path, monkeypatch):
    from test_ranking import entry, write_history

    history = tmp_path / "history.jsonl"
    monkeypatch.setenv("AUTOTL_HISTORY", str(history))
    write_history(history, [entry("close", 30, [({"backbone": "timm/test_vit", "adapter": "linear",
                                                  "head_lr": 0.00777}, 0.99)])])
    promotion_search(split_folder, tmp_path, trials=9, warm_start="auto")
    study = optuna.load_study(study_name="asha", storage=autotl.storage.make_storage(None, tmp_path / "run"))
    first = study.trials[0]
    assert first.user_attrs["origin"] == "warm start: close" and abs(first.params["head_lr"] - 0.00777) < 1e-12
    assert first.user_attrs[PAUSED_ATTR] == 1  # a warm start is a prior, not a protected trial: it pauses too
    for t in study.trials:  # a continuation keeps its lineage's origin and params
        if t.user_attrs.get(CONTINUES_ATTR) == 0:
            assert t.user_attrs["origin"] == "warm start: close" and t.params == first.params


def test_a_rung_sends_on_no_more_than_a_synchronous_halving_would(tmp_path):
    """Asynchronous promotion (ASHA) promotes the best 1/eta of the lineages a rung holds *so far*: a
    trial promoted early stays promoted when later, better ones push it out of that share, so a rung
    sent on more than 1/eta of its lineages (156 epochs where a halving trains ~106). The quota caps
    what a rung sends on at 1/eta of the lineages that reached it."""
    from autotl.promotion import CHECKPOINT_ATTR, CHECKPOINT_DIR, promote

    study = optuna.create_study(direction="maximize")
    (tmp_path / CHECKPOINT_DIR).mkdir()
    rungs = Rungs(min_epochs=1, max_epochs=4, eta=2)
    promoted = []

    def pause(value: float) -> None:
        ident = f"ckpt{len(study.trials)}"
        (tmp_path / CHECKPOINT_DIR / ident).write_bytes(b"state")
        trial = optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"x": value},
                                          distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
                                          intermediate_values={1: value},
                                          user_attrs={PAUSED_ATTR: 1, CHECKPOINT_ATTR: ident})
        study.add_trial(trial)

    def promote_all() -> None:
        while (parent := promote(study, rungs, tmp_path, maximize=True)) is not None:
            promoted.append(parent)
            waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))[-1]
            study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)  # the continuation claimed and run
            assert waiting.user_attrs[CONTINUES_ATTR] == parent

    # Each pair of lineages that arrives is better than every one before it.
    for value in (0.2, 0.1):
        pause(value)
    promote_all()
    for value in (0.6, 0.5):
        pause(value)
    promote_all()
    for value in (0.9, 0.8):
        pause(value)
    promote_all()
    lineages_at_rung = 6
    assert len(promoted) == lineages_at_rung // rungs.eta  # 3; without the quota 0.2, 0.6, 0.5, 0.9 and 0.8 went on
    assert [study.trials[n].params["x"] for n in promoted] == [0.2, 0.6, 0.9]
