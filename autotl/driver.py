"""One search, end to end: prepare the study, run its trials here or in worker processes, write the run folder.

A search is one Optuna study. Every worker, whether one of ``--workers N`` processes on this machine or
an ``autotl search`` on another machine with the same ``--storage`` and ``--study``, runs trials while
its command's :class:`Budget` lasts (its ``--trials``, the study's ``--max-trials``, the ``--timeout``);
the storage is the only thing they share (plus the artifact folder, where :mod:`autotl.bestmodel`
writes ``best/`` under a lock). The process that started the search then scores the test split,
writes ``summary.json``, ``trials.csv`` and the report.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import optuna

from .config import RunConfig
from .errors import AutotlError, warn
from .types import RunResult, TrialRecord


@dataclass
class SearchContext:
    """Everything a worker needs, built from a :class:`RunConfig`."""

    config: RunConfig
    plugins: Any
    space: Any
    dataset: Any
    task: Any
    device: Any
    name: str
    out_dir: Path
    artifacts: Path
    storage: Any
    metric: str
    study: optuna.Study
    tensors: Any = None  # the search's TensorCache: preprocessed splits, shared by ranking and trials
    features: Any = None  # the search's FeatureCache, or None
    ranking: Any = None  # the transferability Ranking, when one ran
    heartbeat_s: float = 20.0  # the study's heartbeat interval (autotl.storage.study_heartbeat)


def prepare(config: RunConfig, *, device: Optional[str] = None, create: bool = True,
            worker: Optional[int] = None) -> SearchContext:
    """Load plugins, space and data; open (or create) the study; queue the first trials on a new study."""
    import timm  # noqa: F401  (loaded here, so the first trial's time is its own)

    from .api import load_plugins
    from .data import load_dataset
    from .defaults import enqueue_backbone_cover, enqueue_default_trials
    from .features import FeatureCache
    from .history import enqueue_warm_start, meta_features
    from .ranking import rank_sources, study_ranking, write_ranking
    from .space import load_space_file, resolve_space
    from .tensors import TensorCache
    from .storage import make_storage, study_heartbeat
    from .study import check_fingerprint, check_space, open_study, resolve_metric, worker_index
    from .tasks import make_task
    from .trainer import resolve_device

    plugins = load_plugins(config.plugins, config.plugins_dir, config.zoo, config.blocked_plugins)
    config = replace(config, study=config.study or previous_study(config))
    space_file = load_space_file(config.space)
    dataset = load_dataset(config.data, plugins, seed=config.seed, val_fraction=config.val_fraction, task=config.task)
    space = resolve_space(space_file, plugins, config.backbones, config.epochs, task=dataset.task,
                          modality=dataset.modality)
    name = config.study_name()
    out_dir = config.out_dir(name)
    artifacts = Path(config.artifacts) if config.artifacts else out_dir
    storage = make_storage(config.storage, out_dir)
    metric = resolve_metric(config, name, storage, dataset.task)
    study = open_study(name, storage, space, metric, config.seed, worker_index(worker))
    task = make_task(dataset.task, dataset.train.labels)
    dev = resolve_device(device or config.device)
    tensors = TensorCache(task, data_path=config.data_path, resident_mb=config.resident_mb,
                          cache_dir=Path(config.data_cache) if config.data_cache else out_dir / "data_cache",
                          pin_memory=dev.type == "cuda")
    tensors.expect(dataset.train, dataset.val)
    features = FeatureCache(config.feature_cache_mb, spill_dir=out_dir / "feature_cache") if config.feature_cache else None
    ranking = study_ranking(study)
    if ranking is None and create and config.rank and dataset.task == "multiclass" and len(space.backbones) > 1:
        from .heads import plain_head_adapter

        try:
            plain_head_adapter(plugins, "ranking")
        except AutotlError as exc:  # ranking is only a prior: search unranked rather than not at all
            warn(f"skipped ranking the backbones: {exc.what}", f"{exc.fix}; the search goes on unranked "
                 "(--no-rank skips ranking)")
        else:
            ranking = rank_sources(plugins, dataset, space.backbones, dev, tensors, features)
            study.set_user_attr("ranking", ranking.as_dict())
            write_ranking(ranking, out_dir)
    if config.preselect and ranking is not None:
        space = dataclasses.replace(space, backbones=tuple(b for b in ranking.order if b in space.backbones)[
            :config.preselect])
    check_space(study, space)
    check_fingerprint(study, dataset, config.seed)
    heartbeat_s = study_heartbeat(study)
    if create:
        # A similar earlier search's winners first (the strongest prior when there is one), then the recipe.
        fresh = not study.trials
        enqueue_warm_start(study, space, plugins, config.warm_start, meta_features(dataset, ranking))
        leading = [b for b in ranking.order if b in space.backbones] if ranking is not None else None
        if fresh:
            k = config.default_trials if config.default_trials is not None else space.file.default_trials
            enqueue_default_trials(study, space, plugins, k, backbones=leading[:k] if leading else None)
            enqueue_backbone_cover(study, space, leading)
        if "dataset" not in study.user_attrs:
            study.set_user_attr("dataset", dataset.describe())
        study.set_user_attr("run_dir", str(out_dir.resolve()))
        study.set_user_attr("artifacts", str(artifacts.resolve()))
        study.set_user_attr("budget", {"trials": config.n_trials, "max_trials": config.max_trials,
                                       "timeout": config.timeout, "epochs": space.epochs,
                                       "space": space.file.path, "backbones": list(space.backbones),
                                       "workers": config.workers})
    return SearchContext(config=config, plugins=plugins, space=space, dataset=dataset, task=task, device=dev,
                         name=name, out_dir=out_dir, artifacts=artifacts, storage=storage, metric=metric, study=study,
                         tensors=tensors, features=features, ranking=ranking, heartbeat_s=heartbeat_s)


def previous_study(config: RunConfig) -> Optional[str]:
    """The study an earlier search left in ``--out``, so that running the same command again resumes it."""
    import json

    from .runfolder import SUMMARY_NAME

    if not config.out:
        return None
    try:
        return json.loads((Path(config.out) / SUMMARY_NAME).read_text()).get("study")
    except (OSError, ValueError):
        return None


def budget_trials(study: optuna.Study) -> int:
    """Trials that count against ``--max-trials``: started or finished ones, a trial requeued after its
    worker died counted once (the retry, not the failed attempt)."""
    from .promotion import CONTINUES_ATTR

    from .promotion import NOT_RUN_ATTR

    started = [t for t in study.get_trials(deepcopy=False) if t.state != optuna.trial.TrialState.WAITING]
    return len(started) - sum("failed_trial" in t.system_attrs or CONTINUES_ATTR in t.user_attrs
                              or NOT_RUN_ATTR in t.user_attrs for t in started)


class Budget:
    """What this command may still start: its own ``--trials`` (shared by its ``--workers`` through
    ``counter``), the study's ``--max-trials``, and the ``--timeout`` deadline. Checked before each
    trial starts, counting running trials too, so that concurrent workers do not overshoot by a
    trial each as a check after each trial (Optuna's ``MaxTrialsCallback``) would."""

    def __init__(self, trials: Optional[int], max_trials: Optional[int], deadline: Optional[float],
                 counter: Any = None) -> None:
        self.trials, self.max_trials, self.deadline, self.counter = trials, max_trials, deadline, counter
        self.claimed = 0

    def claim(self, study: optuna.Study, running: int = 0) -> bool:
        """Take one trial of the budget; False when none is left. ``running``: trials already started
        that the study counts but that the claim is for (a trial Optuna has just handed over)."""
        if self.deadline is not None and time.time() >= self.deadline:
            return False
        if self.max_trials is not None and budget_trials(study) - running >= self.max_trials:
            return False
        if self.trials is None:
            return True
        if self.counter is None:
            if self.claimed >= self.trials:
                return False
            self.claimed += 1
            return True
        with self.counter.get_lock():
            if self.counter.value >= self.trials:
                return False
            self.counter.value += 1
            return True

    def settle(self, claimed: bool, new: bool) -> None:
        """After a trial: give back a claim spent on a continuation (Optuna handed this worker a queued
        one), or charge a new trial run without a claim (another worker's promotion was popped first)."""
        step = (1 if new else -1) if claimed != new else 0
        if step and self.trials is not None:
            if self.counter is None:
                self.claimed += step
            else:
                with self.counter.get_lock():
                    self.counter.value += step


def run_here(ctx: SearchContext, *, budget: Budget, progress: Any,
             on_trial: Optional[Callable[[TrialRecord], None]] = None) -> None:
    """Run trials in this process while the budget lasts."""
    from .bestmodel import offer
    from .heartbeat import Reaper
    from .promotion import CONTINUES_ATTR, NOT_RUN_ATTR, promote, rungs_for, waiting_continuation
    from .study import TrialRunner, best_other_value, run_one_trial

    study, config = ctx.study, ctx.config

    def on_best(number: int, value: float, params: Any, model: Any, state: Dict[str, Any]) -> None:
        if state is not None:
            offer(ctx, number, value, params, model, state)

    ran: List[int] = []

    def trial_done(record: TrialRecord) -> None:
        ran.append(record.number)
        ctx.plugins.trial_finished(record)
        progress.trial_finished(record, best_other_value(study, -1))
        call_on_trial(on_trial, record)

    runner = TrialRunner(config=config, space=ctx.space, dataset=ctx.dataset, task=ctx.task, metric=ctx.metric,
                         plugins=ctx.plugins, device=ctx.device, tensors=ctx.tensors, on_best=on_best,
                         progress=progress, features=ctx.features, heartbeat_s=ctx.heartbeat_s,
                         artifacts=ctx.artifacts)
    reaper = Reaper(study, ctx.heartbeat_s)
    rungs = rungs_for(ctx.space)
    held = {"claim": True}  # whether this worker holds a budget claim for the trial it asks for

    def admit(trial: optuna.Trial) -> bool:
        """A worker that asked in order to run a continuation, and was handed a new trial instead
        (another worker popped it first), claims the new trial now, or does not run it: never one
        configuration past the command's --trials."""
        if held["claim"] or CONTINUES_ATTR in trial.user_attrs:
            return True
        held["claim"] = budget.claim(study, running=1)
        return held["claim"]

    runner.admit = admit if rungs is not None else None
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    while True:
        reaper.reap()
        if budget.deadline is not None and time.time() >= budget.deadline:
            break
        # Promotion-based search: a promoted trial goes on before a new one starts, outside the budget of
        # new trials (it is the same configuration, trained further).
        continuing = rungs is not None and (
            promote(study, rungs, ctx.artifacts, maximize, config.checkpoint_mb) is not None
            or waiting_continuation(study))
        if not continuing and not budget.claim(study):
            if rungs is None or any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(
                    deepcopy=False)) or promote(study, rungs, ctx.artifacts, maximize, config.checkpoint_mb,
                                                finish=True) is None:
                break
            continuing = True
        held["claim"] = not continuing
        ran.clear()
        run_one_trial(study, runner, trial_done, budget.deadline)
        if rungs is not None and ran:
            trial = study.get_trials(deepcopy=False)[ran[-1]]
            new = CONTINUES_ATTR not in trial.user_attrs and NOT_RUN_ATTR not in trial.user_attrs
            budget.settle(claimed=held["claim"], new=new)


