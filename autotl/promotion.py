"""Promotion-based multi-fidelity search: trials pause at rungs and go on only when promoted.

Optuna's Hyperband stops a trial for good, and a configuration promoted to more epochs would have
to train again from scratch. Here (the promotion type of ASHA, Li et al. 2020, as in Syne Tune) a
trial trains to the next rung (``min_epochs × eta^k`` epochs), saves its resumable state
(:class:`autotl.pausing.FitCheckpoint`) through ``optuna.artifacts`` into the artifact folder, and
ends as PRUNED with ``paused_at``. Before each new trial, a worker looks for a paused trial among the
best ``1/eta`` of the lineages that reached its rung and not yet continued; it queues its
continuation as a WAITING trial with the same params, which any worker claims like any queued trial
(Optuna hands a WAITING trial to exactly one worker). The continuation reports the epochs it
inherits, loads the checkpoint and trains on from there, bit for bit as if it had never stopped. The
decision is taken under a lock in the artifact folder, which every worker shares (the checkpoints live
there too), so no paused trial is continued twice.

A lineage (the first trial and its continuations) is one configuration: reports and ``trials.csv``
show its last trial, whose curve spans every epoch, and count each epoch once.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import optuna

from .locks import file_lock

NAME = "asha-promotion"
PAUSED_ATTR = "paused_at"  # epochs done when the trial paused
CHECKPOINT_ATTR = "checkpoint"  # the artifact id of a paused trial's state
CONTINUES_ATTR = "continues"  # the trial a continuation resumes
RESUME_ATTR = "resume_from"  # the artifact id a continuation resumes from
LINEAGE_ATTR = "lineage"  # the first trial of a lineage
#: A trial that was not run: a worker without a budget claim was handed a new trial by Optuna (another
#: worker had taken the continuation it queued) when the command's budget was spent.
NOT_RUN_ATTR = "not_run"
CHECKPOINT_DIR = "checkpoints"
LOCK_NAME = ".promote.lock"


@dataclass(frozen=True)
class Rungs:
    """The epochs at which a trial pauses: ``min_epochs × eta^k`` below ``max_epochs``."""

    min_epochs: int
    max_epochs: int
    eta: int = 3

    def levels(self) -> List[int]:
        out, level = [], max(1, self.min_epochs)
        while level < self.max_epochs:
            out.append(level)
            level *= self.eta
        return out

    def next_pause(self, done: int) -> Optional[int]:
        """The next rung after ``done`` epochs; None when the trial should train to the end."""
        return next((level for level in self.levels() if level > done), None)


def rungs_for(space: Any) -> Optional[Rungs]:
    """The space's rungs when its pruner is ``asha-promotion``, else None."""
    if space.file.pruner.get("name") != NAME:
        return None
    return Rungs(min(space.file.min_epochs, space.epochs), space.epochs,
                 int(space.file.pruner.get("reduction_factor", 3)))


def checkpoint_store(artifacts: Path) -> Any:
    """Where paused trials' states go: ``<artifacts>/checkpoints`` through Optuna's artifact API."""
    from optuna.artifacts import FileSystemArtifactStore

    folder = Path(artifacts) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def save_checkpoint(trial: optuna.Trial, checkpoint: Any, artifacts: Path) -> str:
    """Upload a paused fit's state as an artifact of its (still running) trial; returns its id."""
    from optuna.artifacts import upload_artifact

    folder = Path(artifacts) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        checkpoint.save(Path(tmp))
        return upload_artifact(artifact_store=checkpoint_store(artifacts), file_path=tmp, study_or_trial=trial)
    finally:
        os.unlink(tmp)


def load_checkpoint(artifact_id: str, artifacts: Path) -> Any:
    """A paused fit's state, by its artifact id."""
    from optuna.artifacts import download_artifact

    from .pausing import FitCheckpoint

    folder = Path(artifacts) / CHECKPOINT_DIR
    fd, tmp = tempfile.mkstemp(suffix=".safetensors", dir=folder)
    os.close(fd)
    os.unlink(tmp)  # download_artifact refuses to overwrite
    try:
        download_artifact(artifact_store=checkpoint_store(artifacts), file_path=tmp, artifact_id=artifact_id)
        return FitCheckpoint.load(Path(tmp))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def checkpoint_path(artifact_id: str, artifacts: Path) -> Path:
    """Where the file system store keeps an artifact (its id is the file name)."""
    return Path(artifacts) / CHECKPOINT_DIR / artifact_id


def _held(trial: optuna.trial.FrozenTrial, artifacts: Path) -> bool:
    ident = trial.user_attrs.get(CHECKPOINT_ATTR)
    return bool(ident) and checkpoint_path(ident, artifacts).is_file()


