"""The CLI: fast help, listings, and one-line errors with --debug for the traceback."""
from __future__ import annotations

import subprocess
import sys

import pytest

from autotl.cli import main
from conftest import FIXTURE_PLUGINS


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "autotl", *args], capture_output=True, text=True, env=env)


def test_help_and_version_do_not_import_torch():
    code = ("import sys\nfrom autotl.cli import main\n"
            "for argv in (['--version'], ['--help'], ['search', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('TORCH', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "autotl 0.1.0" in out and "--backbones" in out and "TORCH False" in out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "search" in capsys.readouterr().out


def test_backbones_lists_plugin_params_input_and_groups(capsys):
    assert main(["backbones", "--plugin", str(FIXTURE_PLUGINS / "custom_net.py")]) == 0
    out = capsys.readouterr().out
    header, *rows = out.splitlines()
    assert header.split()[:5] == ["name", "plugin", "params", "input", "groups"]
    resnet = next(r.split() for r in rows if r.startswith("timm/test_resnet "))
    assert resnet[1:5] == ["autotl_timm", "0.37M", "32x32", "5"]
    tiny = next(r.split() for r in rows if r.startswith("acme/tiny "))
    assert tiny[1] == "custom_net" and tiny[3] == "32x32" and tiny[4] == "2"
    big = next(r.split() for r in rows if r.startswith("timm/resnet50.a1_in1k "))
    assert big[2] == "23.51M" and big[3] == "224x224"  # listed without downloading weights


def test_plugins_lists_hooks(capsys):
    assert main(["plugins", "--plugin", str(FIXTURE_PLUGINS / "observer.py")]) == 0
    out = capsys.readouterr().out
    line = next(r for r in out.splitlines() if r.startswith("observer "))
    assert "autotl_search_finished" in line and "autotl_trial_finished" in line
    assert any(r.startswith("autotl_timm ") and "autotl_register_source_models" in r for r in out.splitlines())


@pytest.mark.parametrize("args, message, code", [
    (["search", "no/such/folder"], "error: data folder 'no/such/folder' does not exist — pass an image folder", 1),
    (["search", "builtin:digits", "--metric", "auc"], "error: the 'metric' option must be one of accuracy", 2),
    (["search", "builtin:digits", "--trials", "0"], "error: the 'trials' option must be an int >= 1; got 0", 2),
    (["search", "builtin:digits", "--space", "nope"], "error: search space 'nope' is neither a built-in space", 2),
    (["search", "builtin:digits", "--backbones", "acme/*"], "error: --backbones: no source model matches 'acme/*'", 2),
    (["search", "builtin:digits", "--device", "tpu", "--backbones", "timm/test_vit"], "error: --device 'tpu' is not a device", 2),
    (["search", "builtin:digits", "--study", "bad name!"], "error: the 'study' option must be a name", 2),
    (["search", "builtin:digits", "--plugin", str(FIXTURE_PLUGINS / "bad_import.py")],
     "error: plugin 'bad_import' failed to import", 1),
    (["predict", "nowhere", "x.png"], "error: no saved model in 'nowhere'", 1),
    (["pretrain", "builtin:digits-source", "--backbone", "timm/test_vit", "--out", "x.pt"],
     "error: --out 'x.pt' must end in .safetensors", 2),
])
def test_errors_are_one_line_without_traceback(args, message, code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == code
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert " — " in err


def test_bad_storage_url_is_one_line(tmp_path, capsys):
    code = main(["search", "builtin:digits", "--backbones", "timm/test_vit", "--storage", "nosuchdb://x",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: cannot open storage 'nosuchdb://x'") and err.count("\n") == 1


def test_debug_shows_the_traceback():
    proc = run_cli("search", "no/such/folder", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "DataError" in proc.stderr
    plain = run_cli("search", "no/such/folder")
    assert plain.returncode == 1 and "Traceback" not in plain.stderr
    assert plain.stderr.strip().startswith("error: data folder")


def test_bad_input_leaves_no_study_behind(tmp_path, capsys):
    assert main(["search", str(tmp_path / "missing"), "--out", str(tmp_path / "run")]) == 1
    assert not (tmp_path / "run").exists()