def call_on_trial(on_trial: Optional[Callable[[TrialRecord], None]], record: TrialRecord) -> None:
    """The API's ``on_trial`` callback; one that raises never stops the search."""
    if on_trial is None:
        return
    try:
        on_trial(record)
    except Exception as exc:
        warn(f"the on_trial callback raised {type(exc).__name__}: {exc}",
             "fix the callback; the search went on without it")


def _worker_main(config: RunConfig, index: int, device: str, threads: int, counter: Any,
                 deadline: Optional[float]) -> None:
    """A worker process: its own share of the CPU (or its own device), the same study."""
    import torch

    from .progress import Progress
    from .study import steady_heap

    torch.set_num_threads(max(1, threads))
    warnings.filterwarnings("ignore", module="timm")
    warnings.filterwarnings("ignore", category=FutureWarning)
    from .errors import AutotlWarning

    with warnings.catch_warnings():  # the command has shown what loading the data and the space found
        warnings.simplefilter("ignore", category=AutotlWarning)
        ctx = prepare(config, device=device, create=False, worker=index + 1)  # 0 is the command's own process
    with steady_heap():
        run_here(ctx, budget=Budget(config.n_trials, config.max_trials, deadline, counter), progress=Progress())


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_workers(ctx: SearchContext, *, deadline: Optional[float], progress: Any,
                on_trial: Optional[Callable[[TrialRecord], None]] = None) -> None:
    """``--workers N``: N processes on this machine, each with its device (or its share of the CPU
    threads), sharing this command's ``--trials``; this process shows the study's progress from the
    storage (and calls ``on_trial``) until they are done."""
    from .heartbeat import mark_interrupted, owner_of
    from .study import best_other_value, trial_record

    config = ctx.config
    devices = [d.strip() for d in (config.devices or "").split(",") if d.strip()] or [config.device]
    threads = max(1, _cpus() // config.workers)
    mp = multiprocessing.get_context("spawn")
    worker_config = replace(config, study=ctx.name, out=str(ctx.out_dir), default_trials=0, workers=1)
    counter = mp.Value("i", 0)  # this command's trials so far, across its workers
    procs = [mp.Process(target=_worker_main, args=(worker_config, i, devices[i % len(devices)], threads, counter,
                                                   deadline), name=f"autotl-worker-{i}", daemon=False)
             for i in range(config.workers)]
    for p in procs:
        p.start()
    owners = [owner_of(p.pid) for p in procs]
    maximize = ctx.study.direction == optuna.study.StudyDirection.MAXIMIZE
    seen = {t.number for t in ctx.study.get_trials(deepcopy=False) if t.state.is_finished()}
    try:
        while True:
            alive = any(p.is_alive() for p in procs)
            for t in ctx.study.get_trials(deepcopy=False):
                if t.state.is_finished() and t.number not in seen:
                    seen.add(t.number)
                    record = trial_record(ctx.name, t, maximize)
                    progress.trial_finished(record, best_other_value(ctx.study, -1))
                    call_on_trial(on_trial, record)
            if not alive:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=30)
        mark_interrupted(ctx.study, owners)  # the trials this command's workers left; nobody else's
        raise
    finally:
        for p in procs:
            p.join(timeout=30)
    failed = [p.name for p in procs if p.exitcode not in (0, None)]
    if failed:
        warn(f"{len(failed)} worker(s) exited with an error ({', '.join(failed)}); the study keeps every finished trial",
             "see the worker's error above; run the same command again to run the rest of the budget")


