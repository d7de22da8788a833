"""DB workers: many light worker processes on one PostgreSQL study, as 100 GPU workers would use it.

Each worker is a forked CPU process (no torch) that opens the same study through autotl's RDB
storage (``autotl.storage.make_storage``: a pool of 1 + 2 overflow connections with pre-ping,
Optuna heartbeats with a grace of 3 intervals, stale trials retried at most twice through Optuna's
``RetryHeartbeatStaleTrialCallback``; a mirror of it when ``autotl.storage`` cannot be imported) and runs trials shaped like autotl's, in
a loop, for a fixed window:

    fail_stale_trials (the reap Optuna runs before each trial)       -> "reap"
    ask (TPE seeded per worker, constant_liar, n_startup_trials=10)  -> "ask"
    heartbeat thread on (Optuna's own, as study.optimize starts it)
    6 suggests (2 float log, 1 stepped float, 3 categorical)         -> "suggest"
    3 set_user_attr                                                  -> "user_attr" (per call)
    per epoch: sleep (stands in for training), report + should_prune (Hyperband) -> "report+prune"
    2 set_user_attr, heartbeat thread off, tell (COMPLETE or PRUNED) -> "tell"

Per run it records each operation's latency (p50/p95 over every call of every worker), the trials
told per second inside the window, the share of worker time spent "training" (asleep), the peak of
the database's client connections (``pg_stat_activity``, polled every 0.1 s), the connections
opened per second (``pg_stat_database.sessions``), the CPU the workers and the server used, the
trials failed as stale, and the errors by kind. Arms: the worker count W with autotl's small pool,
and the pools (autotl's, SQLAlchemy's default 5 + 10, ``NullPool`` as ``AUTOTL_DB_POOL=null`` sets
it) at one W. An epoch lasts ``--epoch-s-per-worker`` x W, so every W offers the study the same
ideal trial rate and the arms differ in the number of workers, not in the load; each run has an
unmeasured warm-up, in which the workers start their first trials at random points, before its
measured window. Then a limit check
(W=100 against a stock ``max_connections=100``) and a table of TPE's own sampling cost as the
study grows (in memory, so only the sampler is timed).

By default the script starts its own throwaway PostgreSQL server (``initdb`` into a temporary folder,
run as the ``postgres`` user when root), so a hundred workers never take the connections of a shared
server; ``--url`` points it at an existing server instead, where it creates and drops a database
``autotl_bench_<pid>`` (no server CPU and no limit check then).

The time scale is compressed: a GPU epoch takes minutes and a heartbeat comes every 20 s; here an
epoch is 5 s at W=100 and the heartbeat 5 s, so the database sees a hundred workers' trials about
20 times, and their heartbeats 4 times, more often than in a real search. The workers, the server and
the script share the machine's cores, so on a small machine the latencies are upper bounds.

Command (about 3 minutes on 2 cores):

    .venv/bin/python benchmarks/db_workers.py --append
"""
from __future__ import annotations

import argparse
import collections
import datetime as _dt
import math
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import _common

HEADING = "DB workers (`benchmarks/db_workers.py`)"
LOAD_AT_START = 0.0
POOLS = ("small", "default", "null")
POOL_LABEL = {"small": "autotl (1 + 2 overflow, pre-ping)", "default": "SQLAlchemy default (5 + 10)",
              "null": "NullPool (`AUTOTL_DB_POOL=null`)"}
