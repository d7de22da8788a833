"""No network, found in seconds: hub sources without cached weights are left out with one warning line.

A machine without internet used to spend minutes in huggingface_hub's download retries (5 per file,
each a printed line) for every hub source the ranking or a trial built. These tests take the
network away by pointing ``HF_ENDPOINT`` at a closed local port, or at a server that never
answers, or by setting ``HF_HUB_OFFLINE=1``, and give each test its own Hugging Face cache.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import autotl
from autotl import AutotlWarning, errors, get_plugin_manager
from autotl.cli import main
from conftest import FIXTURE_PLUGINS, make_split_folder
from test_errors import run as run_cli

HUB_PLUGIN = str(FIXTURE_PLUGINS / "hub_sources.py")
HUB_NAMES = ("timm/resnet18.a1_in1k", "timm/resnet50.a1_in1k", "timm/vit_small_patch16_224.augreg_in21k_ft_in1k")
#: What huggingface_hub, httpx or urllib3 print while retrying; none of it may reach the user.
NOISE = ("Retrying", "retry", "Max retries", "HTTPSConnectionPool", "urllib3", "httpx", "huggingface_hub",
         "Traceback", "OfflineModeIsEnabled")
REVISION = "0123456789abcdef0123456789abcdef01234567"


def closed_port() -> int:
    """A local port nobody listens on: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def silent_server():
    """A local server that takes connections (the kernel's backlog) and never answers: a blackhole."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock, f"http://127.0.0.1:{sock.getsockname()[1]}"


def no_hub(monkeypatch, endpoint: str) -> None:
    """The hub is to be probed at ``endpoint`` (the user has not declared the machine offline)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", endpoint)


def run(args, capsys):
    """The CLI, with warnings shown as the command shows them (one ``warning:`` line each)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        errors._install_warning_format()
        return run_cli(args, capsys)


def hub_warning(err: str) -> str:
    """The one warning line about hub sources; no retry noise around it."""
    lines = [line for line in err.splitlines() if line.startswith("warning:") and "Hugging Face hub" in line]
    assert len(lines) == 1, err
    assert not [word for word in NOISE if word in err], err
    return lines[0]


def rank(data, tmp_path, backbones, capsys):
    start = time.perf_counter()
    code, _, err = run(["rank", str(data), "--backbones", backbones, "--device", "cpu",
                        "--out", str(tmp_path / "rank")], capsys)
    assert code == 0, err
    return json.loads((tmp_path / "rank" / "rank.json").read_text()), err, time.perf_counter() - start


def fake_hub_cache(cache: Path, repo_id: str, architecture: str):
    """``repo_id``'s ``model.safetensors`` in the layout huggingface_hub keeps: refs/main names a snapshot."""
    import timm
    from safetensors.torch import save_file

    state = timm.create_model(architecture).state_dict()
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / REVISION).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / REVISION / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return state


def test_an_unreachable_hub_leaves_the_hub_sources_out_with_one_warning_in_seconds(split_folder, tmp_path,
                                                                                   monkeypatch, capsys):
    no_hub(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    ranking, err, seconds = rank(split_folder, tmp_path, "timm/*", capsys)
    line = hub_warning(err)
    assert "left out 8 source model(s)" in line and all(name in line for name in HUB_NAMES)
    assert "cannot be reached: connection refused" in line and "not in the Hugging Face cache" in line
    for way_out in ("hf download", "HF_HUB_OFFLINE=1", "--backbones", "AUTOTL_TIMM_WEIGHTS"):
        assert way_out in line.split(" — ", 1)[1], way_out
    assert sorted(ranking["order"]) == ["timm/test_convnext", "timm/test_efficientnet", "timm/test_resnet",
                                        "timm/test_vit"] and not ranking["skipped"]
    assert seconds < 15  # found in seconds, not after minutes of retries

    code, _, err = run(["search", str(split_folder), "--backbones", "timm/resnet*", "--out", str(tmp_path / "run")],
                       capsys)  # nothing left to search: one line, before any trial
    errors_shown = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors_shown) == 1 and "Traceback" not in err
    assert errors_shown[0].startswith("error: --backbones: none of the 2 matching source model(s) can be used here: "
                                      "weights on the Hugging Face hub")


def test_a_hub_that_never_answers_is_given_up_after_the_short_timeout(split_folder, tmp_path, monkeypatch, capsys):
    with silent_server() as (_, url):
        no_hub(monkeypatch, url)
        ranking, err, seconds = rank(split_folder, tmp_path, "timm/test_resnet,timm/resnet*", capsys)
    line = hub_warning(err)
    assert "left out 2 source model(s)" in line and f"{url} cannot be reached: no answer within 3 s" in line
    assert ranking["order"] == ["timm/test_resnet"] and seconds < 15


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_a_machine_declared_offline_is_never_probed(variable, split_folder, tmp_path, monkeypatch, capsys):
    with silent_server() as (server, url):
        no_hub(monkeypatch, url)
        monkeypatch.setenv(variable, "1")
        ranking, err, seconds = rank(split_folder, tmp_path, "timm/test_resnet,timm/resnet*", capsys)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody knocked: no probe, no request
    line = hub_warning(err)
    assert "left out 2 source model(s)" in line and f"{variable}=1 is set" in line
    assert f"unset {variable}" in line and ranking["order"] == ["timm/test_resnet"] and seconds < 15


def test_cached_hub_weights_build_and_train_without_the_hub(split_folder, tmp_path, monkeypatch):
    import torch

    no_hub(monkeypatch, f"http://127.0.0.1:{closed_port()}")
    state = fake_hub_cache(Path(os.environ["HF_HUB_CACHE"]), "timm/test_resnet.r160_in1k", "test_resnet")
    net = get_plugin_manager([HUB_PLUGIN]).sources.get("acme/hub-resnet").build()
    built = net.state_dict()
    assert built and all(torch.equal(tensor, state[key]) for key, tensor in built.items())  # the cache's weights

    with pytest.warns(AutotlWarning, match=r"left out 1 source model\(s\) \(acme/hub-vit\): weights on the Hugging "
                                           r"Face hub \(http://127\.0\.0\.1:\d+ cannot be reached"):
        result = autotl.search(str(split_folder), plugins=[HUB_PLUGIN], backbones="acme/*", trials=1, epochs=1,
                               device="cpu", out=str(tmp_path / "run"), report=False)
    assert [(r.backbone, r.state) for r in result.trials] == [("acme/hub-resnet", "complete")]


@pytest.mark.slow
def test_a_default_search_without_network_starts_its_first_trial_within_30_s(tmp_path):
    """The issue's acceptance run: `autotl search DATA` with the default space on a machine without
    a network (zoo, lite0 and the hub sources registered) trains its first trial within 30 s."""
    import optuna

    import autotl.storage

    data = make_split_folder(tmp_path / "data")
    env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}", "HF_HOME": str(tmp_path / "hf"),
           "OMP_NUM_THREADS": "1"}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        env.pop(var, None)
    out = tmp_path / "run"
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "autotl", "search", str(data), "--trials", "1", "--epochs", "1",
                           "--device", "cpu", "--out", str(out), "--no-report"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "left out 8 source model(s)" in hub_warning(proc.stderr)
    summary = json.loads((out / "summary.json").read_text())
    first = optuna.load_study(study_name=summary["study"], storage=autotl.storage.make_storage(None, out)).trials[0]
    assert not first.params["backbone"].startswith("timm/")
    assert first.datetime_start.timestamp() - started < 30, first.datetime_start.timestamp() - started
