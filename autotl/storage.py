"""Where a study lives: the embedded journal file, or an Optuna RDB storage set up for many workers.

An RDB storage (PostgreSQL, MySQL, SQLite) gets Optuna's own failure handling: every running trial
beats (``heartbeat_interval``), and before each trial a worker fails the trials whose last beat is
older than the grace period, measured with the database's clock, and queues them again through
``RetryHeartbeatStaleTrialCallback``. Each worker process holds a small connection pool, so that
a hundred workers fit under PostgreSQL's connection limit (see docs/scaling.md). The journal
file has no heartbeats of Optuna's; autotl's own (:mod:`autotl.liveness`) cover it.
"""
from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import Any, Dict, Optional

import optuna
from optuna.storages import RDBStorage

from .errors import UsageError

JOURNAL_NAME = "study.journal"
#: Query parameters of a storage URL whose values are secrets.
SECRET_PARAMS = ("password", "passwd", "pwd", "secret", "token", "sslpassword")
#: Seconds between heartbeats of a running trial; ``AUTOTL_HEARTBEAT_S`` overrides it (tests use 1).
DEFAULT_HEARTBEAT_S = 20.0
#: A trial is stale after this many of its heartbeat intervals without a beat.
GRACE_BEATS = 3
#: Trials failed as stale are queued again at most this many times per original trial.
MAX_RETRIES = 2
#: A trial's user attributes that belong to the process that ran it (see autotl.heartbeat): a retry
#: starts without them, so that nobody mistakes it for its dead predecessor before it records its own.
OWNER_ATTR = "owner"
HEARTBEAT_ATTR = "heartbeat"
INTERVAL_ATTR = "heartbeat_s"
RUN_ATTRS = ("pid", OWNER_ATTR, HEARTBEAT_ATTR, INTERVAL_ATTR, "fail_reason")
#: ``AUTOTL_DB_POOL=null`` opens a connection per operation (for PgBouncer in transaction mode).
POOL_ENV = "AUTOTL_DB_POOL"


def mask_url(url: Optional[str]) -> Optional[str]:
    """A storage URL (or a message that contains one) with every password replaced by ``***``: for
    logs, reports and files. URLs go through SQLAlchemy's own parser, so a password with ``/`` in
    it, or one passed as ``?password=``, is hidden too."""
    if not url:
        return url
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception:  # not a URL: a journal path, or a message with a URL inside
        text = re.sub(r"(://[^:/@\s]+:)[^@\s]*@", r"\1***@", url)
        return re.sub(rf"(?i)\b({'|'.join(SECRET_PARAMS)})=[^&\s'\"]*", r"\1=***", text)
    secret = {k for k in parsed.query if k.lower() in SECRET_PARAMS}
    shown = parsed.set(query={k: v for k, v in parsed.query.items() if k not in secret})
    text = shown.render_as_string(hide_password=True)
    return text + ("&" if shown.query else "?") + "&".join(f"{k}=***" for k in sorted(secret)) if secret else text


def heartbeat_interval() -> float:
    """This process's heartbeat interval in seconds (a new study records it; see :func:`study_heartbeat`)."""
    try:
        return max(0.2, float(os.environ.get("AUTOTL_HEARTBEAT_S", DEFAULT_HEARTBEAT_S)))
    except ValueError:
        return DEFAULT_HEARTBEAT_S


def pool_settings(url: str) -> Dict[str, Any]:
    """SQLAlchemy engine settings for one worker process: a pool of one connection (plus two for the
    heartbeat thread and bursts), checked before use and recycled, instead of SQLAlchemy's 5 + 10,
    which a hundred workers would multiply past PostgreSQL's ``max_connections``."""
    if url.startswith("sqlite"):
        return {}
    if os.environ.get(POOL_ENV, "").lower() == "null":
        from sqlalchemy.pool import NullPool

        return {"poolclass": NullPool, "pool_pre_ping": True}
    return {"pool_size": 1, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 1800}