OPS = ("reap", "ask", "suggest", "user_attr", "report+prune", "tell")
SEED_STRIDE = 100_003  # autotl.study.WORKER_SEED_STRIDE: each worker samples from its own seed
BACKBONES = ["timm/resnet50", "timm/convnext_tiny", "timm/vit_small_patch16_224", "timm/efficientnet_b0",
             "timm/regnety_016", "timm/deit_small_patch16_224"]


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None,
                   help="an existing PostgreSQL server, e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test "
                        "(a database autotl_bench_<pid> is created there and dropped); default: a private server")
    p.add_argument("--max-connections", type=int, default=400,
                   help="the private server's max_connections for the main arms (400: raised, as the plan says)")
    p.add_argument("--limit-check", type=int, default=100,
                   help="then restart the private server with this max_connections (a stock server's 100) and run "
                        "each of --limit-pools once at the largest worker count; 0 skips it")
    p.add_argument("--limit-pools", default="small", help="pools of the limit check (default small)")
    p.add_argument("--workers", default="8,32,100", help="worker counts, small pool (default 8,32,100)")
    p.add_argument("--pools", default=",".join(POOLS), help=f"pools compared (default {','.join(POOLS)})")
    p.add_argument("--pool-workers", type=int, default=32, help="worker count of the pool comparison (32)")
    p.add_argument("--repeats", type=int, default=3, help="runs per arm (3)")
    p.add_argument("--epoch-s-per-worker", type=float, default=0.05,
                   help="an epoch (a sleep standing in for training) lasts this times W seconds, so the study's "
                        "ideal trial rate is the same at every W (0.05: 5 s epochs at W=100)")
    p.add_argument("--warmup-epochs", type=float, default=1.0,
                   help="unmeasured warm-up per run, in epochs; each worker starts its first trial at a random "
                        "point of it (1)")
    p.add_argument("--window-epochs", type=float, default=1.5, help="measured window per run, in epochs (1.5)")
    p.add_argument("--seconds", type=float, default=4.0, help="... but at least this many seconds (4)")
    p.add_argument("--epochs", type=int, default=4, help="epochs per trial, Hyperband's max resource (4)")
    p.add_argument("--heartbeat", type=float, default=5.0,
                   help="AUTOTL_HEARTBEAT_S in the workers (5 s: 20 beats/s at W=100, 4x a real 100 workers' 5)")
    p.add_argument("--sampler-sizes", default="100,1000,3000,10000",
                   help="study sizes of the sampling-cost table (default 100,1000,3000,10000; empty to skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--append", action="store_true", help="append the tables to benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    args.workers = _common.parse_ints(args.workers)
    args.pools = [s.strip() for s in args.pools.split(",") if s.strip()]
    if unknown := sorted(set(args.pools) - set(POOLS)):
        p.error(f"unknown pool(s) {', '.join(unknown)}; choose from {', '.join(POOLS)}")
    args.sampler_sizes = _common.parse_ints(args.sampler_sizes) if args.sampler_sizes.strip() else []
    if min(args.workers + [args.pool_workers, args.repeats, args.epochs]) < 1 or min(
            args.seconds, args.epoch_s_per_worker, args.window_epochs) <= 0:
        p.error("--workers, --pool-workers, --repeats, --epochs need at least 1, --seconds more than 0")
    return args


# --------------------------------------------------------------------------------------------- server


class PrivateServer:
    """A throwaway PostgreSQL server in a temporary folder (run as the ``postgres`` user when root)."""

    def __init__(self, max_connections: int) -> None:
        initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
        if not initdb:
            raise SystemExit("no initdb on PATH: install PostgreSQL's server binaries, or pass --url")
        self.bin = Path(os.path.realpath(initdb)).parent
        self.dir = Path(tempfile.mkdtemp(prefix="autotl_bench_pg_"))
        self.prefix: List[str] = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.prefix = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._run([str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust", "--no-sync"])
        self.admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.start(max_connections)

    def start(self, max_connections: int) -> None:
        self.max_connections = max_connections
        opts = (f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
                f"-c max_connections={max_connections}")
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                   "-o", opts, "start"])
        self.pid = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])

    def restart(self, max_connections: int) -> None:
        self._run([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"])
        self.start(max_connections)

    def cpu_seconds(self) -> float:
        """CPU time of the server: the postmaster, its live children, and the children it has reaped."""
        tick = os.sysconf("SC_CLK_TCK")

        def fields(pid: Any) -> List[str]:
            text = Path(f"/proc/{pid}/stat").read_text()
            return text[text.rindex(")") + 2:].split()  # fields from the 3rd (state) on

        own = fields(self.pid)
        total = sum(int(x) for x in own[11:15])  # utime, stime, cutime, cstime
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    f = fields(entry.name)
                except (OSError, ValueError):
                    continue
                if int(f[1]) == self.pid:
                    total += int(f[11]) + int(f[12])
        return total / tick

    def _run(self, cmd: List[str]) -> None:
        proc = subprocess.run(self.prefix + cmd, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{' '.join(cmd[:2])} failed: {proc.stdout[-800:]}{proc.stderr[-800:]}")

    def stop(self) -> None:
        try:
            self._run([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop"])
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def sqlalchemy_url(url: str) -> str:
    """``postgresql://`` means psycopg2 to SQLAlchemy; autotl's extra installs psycopg 3."""
    if url.startswith("postgresql://"):
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://").replace("postgresql+psycopg2://", "postgresql://")


def with_database(url: str, db: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=db).render_as_string(hide_password=False)


# -------------------------------------------------------------------------------------------- storage


def storage_source() -> str:
    try:
        from autotl.storage import make_storage  # noqa: F401

        return "autotl.storage.make_storage"
    except ImportError:
        return "the benchmark's mirror of autotl.storage.make_storage"


def mirror_make_storage(url: str, pool: str, heartbeat_s: float) -> Any:
    """Mirrors autotl.storage.make_storage for an RDB URL (used only when autotl.storage cannot be
    imported): Optuna's RDBStorage with a small per-process pool (1 + 2 overflow, pre-ping, recycled
    after 30 min) or NullPool with ``AUTOTL_DB_POOL=null``; heartbeats every AUTOTL_HEARTBEAT_S
    rounded to a whole second (at least 1), stale after 3 intervals, retried at most twice."""
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.pool import NullPool

    beat = max(1, int(round(heartbeat_s)))
    engine = {"small": {"pool_size": 1, "max_overflow": 2, "pool_pre_ping": True, "pool_recycle": 1800},
              "null": {"poolclass": NullPool, "pool_pre_ping": True}, "default": {}}[pool]
    return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=beat, grace_period=3 * beat,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2))


def open_storage(url: str, pool: str, heartbeat_s: float) -> Any:
    """The worker's storage: autotl's own make_storage (its pool settings replaced by SQLAlchemy's
    defaults for the ``default`` arm), else the mirror above."""
    os.environ["AUTOTL_HEARTBEAT_S"] = str(heartbeat_s)
    if pool == "null":
        os.environ["AUTOTL_DB_POOL"] = "null"
    else:
        os.environ.pop("AUTOTL_DB_POOL", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import autotl.storage as st
        except ImportError:
            return mirror_make_storage(url, pool, heartbeat_s)
        if pool == "default":
            st.pool_settings = lambda _url: {}  # this forked worker only
        return st.make_storage(url, Path(tempfile.gettempdir()))


def check_pools(url: str, pools: List[str], heartbeat_s: float) -> None:
    """Each arm's storage has the pool it claims (autotl.storage may change under this script)."""
    from sqlalchemy.pool import NullPool, QueuePool

    want = {"small": (QueuePool, 1, 2), "default": (QueuePool, 5, 10), "null": (NullPool, None, None)}
    for pool in pools:
        pid = os.fork()
        if pid == 0:  # in a child, so the parent's autotl.storage stays untouched
            code = 1
            try:
                storage = open_storage(url, pool, heartbeat_s)
                engine_pool = storage.engine.pool
                cls, size, overflow = want[pool]
                ok = isinstance(engine_pool, cls) and (size is None or (
                    engine_pool.size() == size and engine_pool._max_overflow == overflow))
                ok = ok and storage.get_heartbeat_interval() == max(1, int(round(heartbeat_s)))
                code = 0 if ok else 2
                storage.engine.dispose()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"the {pool!r} arm's storage does not have the pool or heartbeat it should "
                             f"({want[pool]}, heartbeat {heartbeat_s} s): has autotl.storage changed?")


# ---------------------------------------------------------------------------------------------- worker


def score(params: Dict[str, Any], epoch: int, rng: random.Random) -> float:
    """A smooth synthetic accuracy curve with noise, so TPE and Hyperband have something to do."""
    lr = (math.log10(params["head_lr"]) + 2.5) ** 2
    fit = 0.95 - 0.08 * lr - 0.05 * abs(params["freeze_depth"] - 0.4) - 0.02 * BACKBONES.index(params["backbone"]) / 5
    return fit * (1 - math.exp(-epoch / 1.5)) + rng.gauss(0, 0.01)


def classify(exc: BaseException) -> str:
    """An error's kind, from the exception or any cause under it (autotl and Optuna wrap the driver's)."""
    seen, cur = [], exc
    while cur is not None and len(seen) < 8:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    text = " ".join(str(e) for e in seen).lower()
    if "too many clients" in text or "remaining connection slots" in text or "too many connections" in text:
        return "too many clients"
    if any(type(e).__name__ == "UpdateFinishedTrialError" for e in seen):
        return "trial failed as stale by another worker"
    return type(exc).__name__


def worker_main(cfg: Dict[str, Any], index: int, barrier: Any, start: Any, out: Any) -> None:
    """One worker process: open the study, wait for the others, run trials until the window closes."""
    import optuna
    from optuna.storages import fail_stale_trials
    from optuna.storages._heartbeat import get_heartbeat_thread
    from optuna.trial import TrialState

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    rng = random.Random(cfg["seed"] * 1000 + index)
    lat: Dict[str, List[float]] = collections.defaultdict(list)
    errors: collections.Counter = collections.Counter()
    done: List[Tuple[float, str]] = []  # (time of tell, state)
    asleep = [0.0]

    def thread_died(hook: Any) -> None:  # an Optuna heartbeat thread ends at its first storage error
        errors["heartbeat thread died: " + classify(hook.exc_value)] += 1

    threading.excepthook = thread_died

    def open_study() -> Any:
        storage = open_storage(cfg["url"], cfg["pool"], cfg["heartbeat"])
        sampler = optuna.samplers.TPESampler(seed=cfg["seed"] + SEED_STRIDE * index, n_startup_trials=10)  # autotl's
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg["epochs"], reduction_factor=3)
        return optuna.load_study(study_name=cfg["study"], storage=storage, sampler=sampler, pruner=pruner)

    study = None
    try:
        study = open_study()
    except Exception as exc:  # e.g. too many clients: counted, and tried again inside the window
        errors[classify(exc)] += 1
    try:
        barrier.wait(timeout=300)
    except Exception as exc:
        errors["start barrier: " + type(exc).__name__] += 1
    begin = start.value
    t0 = begin + cfg["warmup"]  # the measured window: [t0, deadline)
    deadline = t0 + cfg["seconds"]
    # Workers of a real search are out of step: each starts its first trial at a random point of the
    # warm-up, which the window follows, so the window sees trials in every phase.
    time.sleep(max(0.0, begin + rng.uniform(0, cfg["warmup"]) - time.time()))

    class WindowClosed(Exception):
        pass

    def timed(op: str, fn: Callable[[], Any]) -> Any:
        """Run one storage operation and keep its latency if it starts inside the window; none
        starts after the window closes."""
        now = time.time()
        if now >= deadline:
            raise WindowClosed()
        s = time.perf_counter()
        result = fn()
        if now >= t0:
            lat[op].append(time.perf_counter() - s)
        return result

    def train(seconds: float) -> None:
        s = time.time()
        time.sleep(max(0.0, min(seconds, deadline - s)))
        asleep[0] += max(0.0, min(time.time(), deadline) - max(s, t0))

    while time.time() < deadline:
        if study is None:
            time.sleep(0.5)
            try:
                study = open_study()
            except Exception as exc:
                errors[classify(exc)] += 1
            continue
        trial = None
        try:
            timed("reap", lambda: fail_stale_trials(study))
            trial = timed("ask", study.ask)
            with get_heartbeat_thread(trial._trial_id, study._storage):
                def suggest() -> Dict[str, Any]:
                    return {"head_lr": trial.suggest_float("head_lr", 1e-4, 1e-2, log=True),
                            "backbone_lr_mult": trial.suggest_float("backbone_lr_mult", 0.1, 1.0, log=True),
                            "freeze_depth": trial.suggest_float("freeze_depth", 0.0, 1.0, step=0.2),
                            "backbone": trial.suggest_categorical("backbone", BACKBONES),
                            "hflip": trial.suggest_categorical("hflip", [0.0, 0.5]),
                            "translate": trial.suggest_categorical("translate", [0.0, 0.0625, 0.125])}

                params = timed("suggest", suggest)
                for key, value in (("worker", index), ("backbone_name", params["backbone"]), ("seed", cfg["seed"])):
                    timed("user_attr", lambda: trial.set_user_attr(key, value))
                value, pruned, epoch = None, False, 0
                for epoch in range(1, cfg["epochs"] + 1):
                    train(cfg["epoch_s"])
                    value = score(params, epoch, rng)
                    pruned = timed("report+prune", lambda: (trial.report(value, epoch), trial.should_prune())[1])
                    if pruned:
                        break
                timed("user_attr", lambda: trial.set_user_attr("epochs", epoch))
                timed("user_attr", lambda: trial.set_user_attr("seconds", epoch * cfg["epoch_s"]))
            if pruned:
                timed("tell", lambda: study.tell(trial, state=TrialState.PRUNED))
                done.append((time.time(), "pruned"))
            else:
                timed("tell", lambda: study.tell(trial, value))
                done.append((time.time(), "complete"))
        except WindowClosed:  # the trial in flight is failed, untimed: the run ends with the window
            if trial is not None:
                try:
                    study.tell(trial, state=TrialState.FAIL)
                except Exception:
                    pass
            break
        except Exception as exc:
            errors[classify(exc)] += 1
            if trial is not None:
                try:
                    study.tell(trial, state=TrialState.FAIL)
                except Exception:
                    pass
            time.sleep(0.2)
    out.put({"lat": dict(lat), "errors": dict(errors), "done": done, "asleep": asleep[0]})


# ------------------------------------------------------------------------------------------------ runs


class ConnectionMonitor(threading.Thread):
    """Polls pg_stat_activity for the client connections to one database and keeps the peak. Its one
    connection (to the admin database, so never counted) is opened before the workers start, so it
    holds its slot when they exhaust the server's."""

    def __init__(self, admin_url: str, db: str) -> None:
        super().__init__(daemon=True)
        import psycopg

        self.conn = psycopg.connect(libpq_url(admin_url), autocommit=True)
        self.db, self.peak, self.stop_flag, self.lock = db, 0, threading.Event(), threading.Lock()

    def query(self, sql: str) -> int:
        with self.lock:
            row = self.conn.execute(sql, (self.db,)).fetchone()
        return int(row[0] or 0) if row else 0

    def sessions(self) -> int:
        """Connections ever opened to the database (PostgreSQL 14+; the count lags by up to a second)."""
        return self.query("SELECT sessions FROM pg_stat_database WHERE datname = %s")

    def run(self) -> None:
        while not self.stop_flag.is_set():
            n = self.query("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND backend_type = 'client backend'")
            self.peak = max(self.peak, n)
            self.stop_flag.wait(0.1)

    def finish(self) -> int:
        self.stop_flag.set()
        self.join()
        self.conn.close()
        return self.peak


def run_arm(args: argparse.Namespace, url: str, admin: str, db: str, pool: str, workers: int, rep: int,
            server: Optional[PrivateServer], limit: int) -> Dict[str, Any]:
    import optuna

    name = f"{pool}-w{workers}-r{rep}-m{limit}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sqlalchemy.pool import NullPool

        creator = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})
        optuna.create_study(study_name=name, storage=creator, direction="maximize")
        creator.engine.dispose()
    ctx = mp.get_context("fork")
    barrier, start, out = ctx.Barrier(workers + 1), ctx.Value("d", 0.0), ctx.Queue()
    epoch_s = args.epoch_s_per_worker * workers
    # The limit check only has to see every worker connect, start a trial and beat: one epoch.
    window = max(args.seconds, (args.window_epochs if limit == args.main_limit else 1.0) * epoch_s)
    warmup = args.warmup_epochs * epoch_s
    cfg = {"url": url, "pool": pool, "study": name, "seed": args.seed + 100 * rep, "heartbeat": args.heartbeat,
           "epochs": args.epochs, "epoch_s": epoch_s, "seconds": window, "warmup": warmup}
    monitor = ConnectionMonitor(admin, db)
    monitor.start()
    procs = [ctx.Process(target=worker_main, args=(cfg, i, barrier, start, out), daemon=True) for i in range(workers)]
    try:
        forked = time.time()
        for proc in procs:
            proc.start()
        start.value = time.time() + 0.05  # set before the barrier opens: every worker reads it after
        barrier.wait(timeout=300)
        setup_s = start.value - forked
        t0 = start.value + warmup
        time.sleep(max(0.0, t0 - time.time()))
        server_cpu0 = server.cpu_seconds() if server else None
        worker_cpu0 = sum(cpu_seconds(p.pid) for p in procs)
        sessions0 = monitor.sessions()
        time.sleep(max(0.0, t0 + window - time.time()))
        server_cpu = server.cpu_seconds() - server_cpu0 if server else None
        worker_cpu = sum(cpu_seconds(p.pid) for p in procs) - worker_cpu0
        opened = monitor.sessions() - sessions0
        results = [out.get(timeout=300) for _ in procs]
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:  # only after a failure: the workers have ended by now otherwise
            if proc.pid is not None and proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        peak = monitor.finish()
    lat: Dict[str, List[float]] = collections.defaultdict(list)
    errors: collections.Counter = collections.Counter()
    done, asleep = [], 0.0
    for r in results:
        for op, values in r["lat"].items():
            lat[op].extend(values)
        errors.update(r["errors"])
        done.extend(r["done"])
        asleep += r["asleep"]
    inside = [state for when, state in done if t0 <= when <= t0 + window]
    stale = _count_stale(url, name)
    return {"pool": pool, "workers": workers, "rep": rep, "lat": lat, "errors": errors, "peak": peak, "limit": limit,
            "setup_s": setup_s, "epoch_s": epoch_s, "opened_per_s": opened / window, "window": window, "worker_cores": worker_cpu / window,
            "server_cores": None if server_cpu is None else server_cpu / window,
            "trials_per_s": len(inside) / window, "finished": len(done),
            "pruned_share": sum(s == "pruned" for s in done) / max(1, len(done)),
            "train_share": asleep / (workers * window), "failed": stale}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one live process (0 once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    f = text[text.rindex(")") + 2:].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def _count_stale(url: str, name: str) -> int:
    """Trials failed as stale by a worker's reap: each was queued again by
    RetryHeartbeatStaleTrialCallback, which marks the retry with ``failed_trial``."""
    import optuna
    from sqlalchemy.pool import NullPool

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool})
        study = optuna.load_study(study_name=name, storage=storage)
        n = sum("failed_trial" in t.system_attrs for t in study.get_trials(deepcopy=False))
        storage.engine.dispose()
    return n