def finish(ctx: SearchContext, *, started: float, interrupted: bool) -> RunResult:
    """Score the best trial on the test split; write summary.json, trials.csv and the report."""
    from .report import collect_facts, mask_url, write_report
    from .runfolder import score_test_split, summarize, write_run_folder
    from .bestmodel import drop_stale_best
    from .storage import storage_label
    from .study import records
    from .tasks import direction

    study, config = ctx.study, ctx.config
    drop_stale_best(ctx.artifacts, study)
    all_records = records(study)
    if not interrupted and config.soup > 1:
        cook_soup(ctx)
    test = (score_test_split(study, ctx.artifacts, ctx.dataset, ctx.device, ctx.plugins, ctx.task, ctx.tensors)
            if not interrupted else None)
    if not interrupted and config.refit:
        refit_search(ctx)
    label = mask_url(storage_label(config.storage, ctx.out_dir))
    summary = summarize(study, all_records, out_dir=ctx.artifacts, metric=ctx.metric,
                        elapsed_s=time.perf_counter() - started, test=test,
                        extra={"dataset": dataset_facts(ctx.dataset, study), "device": str(ctx.device),
                               "space": ctx.space.file.path, "storage": label, "out_dir": str(ctx.out_dir),
                               "artifacts": str(ctx.artifacts), "workers": config.workers})
    write_run_folder(ctx.out_dir, summary, all_records)
    try:
        from .modelcard import write_model_cards

        write_model_cards(summary, ctx.artifacts)
    except OSError as exc:  # a card is documentation: never lose the search for it
        warn(f"could not write the model card: {exc}", "free space or fix the artifact folder's permissions")
    facts = collect_facts(study, run_dir=ctx.artifacts)
    if config.report:
        try:
            write_report(study, ctx.out_dir, facts=facts)
        except Exception as exc:  # a report problem never loses the finished search
            warn(f"could not write the report: {type(exc).__name__}: {exc}",
                 f"the trials and best/ are saved; retry with `autotl report {ctx.out_dir}`")
    result = RunResult(study=ctx.name, out_dir=str(ctx.out_dir), storage=label, metric=ctx.metric,
                       direction=direction(ctx.metric), summary=summary, trials=all_records, report=facts)
    if not interrupted and config.warm_start != "off":
        from .history import meta_features, record_search

        try:
            record_search(study, meta_features(ctx.dataset, ctx.ranking), ctx.metric)
        except OSError as exc:  # a read-only home folder never fails the search
            warn(f"could not record the search in the warm-start history: {exc}",
                 "make that file writable or point $AUTOTL_HISTORY elsewhere; --warm-start off skips the history")
    ctx.plugins.search_finished(result)
    return result


