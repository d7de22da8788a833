"""Can this process use the Hugging Face hub? Answered once, in seconds, without the hub client.

Without this check, a machine with no internet learns it from huggingface_hub itself: every
download is retried with back-off (5 tries per file, each printing a line), for every hub model
the ranking or a trial builds: minutes before the first trial. So plugins whose weights come from
the hub ask here first:

- :func:`hub_problem`: why the hub cannot be used (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``
  set, or one short probe of ``HF_ENDPOINT`` failed), or None. The probe runs at most once per
  endpoint and process, and never when the user has declared the machine offline.
- :func:`cached_file`: a file of a hub repository already in the local Hugging Face cache (a few
  file-system lookups), so cached weights load offline, with no request and no retry.
- :func:`quiet_hub`: keeps the hub client's retry and request log lines away from the user
  while a network download runs.

Environment variables are read when called (not at import, as huggingface_hub does), so the
answers follow the environment the command runs in. Nothing here imports torch or timm.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path
from typing import Dict, Iterator, Optional
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
#: Variables by which a user declares the machine offline (huggingface_hub honours both).
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
#: Seconds the probe waits for the hub to answer (name resolution included).
PROBE_TIMEOUT_S = 3.0
#: Loggers whose retry and request lines never reach the user during a download.
NOISY_LOGGERS = ("huggingface_hub", "httpx", "httpcore", "urllib3", "requests")

_probes: Dict[str, Optional[str]] = {}
_lock = threading.Lock()


def _is_true(value: Optional[str]) -> bool:
    """huggingface_hub's reading of a boolean variable."""
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` (a mirror or a proxy), else huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline_setting() -> Optional[str]:
    """The variable by which the user declared this machine offline (``HF_HUB_OFFLINE=1``), or None."""
    for var in OFFLINE_VARS:
        if _is_true(os.environ.get(var)):
            return f"{var}={os.environ[var]}"
    return None


def cache_dir() -> Path:
    """The Hugging Face hub cache, found as huggingface_hub finds it: ``HF_HUB_CACHE``,
    ``HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub``, ``$XDG_CACHE_HOME/huggingface/hub``, then
    ``~/.cache/huggingface/hub``."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def cached_file(repo_id: str, filename: str, revision: Optional[str] = None) -> Optional[str]:
    """The path of ``filename`` of the model repository ``repo_id`` in the local hub cache, or None.

    Only file-system lookups (``refs/<revision>``, then the snapshot), no request: cheap enough to
    ask for every registered source when a space is resolved.
    """
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir()), revision=revision)
    except Exception:  # a malformed id or a damaged cache entry: not cached
        return None
    return found if isinstance(found, str) and os.path.isfile(found) else None


def _probe(url: str, timeout: float) -> Optional[str]:
    """One HEAD request to ``url`` (through the proxy variables, as the hub client goes): None when
    a server answers (any status below 500, or a TLS handshake it could not finish: the network
    path is there), else a few words on why not."""
    import socket
    import ssl
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        return None if exc.code < 500 else f"it answered HTTP {exc.code}"
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, ssl.SSLError):
            return None
        if isinstance(reason, socket.gaierror):
            return f"cannot resolve {urlsplit(url).hostname}"
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return f"no answer within {timeout:g} s"
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        return " ".join(str(getattr(reason, "strerror", None) or reason).split())
    except (TimeoutError, socket.timeout):
        return f"no answer within {timeout:g} s"
    except ssl.SSLError:
        return None
    except (OSError, ValueError) as exc:
        return " ".join(str(getattr(exc, "strerror", None) or exc).split())


def probe(url: Optional[str] = None, timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """Probe ``url`` (default: :func:`endpoint`) now, never longer than ``timeout`` plus half a
    second, name resolution included (it runs in a daemon thread; one that hangs is left behind)."""
    url = url or endpoint()
    result: Dict[str, Optional[str]] = {}
    thread = threading.Thread(target=lambda: result.setdefault("why", _probe(url, timeout)), daemon=True,
                              name="autotl-hub-probe")
    thread.start()
    thread.join(timeout + 0.5)
    return result["why"] if "why" in result else f"no answer within {timeout:g} s"


def hub_problem() -> Optional[str]:
    """Why this process cannot download from the hub, in a few words; None when it can.

    ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) answers at once, without a probe.
    Otherwise the endpoint is probed once (:data:`PROBE_TIMEOUT_S`) and the answer kept for the
    life of the process, so a search with eight hub sources pays for one probe, not eight.
    """
    setting = offline_setting()
    if setting:
        return f"{setting} is set"
    url = endpoint()
    with _lock:  # one probe per endpoint, even when several threads ask at once
        if url not in _probes:
            _probes[url] = probe(url)
        why = _probes[url]
    return None if why is None else f"{url} cannot be reached: {why}"


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """Hold the hub client's log lines (retries, failed requests) below ERROR while a download
    runs; a failure still reaches the caller as an exception, which autotl shows as one line."""
    saved = {}
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        if logger.getEffectiveLevel() < logging.ERROR:
            logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


__all__ = ["DEFAULT_ENDPOINT", "OFFLINE_VARS", "PROBE_TIMEOUT_S", "cache_dir", "cached_file", "endpoint",
           "hub_problem", "offline_setting", "probe", "quiet_hub"]