def pct(values: List[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def mean_sd(values: List[float], fmt: str = "{:.1f}") -> str:
    if not values:
        return "—"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(sd)}"


def arm_rows(runs: List[Dict[str, Any]]) -> Tuple[List[Any], List[Any]]:
    """One summary row (means over repeats) and one latency row per arm."""
    first = runs[0]
    errors: collections.Counter = collections.Counter()
    for r in runs:
        errors.update(r["errors"])
    err = "; ".join(f"{k}: {v}" for k, v in sorted(errors.items())) or "0"
    server = [r["server_cores"] for r in runs if r["server_cores"] is not None]
    per_trial = [1000 * r["server_cores"] / r["trials_per_s"] for r in runs
                 if r["server_cores"] is not None and r["trials_per_s"] > 0]
    summary = [POOL_LABEL[first["pool"]], first["workers"], f"{first['epoch_s']:g}", f"{first['window']:g}", len(runs),
               mean_sd([r["trials_per_s"] for r in runs], "{:.1f}"),
               mean_sd([100 * r["train_share"] for r in runs], "{:.0f}") + " %",
               "/".join(str(r["peak"]) for r in runs), f"{max(r['peak'] for r in runs) / first['workers']:.2f}",
               mean_sd([r["opened_per_s"] for r in runs], "{:.1f}"),
               mean_sd([r["worker_cores"] for r in runs], "{:.2f}"), mean_sd(server, "{:.2f}"),
               mean_sd(per_trial, "{:.0f}"), sum(r["failed"] for r in runs), err]
    lat = [POOL_LABEL[first["pool"]], first["workers"]]
    for op in OPS:
        p50 = [1000 * pct(r["lat"].get(op, []), 0.5) for r in runs if r["lat"].get(op)]
        p95 = [1000 * pct(r["lat"].get(op, []), 0.95) for r in runs if r["lat"].get(op)]
        lat.append(f"{statistics.mean(p50):.1f} / {statistics.mean(p95):.0f}" if p50 else "—")
    return summary, lat


# --------------------------------------------------------------------------------------- sampler cost


def sampler_cost(sizes: List[int], seed: int, epochs: int) -> List[List[Any]]:
    """The sampler's own work as the study grows: one process, Optuna's in-memory storage (no
    database, so only TPE's computation is timed), a study of N finished trials (COMPLETE or PRUNED)
    with 8 RUNNING; the median of 10 samplings (ask + 6 suggests), constant_liar on and off."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists = {"head_lr": FloatDistribution(1e-4, 1e-2, log=True),
             "backbone_lr_mult": FloatDistribution(0.1, 1.0, log=True),
             "freeze_depth": FloatDistribution(0.0, 1.0, step=0.2),
             "backbone": CategoricalDistribution(BACKBONES), "hflip": CategoricalDistribution([0.0, 0.5]),
             "translate": CategoricalDistribution([0.0, 0.0625, 0.125])}
    rng = random.Random(seed)
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="sampler-cost", storage=storage, direction="maximize")
    rows, have = [], 0
    for n in sorted(sizes):
        trials = []
        for _ in range(n - have):
            params = {"head_lr": 10 ** rng.uniform(-4, -2), "backbone_lr_mult": 10 ** rng.uniform(-1, 0),
                      "freeze_depth": 0.2 * rng.randrange(6), "backbone": rng.choice(BACKBONES),
                      "hflip": rng.choice([0.0, 0.5]), "translate": rng.choice([0.0, 0.0625, 0.125])}
            last = rng.randrange(1, epochs + 1)
            curve = {e: score(params, e, rng) for e in range(1, last + 1)}
            trials.append(optuna.trial.create_trial(
                params=params, distributions=dists, intermediate_values=curve, value=curve[last],
                state=optuna.trial.TrialState.COMPLETE if last == epochs else optuna.trial.TrialState.PRUNED))
        study.add_trials(trials)
        have = n
        running = [study.ask(dists) for _ in range(8)]
        row: List[Any] = [n]
        for liar in (True, False):
            sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, constant_liar=liar)
            s = optuna.load_study(study_name="sampler-cost", storage=storage, sampler=sampler)
            spans = []
            for _ in range(10):
                t = time.perf_counter()
                trial = s.ask()
                for name, dist in dists.items():
                    trial._suggest(name, dist)
                spans.append(time.perf_counter() - t)
                s.tell(trial, state=optuna.trial.TrialState.FAIL)  # FAIL: TPE never reads it, N stays N
            row.append(f"{1000 * statistics.median(spans):.1f}")
        for trial in running:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        rows.append(row)
        print("sampling cost", row, flush=True)
    return rows


def running_cost(url: str, finished: int = 100, running: Tuple[int, ...] = (0, 32, 100)) -> List[List[Any]]:
    """One process on the PostgreSQL study through autotl's storage: a study of ``finished`` finished
    trials and R RUNNING ones (as R other workers would hold); the median of 10 trials' sampling
    (ask + 6 suggests), report + should_prune, and this process's CPU per trial, with constant_liar
    on and off."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    dists = {"head_lr": FloatDistribution(1e-4, 1e-2, log=True),
             "backbone_lr_mult": FloatDistribution(0.1, 1.0, log=True),
             "freeze_depth": FloatDistribution(0.0, 1.0, step=0.2),
             "backbone": CategoricalDistribution(BACKBONES), "hflip": CategoricalDistribution([0.0, 0.5]),
             "translate": CategoricalDistribution([0.0, 0.0625, 0.125])}
    rng = random.Random(1)

    def made(state: Any) -> Any:
        params = {"head_lr": 10 ** rng.uniform(-4, -2), "backbone_lr_mult": 10 ** rng.uniform(-1, 0),
                  "freeze_depth": 0.2 * rng.randrange(6), "backbone": rng.choice(BACKBONES),
                  "hflip": rng.choice([0.0, 0.5]), "translate": rng.choice([0.0, 0.0625, 0.125])}
        curve = {e: score(params, e, rng) for e in (1, 2)}
        done = state != optuna.trial.TrialState.RUNNING
        return optuna.trial.create_trial(params=params, distributions=dists, intermediate_values=curve, state=state,
                                         value=curve[2] if done else None,
                                         user_attrs={"worker": 0, "backbone_name": params["backbone"], "seed": 0})

    storage = open_storage(url, "small", 20.0)
    study = optuna.create_study(study_name="running-cost", storage=storage, direction="maximize")
    study.add_trials([made(optuna.trial.TrialState.COMPLETE) for _ in range(finished)])
    rows, have = [], 0
    for r in running:
        study.add_trials([made(optuna.trial.TrialState.RUNNING) for _ in range(r - have)])
        have = r
        row: List[Any] = [r]
        for liar in (True, False):
            worker = open_storage(url, "small", 20.0)
            s = optuna.load_study(study_name="running-cost", storage=worker,
                                  sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=10, constant_liar=liar),
                                  pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=4,
                                                                        reduction_factor=3))
            s.tell(s.ask(), state=optuna.trial.TrialState.FAIL)  # the first read of the whole study, untimed
            sample, prune, cpu = [], [], []
            for _ in range(10):
                c, t = time.process_time(), time.perf_counter()
                trial = s.ask()
                for name, dist in dists.items():
                    trial._suggest(name, dist)
                sample.append(time.perf_counter() - t)
                t = time.perf_counter()
                trial.report(0.5, 1)
                trial.should_prune()
                prune.append(time.perf_counter() - t)
                s.tell(trial, state=optuna.trial.TrialState.FAIL)  # FAIL: the finished count stays
                cpu.append(time.process_time() - c)
            row += [f"{1000 * statistics.median(sample):.0f}", f"{1000 * statistics.median(prune):.0f}",
                    f"{1000 * statistics.median(cpu):.0f}"]
            worker.engine.dispose()
        rows.append(row)
        print("running trials", row, flush=True)
    storage.engine.dispose()
    return rows