def make_storage(url: Optional[str], out_dir: Path) -> Any:
    """The study's storage: a journal file in the run folder, or any Optuna storage URL (an RDB one
    with Optuna's heartbeats and stale-trial retries, and a small connection pool)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if not url:
        out_dir.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(out_dir / JOURNAL_NAME)))
    if url.endswith(".journal") or url.startswith("journal:"):
        path = url.split(":", 1)[1] if url.startswith("journal:") else url
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(path))
    try:
        if "://" in url and not url.startswith(("redis", "grpc")):
            import warnings

            beat = rdb_interval(heartbeat_interval())
            for attempt in range(6):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
                        return SteadyHeartbeatRDBStorage(url, engine_kwargs=pool_settings(url),
                                                         heartbeat_interval=beat, grace_period=GRACE_BEATS * beat,
                                                         heartbeat_stale_trial_callback=RetryStale())
                except Exception as exc:  # array tasks creating one database's schema at once: one wins
                    if attempt == 5 or not _creation_race(exc):
                        raise
                    time.sleep(0.2 + random.random())
        return optuna.storages.get_storage(url)
    except Exception as exc:
        detail = mask_url(" ".join(str(exc).split(" (Background on this error")[0].split()))[:300]
        raise UsageError(f"cannot open storage {mask_url(url)!r}: {type(exc).__name__}: {detail}",
                         "check the URL (e.g. sqlite:///study.db or postgresql://host/db) and that the server runs") from exc


class SteadyHeartbeatRDBStorage(RDBStorage):
    """Optuna's RDBStorage whose heartbeat survives a storage error. Optuna's heartbeat thread ends at
    the first exception ``record_heartbeat`` raises, so one lost connection would leave a live trial
    silent, to be failed as stale one grace period later while its worker still trains it; here a
    failed beat is skipped, and the next one reconnects (the pool checks connections before use)."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception:
            pass


class RetryStale:
    """Queue a stale trial's params again: Optuna's ``RetryHeartbeatStaleTrialCallback`` (the retry
    names the original in ``retried_trial_number``, at most ``max_retry`` times), given the trial
    without the attributes of the process that ran it (``RUN_ATTRS``)."""

    def __init__(self, max_retry: int = MAX_RETRIES) -> None:
        import warnings

        from optuna.storages import RetryHeartbeatStaleTrialCallback

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
            self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        import copy

        trial = copy.deepcopy(trial)
        trial.user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in RUN_ATTRS}
        self.retry(study, trial)


def _creation_race(exc: BaseException) -> bool:
    """Whether ``exc`` is another process creating the same schema at the same moment."""
    text = f"{type(exc).__name__} {exc}".lower()
    return "integrity" in text or "duplicate" in text or "already exists" in text


def rdb_interval(seconds: float) -> int:
    """Optuna's RDB heartbeats take whole seconds."""
    return max(1, int(round(seconds)))


def uses_optuna_heartbeats(storage: Any) -> bool:
    """Whether Optuna beats and reaps this storage's trials itself (an RDB storage set up here)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def study_heartbeat(study: optuna.Study) -> float:
    """The study's heartbeat interval: recorded by the command that created it, and used by every
    worker after, so no worker judges another's trials by an interval of its own."""
    recorded = study.user_attrs.get("heartbeat_s")
    if not isinstance(recorded, (int, float)) or recorded <= 0:
        recorded = heartbeat_interval()
        study.set_user_attr("heartbeat_s", recorded)
    if uses_optuna_heartbeats(study._storage):
        beat = rdb_interval(recorded)
        study._storage.heartbeat_interval, study._storage.grace_period = beat, GRACE_BEATS * beat
        return float(beat)
    return float(recorded)


def storage_label(url: Optional[str], out_dir: Path) -> str:
    return url or str(out_dir / JOURNAL_NAME)
