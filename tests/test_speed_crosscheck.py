"""docs/speed/crosscheck.py: its independent calls compute what normspec's backends compute (no timing here).

Engines that are not installed are skipped, saying which extra installs them; cells the engine has
no call for (ONNX Runtime's backward, flax's and ONNX's BatchNorm with PyTorch's running variance)
are skipped with the script's reason.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from normspec.bench import prepare
from normspec.impls.base import available_backends
from normspec.registry import norms

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "speed" / "crosscheck.py"
spec = importlib.util.spec_from_file_location("speed_crosscheck", SCRIPT)
cc = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = cc  # dataclasses look their module up there
spec.loader.exec_module(cc)

MODULE = {"jax": ("jax", "jax"), "onnxruntime": ("onnxruntime", "onnx")}


def backend(name: str):
    module, extra = MODULE.get(name, (None, None))
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{name} is not installed: pip install 'normspec[{extra}]'")
    found, absent = available_backends([name])
    if name not in found:
        pytest.skip(f"{name} cannot start here: {absent.get(name)}")
    return found[name]


@pytest.mark.parametrize("pass_", cc.PASSES)
@pytest.mark.parametrize("norm", cc.NORMS)
@pytest.mark.parametrize("engine", cc.ENGINES)
def test_independent_call_agrees_with_normspec_backend(engine, norm, pass_):
    """Every variant (eager, both compile settings, jit(vjp) and vjp(jit), ...) within TOL of the backend."""
    b = backend(engine)
    try:
        verdicts = cc.check(engine, norm, pass_, b)
    except cc.NotAvailable as exc:
        pytest.skip(f"n/a: {exc}")
    assert verdicts, "no independent call was checked"
    for label, (worst, problems) in verdicts.items():
        assert not problems, f"{engine} {label} {norm} {pass_}: {problems}"
        assert worst <= cc.TOL


def _numpy_backend():
    return available_backends(["numpy"])[0]["numpy"]


def test_check_rejects_layer_norm_with_the_unbiased_variance():
    """A LayerNorm dividing by sqrt(var(ddof=1) + eps) (a common slip) is not the bench's computation."""
    row = cc.make_row("layer_norm", cc.SMALL["layer_norm"])
    a = row.arrays
    d = a["x"] - a["x"].mean(-1, keepdims=True)
    wrong = d / np.sqrt(d.var(-1, ddof=1, keepdims=True) + row.params["eps"]) * a["weight"] + a["bias"]
    theirs = cc.normspec_outputs(_numpy_backend(), row, "forward")
    assert cc.compare({"y": wrong}, theirs)[1]
    assert not cc.compare(cc.numpy_calls(row, "forward")["two-pass formula"](), theirs)[1]


def test_check_rejects_batch_norm_with_a_biased_running_variance(monkeypatch):
    """flax's and ONNX's running-variance rule (the biased batch variance) fails `check` end to end."""
    right_calls = cc.numpy_calls

    def biased(row, pass_):
        right = right_calls(row, pass_)["two-pass formula"]
        m, x = row.params["momentum"], row.arrays["x"]

        def call():
            out = right()
            out["running_var"] = (1 - m) * row.arrays["running_var"] + m * x.var(axis=(0, 2, 3))
            return out
        return {"biased running var": call}

    monkeypatch.setattr(cc, "numpy_calls", biased)
    (worst, problems), = cc.check("numpy", "batch_norm", "forward", _numpy_backend()).values()
    assert worst > cc.TOL and len(problems) == 1 and problems[0].startswith("running_var")


def test_script_refuses_to_time_a_different_computation(monkeypatch, tmp_path):
    """With one call disagreeing, the script stops before any timing, exits 1 and says which call."""
    right_calls = cc.numpy_calls

    def off(row, pass_):
        right = right_calls(row, pass_)["two-pass formula"]
        return {"y 0.1% off": lambda: {k: v * (1 + 1e-3) if k == "y" else v for k, v in right().items()}}

    monkeypatch.setattr(cc, "numpy_calls", off)
    monkeypatch.setattr(cc, "measure", lambda *a, **k: pytest.fail("timed a call that disagrees"))
    out = tmp_path / "crosscheck.txt"
    assert cc.main(["--engines", "numpy", "--norms", "layer_norm", "--passes", "forward", "--out", str(out)]) == 1
    text = out.read_text()
    assert "numpy          y 0.1% off" in text and "y: differs by" in text and "no timing" in text


def test_check_rejects_a_missing_output():
    """A BatchNorm call that does not return the updated running statistics is a disagreement."""
    row = cc.make_row("batch_norm", cc.SMALL["batch_norm"])
    theirs = cc.normspec_outputs(_numpy_backend(), row, "forward")
    only_y = {"y": cc.numpy_calls(row, "forward")["two-pass formula"]()["y"]}
    problems = cc.compare(only_y, theirs)[1]
    assert any("running_mean" in p for p in problems)


@pytest.mark.parametrize("pass_", cc.PASSES)
@pytest.mark.parametrize("norm", cc.NORMS)
def test_byte_model_is_the_benchs(norm, pass_):
    """% of copy uses the same bytes for both timers: the script's count equals normspec bench's."""
    row = cc.make_row(norm, cc.SMALL[norm])
    p = prepare(norms()[norm], _numpy_backend(), row.arrays["x"].shape, "float32", pass_, warmup=False)
    assert cc.byte_model(row, pass_) == p.bytes


@pytest.mark.parametrize("argv", [["--engines", "tensorflow"], ["--norms", "group_norm"], ["--passes", "backward"],
                                  ["--mb", "0"], ["--engines", ""]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cc.parse(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "choose from" in err or "at least 1" in err