def heartbeat_cost(url: str, server: Optional[PrivateServer], beats: int = 50) -> List[Any]:
    """One process, one RUNNING trial, ``beats`` heartbeats in a row through autotl's storage (no
    other thread, so no overflow connection): latency p50 / p95, and CPU per beat of this process
    and of the server."""
    import optuna

    storage = open_storage(url, "small", 1.0)
    study = optuna.create_study(study_name="heartbeat-cost", storage=storage)
    trial = study.ask()
    study._storage.record_heartbeat(trial._trial_id)  # the first beat inserts the row
    spans = []
    cpu0, server0 = time.process_time(), server.cpu_seconds() if server else None
    for _ in range(beats):
        t = time.perf_counter()
        study._storage.record_heartbeat(trial._trial_id)
        spans.append(time.perf_counter() - t)
    client_ms = 1000 * (time.process_time() - cpu0) / beats
    server_ms = 1000 * (server.cpu_seconds() - server0) / beats if server else None
    study.tell(trial, state=optuna.trial.TrialState.FAIL)
    storage.engine.dispose()
    row = [beats, f"{1000 * pct(spans, 0.5):.1f} / {1000 * pct(spans, 0.95):.1f}", f"{client_ms:.1f}",
           "—" if server_ms is None else f"{server_ms:.1f}"]
    print("heartbeat cost", row, flush=True)
    return row


