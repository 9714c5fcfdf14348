"""`normspec validate`: usage errors, controls accepted, hostile candidates reported cleanly,
reports (JSON, JUnit, standalone reproducers), and the user's files left untouched."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from normspec.cli import main
from normspec.validate import validate

CANDIDATES = Path(__file__).parent / "candidates" / "norms.py"


def target(attr: str) -> str:
    return f"{CANDIDATES}:{attr}"


# ---------------------------------------------------------------- usage errors (exit 2)

@pytest.mark.parametrize("argv, says", [
    (["no_colon_here"], "must name an attribute"),
    (["does/not/exist.py:X"], "no such file"),
    (["no_such_module_xyz:Thing"], "cannot import"),
    ([f"{CANDIDATES}:NoSuchAttr"], "has no attribute"),
    ([f"{CANDIDATES}:CATALOGUE"], "not a recognized kind"),
    (["torch.nn:Linear"], "pass --as NORM"),
    (["torch.nn:LayerNorm", "--as", "frobnicate_norm"], "unknown norm"),
    (["torch:_weight_norm", "--property", "no_such_property"], "unknown property"),
])
def test_usage_errors_exit_2_with_a_message(argv, says, capsys):
    assert main(["validate", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert says in err, err


# ---------------------------------------------------------------- controls and a seeded bug, end to end

def test_pytorch_layer_norm_accepted_and_json_junit_written(tmp_path, capsys):
    out_json, out_xml = tmp_path / "r.json", tmp_path / "r.xml"
    rc = main(["validate", "torch.nn:LayerNorm", "--quiet", "--json", str(out_json), "--junit-xml", str(out_xml),
               "--report-dir", str(tmp_path / "rep")])
    assert rc == 0, capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["accepted"] and data["norm"] == "layer_norm" and data["kind"] == "module"
    assert {r["status"] for r in data["results"]} <= {"passed", "skipped", "xfail"}
    assert "<testsuite" in out_xml.read_text()


def test_seeded_bug_rejected_with_standalone_reproducer(tmp_path, capsys):
    rc = main(["validate", target("LNEpsOutsideSqrt"), "--quiet", "--report-dir", str(tmp_path),
               "--property", "forward_matches_spec"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "minimal counterexample" in out
    repro = tmp_path / "repro_LNEpsOutsideSqrt__forward_matches_spec.py"
    source = repro.read_text()
    assert "import normspec" not in source and "from normspec" not in source
    run = subprocess.run([sys.executable, str(repro)], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": ""})
    assert run.returncode == 1 and "REPRODUCED" in run.stdout, run.stdout + run.stderr


def test_spec_signature_function_and_functional_drop_in_accepted():
    for t in ("normspec.spec:layer_norm", "torch.nn.functional:layer_norm"):
        r = validate(t, profile="ci", properties=["forward_matches_spec", "backward_matches_spec"])
        assert r.accepted, [o.verdict.message for o in r.failures]
    assert r.kind == "functional"


def test_users_directory_is_not_written(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "mynorm.py").write_text("import torch\nclass MyLayerNorm(torch.nn.LayerNorm):\n    pass\n")
    before = sorted(p.name for p in user.rglob("*"))
    r = validate(f"{user / 'mynorm.py'}:MyLayerNorm", profile="ci", properties=["forward_matches_spec"])
    assert r.accepted
    assert sorted(p.name for p in user.rglob("*")) == before


# ---------------------------------------------------------------- hostile candidates end in a clean report

HOSTILE = [
    ("RaisesLayerNorm", "raised RuntimeError"),
    ("WrongShapeLayerNorm", "should have shape"),
    ("WrongDtypeLayerNorm", "should have the input's dtype"),
    ("NaNLayerNorm", "nan"),
    ("HangingLayerNorm", "hung"),
    ("MutatingLayerNorm", "after the call"),
    ("NondeterministicLayerNorm", "second call"),
    ("SegfaultingLayerNorm", "SIGSEGV"),
    ("SigsegvLayerNorm", "SIGSEGV"),
]


@pytest.mark.parametrize("attr, says", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_candidate_rejected_with_a_named_cause(attr, says):
    props = ["forward_matches_spec", "inputs_unmodified", "deterministic"]
    r = validate(target(attr), profile="ci", example_timeout=3, run_timeout=120, properties=props)
    assert not r.accepted
    messages = " | ".join(o.verdict.message for o in r.failures)
    assert says.lower() in messages.lower(), messages