def trim_checkpoints(study: optuna.Study, artifacts: Path, limit_mb: Optional[float], maximize: bool) -> List[int]:
    """Drop the checkpoints no trial will resume (a continuation of theirs finished), then, while the
    folder holds more than ``limit_mb``, those of the paused trials least likely to be promoted (the
    lowest rung first, the worst value at it first); such a trial stays paused for good. Returns the
    trials whose checkpoint went. The caller holds the promotion lock."""
    trials = study.get_trials(deepcopy=False)
    continued = {t.user_attrs[CONTINUES_ATTR] for t in trials if CONTINUES_ATTR in t.user_attrs}
    settled = {t.user_attrs[CONTINUES_ATTR] for t in trials if CONTINUES_ATTR in t.user_attrs
               and t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)}
    held = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED and _held(t, artifacts)]
    drop = [t for t in held if t.number in settled]
    if limit_mb is not None:
        def size_of(t: optuna.trial.FrozenTrial) -> int:
            return checkpoint_path(t.user_attrs[CHECKPOINT_ATTR], artifacts).stat().st_size

        size = sum(size_of(t) for t in held) - sum(size_of(t) for t in drop)
        sign = 1.0 if maximize else -1.0
        worst_first = sorted((t for t in held if t.number not in continued),
                             key=lambda t: (t.user_attrs[PAUSED_ATTR],
                                            sign * t.intermediate_values.get(t.user_attrs[PAUSED_ATTR], 0.0)))
        for t in worst_first:
            if size <= limit_mb * 2 ** 20:
                break
            size -= size_of(t)
            drop.append(t)
    for t in drop:
        checkpoint_path(t.user_attrs[CHECKPOINT_ATTR], artifacts).unlink(missing_ok=True)
    return [t.number for t in drop]


def lineage(trial: optuna.trial.FrozenTrial) -> int:
    return int(trial.user_attrs.get(LINEAGE_ATTR, trial.number))


def promote(study: optuna.Study, rungs: Rungs, artifacts: Path, maximize: bool,
            limit_mb: Optional[float] = None, finish: bool = False) -> Optional[int]:
    """Keep the checkpoints within ``limit_mb`` (:func:`trim_checkpoints`), then queue the continuation
    of the best promotable paused trial, highest rung first. A paused trial is promotable when it is
    among the best ``1/eta`` of the lineages that reached its rung and the rung has sent on fewer than
    ``1/eta`` of them so far: without that quota, the asynchronous rule promotes early trials that later
    ones would have displaced, and a rung sends on more than a synchronous halving would. Returns the
    number of the trial it continues, or None when no paused trial is promotable now. ``finish``: the search has no budget
    left and no configuration trained to the end, so the best paused trial of the highest rung goes on
    whatever its rung's size (a search always ends with a fully trained model)."""
    with file_lock(Path(artifacts) / LOCK_NAME):
        trim_checkpoints(study, artifacts, limit_mb, maximize)
        trials = study.get_trials(deepcopy=False)
        continued = {t.user_attrs[CONTINUES_ATTR] for t in trials if CONTINUES_ATTR in t.user_attrs}
        for level in reversed(rungs.levels()):
            at_level: Dict[int, float] = {}
            for t in trials:
                if level in t.intermediate_values and t.state != optuna.trial.TrialState.WAITING:
                    at_level.setdefault(lineage(t), t.intermediate_values[level])
            ranked = sorted(at_level, key=lambda n: at_level[n], reverse=maximize)
            quota = len(ranked) // rungs.eta
            gone_on = sum(1 for t in trials if t.number in continued and t.user_attrs.get(PAUSED_ATTR) == level)
            if not finish and gone_on >= quota:
                continue  # the rung has sent on its 1/eta share (a synchronous halving's count)
            top = set(ranked if finish else ranked[:quota])
            waiting = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED
                       and t.user_attrs.get(PAUSED_ATTR) == level and t.number not in continued
                       and lineage(t) in top and _held(t, artifacts)]
            if waiting:
                parent = min(waiting, key=lambda t: ranked.index(lineage(t)))
                attrs = {CONTINUES_ATTR: parent.number, LINEAGE_ATTR: lineage(parent),
                         RESUME_ATTR: parent.user_attrs[CHECKPOINT_ATTR]}
                if parent.user_attrs.get("origin"):
                    attrs["origin"] = parent.user_attrs["origin"]
                study.enqueue_trial(dict(parent.params), user_attrs=attrs, skip_if_exists=False)
                return parent.number
    return None


def waiting_continuation(study: optuna.Study) -> bool:
    """Whether a continuation is queued (a worker then runs it without taking a new trial's budget)."""
    return any(CONTINUES_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False,
                                                                         states=(optuna.trial.TrialState.WAITING,)))


def lineages(trials: List[optuna.trial.FrozenTrial]) -> Dict[int, List[int]]:
    """For each continuation, the trials it descends from and itself, first to last."""
    parent = {t.number: t.user_attrs[CONTINUES_ATTR] for t in trials if CONTINUES_ATTR in t.user_attrs}
    out = {}
    for number in parent:
        chain = [number]
        while chain[-1] in parent:
            chain.append(parent[chain[-1]])
        out[number] = chain[::-1]
    return out


def visible(trials: List[optuna.trial.FrozenTrial]) -> List[optuna.trial.FrozenTrial]:
    """The trials reports show: every trial except a paused one whose lineage went on (its last trial
    holds the whole curve)."""
    continued = {t.user_attrs[CONTINUES_ATTR] for t in trials if CONTINUES_ATTR in t.user_attrs
                 and t.state != optuna.trial.TrialState.WAITING}
    return [t for t in trials if t.number not in continued and NOT_RUN_ATTR not in t.user_attrs]