def refit_search(ctx: SearchContext) -> Optional[Dict[str, Any]]:
    """``--refit``: the best setup trained again on train + validation; a failure never loses the search."""
    from .refit import RefitError, refit_best

    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in ctx.study.get_trials(deepcopy=False)):
        return None  # nothing to refit; the search already says that no trial completed
    try:
        return refit_best(ctx)
    except RefitError as exc:
        warn(f"no refit: {exc.what}", exc.fix)
    except Exception as exc:
        warn(f"the refit failed: {type(exc).__name__}: {exc}",
             f"best/ and the search are saved; retry with `autotl refit {ctx.out_dir}`")
    return None


def dataset_facts(dataset: Any, study: optuna.Study) -> Dict[str, Any]:
    """The dataset's facts, with the images found unreadable after loading (while decoding or
    streaming, in any worker) added to those skipped at load time."""
    late: set = set()
    most = 0
    for t in study.get_trials(deepcopy=False):
        data = t.user_attrs.get("data") or {}
        late.update(data.get("skipped_examples") or [])
        most = max(most, int(data.get("skipped") or 0))
    facts = dataset.describe()
    facts["skipped_late"] = max(len(late), most)
    facts["skipped"] = int(facts.get("skipped", 0)) + facts["skipped_late"]
    return facts


