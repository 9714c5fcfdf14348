"""`normspec check`: exit statuses, selection, JSON, reproducers that replay the failure."""
import json
import subprocess
import sys

import pytest
from bugs import buggy_backend

import normspec.matrix as matrix
from normspec.cli import main
from normspec.properties import PropertyFailure


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "normspec.cli", *args], capture_output=True, text=True, timeout=600)


def test_check_passes_on_reference_backends_and_writes_json(tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("check", "--norm", "batch_norm", "--backend", "numpy",
                "--property", "forward_matches_spec,scale_invariance",
                "--profile", "dev", "--quiet", "--json", str(out), "--matrix")
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert report["summary"]["passed"] == 2 and report["summary"]["failed"] == 0
    assert {x["property"] for x in report["results"]} == {"forward_matches_spec", "scale_invariance"}
    assert "forward_matches_spec" in r.stdout  # the matrix is printed on request (--matrix)
    assert report["matrix"]["scale_invariance"]["batch_norm/numpy"] == "passed"


def test_expected_failure_is_shown_with_reason_and_link():
    r = run_cli("check", "--norm", "batch_norm", "--backend", "torch:cpu", "--property", "constant_group_gives_beta",
                "--quiet", "--json", "-")
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(r.stdout)["results"][0]
    assert result["status"] == "xfail"
    assert "pytorch/pytorch/issues" in result["link"] and result["reason"]


@pytest.mark.parametrize("args,needle", [
    (["--norm", "batchnorm"], "unknown norm"),
    (["--backend", "tpu:xla"], "unknown backend"),
    (["--property", "nonsense"], "unknown property"),
    (["--profile", "fast"], "invalid choice"),
])
def test_usage_errors_exit_2_and_say_what_is_known(args, needle):
    r = run_cli("check", *args)
    assert r.returncode == 2
    assert needle in r.stderr
    if needle.startswith("unknown"):
        assert "known" in r.stderr.split(needle, 1)[1]


def test_failure_exits_1_with_counterexample_and_a_reproducer_that_replays(tmp_path, monkeypatch, capsys):
    bug = buggy_backend("layer_norm", "eps_outside_sqrt")
    monkeypatch.setattr(matrix, "available_backends", lambda names=None: ({bug.name: bug}, {}))
    code = main(["check", "--norm", "layer_norm", "--property", "scale_invariance", "--quiet",
                 "--report-dir", str(tmp_path), "--json", str(tmp_path / "r.json")])
    assert code == 1
    printed = capsys.readouterr().out
    assert "FAIL" in printed and "minimal counterexample" in printed
    result = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert result["status"] == "failed" and "but should be" in result["message"]
    script = tmp_path / "repro_layer_norm__numpy_eps_outside_sqrt__scale_invariance.py"
    assert script.exists()
    # The script names its backend; replay it against the same buggy backend and the fixed one.
    import normspec.impls.base as base
    from normspec.impls.numpy_backend import NumpyBackend

    monkeypatch.setattr(base, "available_backends", lambda names=None: ({bug.name: bug}, {}))
    with pytest.raises(PropertyFailure):
        exec(compile(script.read_text(), str(script), "exec"), {"__name__": "__main__"})
    fixed = NumpyBackend()
    fixed.name = bug.name
    monkeypatch.setattr(base, "available_backends", lambda names=None: ({bug.name: fixed}, {}))
    exec(compile(script.read_text(), str(script), "exec"), {"__name__": "__main__"})
    assert "holds now" in capsys.readouterr().out


def test_list_shows_the_catalogue():
    r = run_cli("list")
    assert r.returncode == 0
    for name in ("batch_norm", "layer_norm", "numpy", "torch:cpu"):
        assert name in r.stdout