# ------------------------------------------------------------------------------------------------ main


def machine_line(server: str) -> str:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count()
    import optuna
    import sqlalchemy

    return (f"{platform.machine()}, {cpus} CPUs (workers, server and this script share them), Python "
            f"{platform.python_version()}, Optuna {optuna.__version__}, SQLAlchemy {sqlalchemy.__version__}, {server}, "
            f"1-minute load average {LOAD_AT_START:.1f} before the run (other users' jobs included)")


def main(argv: Optional[List[str]] = None) -> None:
    global LOAD_AT_START
    args = parse_args(argv)
    LOAD_AT_START = os.getloadavg()[0]
    import optuna  # imported once here: the forked workers share it
    import psycopg

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        import grpc  # noqa: F401

        grpc_note = "grpcio is installed"
    except ImportError:
        grpc_note = ("grpcio is not installed, so no arm runs through Optuna's gRPC storage proxy "
                     "(`run_grpc_proxy_server` / `GrpcStorageProxy` need it)")
    server = None
    db = f"autotl_bench_{os.getpid()}"
    if args.url:
        admin = sqlalchemy_url(args.url)
        where = "an existing server"
    else:
        server = PrivateServer(args.max_connections)
        admin = sqlalchemy_url(server.admin)
        where = "a private server started by this script"
    url = with_database(admin, db)
    with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        max_conn = conn.execute("SHOW max_connections").fetchone()[0]
        conn.execute(f'CREATE DATABASE "{db}"')
    server_line = f"PostgreSQL {version} ({where}; max_connections {max_conn}), storage from {storage_source()}"
    print(server_line, flush=True)
    main_limit = args.main_limit = int(max_conn)
    arms = [("small", w, main_limit) for w in args.workers]
    arms += [(p, args.pool_workers, main_limit) for p in args.pools if p != "small" or args.pool_workers not in args.workers]
    limit_arms = ([(p.strip(), max(args.workers), args.limit_check) for p in args.limit_pools.split(",") if p.strip()]
                  if server and args.limit_check else [])
    runs: Dict[Tuple[str, int, int], List[Dict[str, Any]]] = {arm: [] for arm in arms + limit_arms}
    sampler_rows: List[List[Any]] = []
    beat_row: List[Any] = []
    running_rows: List[List[Any]] = []
    started = time.time()

    def run(arm: Tuple[str, int, int], rep: int) -> None:
        pool, w, limit = arm
        r = run_arm(args, url, admin, db, pool, w, rep, server, limit)
        runs[arm].append(r)
        print(f"{pool:8s} W={w:3d} max_conn={limit} rep {rep}: {r['trials_per_s']:.1f} trials/s, "
              f"train {100 * r['train_share']:.0f} %, peak {r['peak']} conns, opened {r['opened_per_s']:.1f}/s, "
              f"setup {r['setup_s']:.1f} s, "
              f"cores: workers {r['worker_cores']:.2f} server {r['server_cores'] or 0:.2f}, "
              f"failed {r['failed']}, errors {dict(r['errors'])}, ask p50 {1000 * pct(r['lat'].get('ask', []), 0.5):.0f} ms "
              f"[{time.time() - started:.0f} s]", flush=True)

    try:
        from sqlalchemy.pool import NullPool

        with warnings.catch_warnings():  # the schema, once, before any worker opens the database
            warnings.simplefilter("ignore")
            optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": NullPool}).engine.dispose()
        check_pools(url, sorted({arm[0] for arm in arms + limit_arms}), args.heartbeat)
        for rep in range(args.repeats):
            for arm in arms if rep % 2 == 0 else list(reversed(arms)):  # alternate, so drift cancels
                run(arm, rep)
        beat_row = heartbeat_cost(url, server)
        running_rows = running_cost(url)
        if args.sampler_sizes:
            sampler_rows = sampler_cost(args.sampler_sizes, args.seed, args.epochs)
        if limit_arms:
            server.restart(args.limit_check)
            for arm in limit_arms:
                run(arm, 0)
    finally:
        try:
            with psycopg.connect(libpq_url(admin), autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        finally:
            if server is not None:
                server.stop()
    main_rows, lat_rows, limit_rows = [], [], []
    for arm in sorted(arms, key=lambda a: (a[0] != "small", a[1], POOLS.index(a[0]))):
        row, lat = arm_rows(runs[arm])
        main_rows.append(row)
        lat_rows.append(lat)
    for arm in limit_arms:
        r = runs[arm][0]
        limit_rows.append([POOL_LABEL[r["pool"]], r["workers"], r["limit"], f"{r['window']:g}", r["peak"],
                           r["failed"], "; ".join(f"{k}: {v}" for k, v in sorted(r["errors"].items())) or "0"])
    tables = [
        _common.md_table(["pool", "W", "epoch s", "window s", "runs", "trials/s (mean ± sd)", "time training",
                          "peak connections per run", "peak / W", "connections opened /s", "worker CPU cores", "server CPU cores",
                          "server CPU ms/trial", "trials failed as stale", "errors (whole runs)"], main_rows),
        _common.md_table(["pool", "W"] + [f"{op} ms p50 / p95" for op in OPS], lat_rows)]
    if limit_rows:
        tables.append(_common.md_table(["pool", "W", "max_connections", "window s", "peak connections",
                                        "trials failed as stale", "errors"], limit_rows))
    if running_rows:
        tables.append(_common.md_table(
            ["RUNNING trials (other workers')", "ask + 6 suggests ms, constant_liar", "report + should_prune ms",
             "CPU ms/trial", "ask + 6 suggests ms, constant_liar off", "report + should_prune ms", "CPU ms/trial"],
            running_rows))
    tables.append(_common.md_table(["heartbeats in a row", "one beat ms p50 / p95", "worker CPU ms per beat",
                                    "server CPU ms per beat"], [beat_row]))
    if sampler_rows:
        tables.append(_common.md_table(["finished trials", "TPE ask + 6 suggests, constant_liar, ms",
                                        "same, constant_liar off, ms"], sampler_rows))
    print("\n\n".join(tables))
    if args.append:
        notes = [
            f"Each run: W forked worker processes (no torch) on one new study of the server above (max_connections "
            f"{main_limit}), after all have opened it; epochs of {args.epoch_s_per_worker:g} s x W of sleep (so every W "
            f"offers the study the same ideal trial rate); each worker starts its first trial at a random point of "
            f"a warm-up of {args.warmup_epochs:g} epoch(s), then a window of {args.window_epochs:g} epoch(s) (at least "
            f"{args.seconds:g} s) is measured; trials of up to "
            f"{args.epochs} epochs (Hyperband, min 1, reduction factor 3), TPE seeded per worker, heartbeat "
            f"{args.heartbeat:g} s with a grace of 3 beats. {args.repeats} runs per arm, arms interleaved, mean ± sd "
            "over runs. trials/s = trials told inside the window / window; time training = the workers' sleep inside "
            "the window / (W x window); peak connections = the most client connections to the study's database in "
            "pg_stat_activity, polled every 0.1 s, setup and warm-up included; connections opened "
            "/s = the database's `pg_stat_database.sessions` over the window / window; CPU cores = CPU "
            "seconds of the workers (or of the server's processes) inside the window / window; server ms/trial = "
            "server cores / trials/s. Latencies: p50 / p95 over every call of every worker, mean over runs; reap = "
            "`fail_stale_trials` before each trial, user_attr = one `set_user_attr` (5 per trial), report+prune "
            "= `report` + `should_prune`. The workers, the server and this script share 2 cores (with other "
            "users' jobs), so every latency is an upper bound for a deployment where each worker has its own "
            f"machine. {grpc_note[0].upper() + grpc_note[1:]}."]
        if limit_rows:
            notes.append(f"Limit check: the same server restarted with max_connections {args.limit_check} (a stock "
                         f"PostgreSQL's), each of these pools once at W={max(args.workers)}, a window of one epoch; "
                         "errors counted over the whole run, the script's own connection holding one slot.")
        notes.append("Cost per trial against running trials: " + " ".join(
            running_cost.__doc__.replace("``finished``", "100").replace("``", "`").split()))
        notes.append("Heartbeat cost: " + " ".join(
            heartbeat_cost.__doc__.replace("``beats``", "50").replace("``", "`").split()))
        if sampler_rows:
            notes.append("Sampling cost: " + " ".join(sampler_cost.__doc__.split()))
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        parts = [f"### {stamp}: {len(arms)} arms x {args.repeats} runs on one PostgreSQL study", "",
                 f"Machine: {machine_line(server_line)}", "", f"Command: `{_common.command_line()}`", ""]
        for note in notes:
            parts += [note, ""]
        for table in tables:
            parts += [table, ""]
        _common.append_results(HEADING, "\n".join(parts).rstrip() + "\n")


if __name__ == "__main__":
    main()