def cook_soup(ctx: SearchContext) -> None:
    """The greedy soup over the kept models, then the artifact folder back to ``--keep-top`` models."""
    from .bestmodel import decision_lock, trim_top
    from .soup import greedy_soup

    with decision_lock(ctx.artifacts):
        try:
            greedy_soup(ctx)
        except Exception as exc:  # the soup only improves a finished search: never lose it for the soup
            warn(f"skipped the greedy soup: {type(exc).__name__}: {exc}",
                 "best/ keeps the best trial's own weights; pass --soup 0 to skip the soup")
        trim_top(ctx.artifacts, ctx.study, ctx.metric, ctx.config.keep_top)


def run_search(config: RunConfig, on_trial: Optional[Callable[[TrialRecord], None]] = None,
               progress: Any = None) -> RunResult:
    """Prepare, run the trials (here, or in ``config.workers`` processes), and finish."""
    from .progress import Progress
    from .study import steady_heap

    started = time.perf_counter()
    progress = progress if progress is not None else Progress()
    ctx = prepare(config)
    deadline = time.time() + config.timeout if config.timeout else None  # one deadline for all this command's workers
    interrupted = False
    with steady_heap():
        progress.search_started(config.n_trials, config.timeout)
        try:
            if config.workers > 1:
                run_workers(ctx, deadline=deadline, progress=progress, on_trial=on_trial)
            else:
                run_here(ctx, budget=Budget(config.n_trials, config.max_trials, deadline), progress=progress,
                         on_trial=on_trial)
        except KeyboardInterrupt:
            from .heartbeat import mark_interrupted

            interrupted = True
            mark_interrupted(ctx.study)
        finally:
            progress.search_finished()
    result = finish(ctx, started=started, interrupted=interrupted)
    if interrupted:
        raise KeyboardInterrupt
    return result
