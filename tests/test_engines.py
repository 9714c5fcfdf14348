"""The extra engines (torch:inductor, onnxruntime, jax), validate --compile and bench --target.

Engines that are not installed are skipped, saying which extra installs them.
"""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from normspec.cli import main
from normspec.impls.base import available_backends
from normspec.matrix import judge, plan
from normspec.properties import PROPERTIES, run_property
from normspec.registry import norms

CANDIDATES = Path(__file__).parent / "candidates"
EXTRA = {"onnxruntime": "onnx", "jax": "jax"}


def engine(name: str):
    module = {"onnxruntime": "onnxruntime", "jax": "jax", "torch:inductor": "torch"}[name]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{name} is not installed: pip install 'normspec[{EXTRA[name]}]'")
    backends, absent = available_backends([name])
    if name not in backends:
        pytest.skip(f"{name} cannot start here: {absent.get(name)}")
    return backends[name]


@pytest.mark.parametrize("name", ["onnxruntime", "jax", "torch:inductor"])
def test_conversion_is_exact_in_every_dtype(name):
    """native() then to_numpy() gives back exactly the dtype-rounded values (what the properties rely on)."""
    b = engine(name)
    x = np.random.default_rng(0).standard_normal((3, 4, 5)) * 10
    rounded = {"float64": x, "float32": x.astype(np.float32).astype(np.float64),
               "float16": x.astype(np.float16).astype(np.float64)}
    for dtype in b.dtypes:
        got = b.to_numpy(b.native(x, dtype))
        if dtype in rounded:
            np.testing.assert_array_equal(got, rounded[dtype])
        else:  # bfloat16: 8 significant bits, round to nearest
            assert np.all(np.abs(got - x) <= np.abs(x) * 2.0 ** -8)


@pytest.mark.parametrize("name,norm", [("onnxruntime", "layer_norm"), ("jax", "rms_norm"),
                                       ("torch:inductor", "rms_norm")])
def test_one_property_on_one_norm(name, norm):
    """forward_matches_spec holds (documented expected failures applied, confined to their dtypes)."""
    b = engine(name)
    verdict = judge("forward_matches_spec", norms()[norm], b, "dev")
    assert verdict.status in ("passed", "xfail"), verdict.message


@pytest.mark.parametrize("name", ["jax", "onnxruntime"])
def test_rms_norm_eps_none_is_pytorchs_rule_in_every_dtype(name):
    """eps=None is float32's epsilon for half inputs too (the spec's resolve_eps), not the input dtype's own.
    Both adapters once read it from the input dtype: float16's 9.8e-4 swamped mean squares near 1e-7 (jax gave
    y = 0.011 where 0.707 was right). The forward-only engine is held to the rule on y."""
    b = engine(name)
    v = judge("rms_norm_eps_none_rule", norms()["rms_norm"], b, "ci")  # flax's recorded half dx deviation is xfail
    assert v.status in ("passed", "xfail") and not v.message.startswith("y"), v.message


def test_forward_only_engine_skips_gradient_properties_saying_why():
    b = engine("onnxruntime")
    v = run_property(PROPERTIES["backward_matches_spec"], norms()["layer_norm"], b, "dev")
    assert v.status == "skipped" and "forward-only" in v.reason and not v.forward_half


@pytest.mark.parametrize("prop,norm", [("scale_invariance", "layer_norm"), ("deterministic", "instance_norm"),
                                       ("rms_norm_is_layer_norm_on_zero_mean_rows", "rms_norm")])
def test_forward_only_engine_is_held_to_forward_halves(prop, norm):
    """Properties whose outputs stand without their gradients run on ONNX Runtime, marked as such."""
    v = judge(prop, norms()[norm], engine("onnxruntime"), "ci")
    assert v.status == "passed" and v.forward_half, v.message
    assert v.reason == "forward half only: onnxruntime is forward-only, its gradients are not checked"


def test_onnxruntime_empty_batch_running_statistics_are_nan():
    """BatchNormalization(training_mode=1) on an empty batch: running statistics become NaN (ONNX's
    formula on the mean of no values; PyTorch leaves them unchanged), a documented deviation."""
    v = judge("empty_input_gives_empty_output", norms()["batch_norm"], engine("onnxruntime"), "ci")
    assert v.status == "xfail" and v.forward_half and "onnx/onnx" in v.link, v.message
    assert "after an empty batch" in v.message and "nan" in v.message


def test_onnxruntime_conventions_it_lacks_are_unsupported_not_failed():
    b = engine("onnxruntime")
    assert "even sizes" in b.unsupported("local_response_norm", {"size": 4, "convention": "pytorch"}, "float32")
    assert "biased" in b.unsupported("batch_norm", {"training": True, "momentum": 0.1}, "float32")
    assert b.unsupported("local_response_norm", {"size": 3, "convention": "pytorch"}, "float32") is None


def test_opt_in_backend_not_in_the_default_selection():
    p = plan(["layer_norm"], None, ["forward_matches_spec"])
    assert "torch:inductor" not in [b.name for b in p.backends]
    for name in ("torch:inductor", "jax", "onnxruntime"):
        assert f"--backend {name}" in p.absent_backends[name]


def test_bench_target_times_the_candidate_in_the_same_table_and_csv(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc = main(["bench", "--target", f"{CANDIDATES / 'norms.py'}:HandLayerNorm", "--backend", "numpy",
               "--shape", "8x16", "--repeats", "1", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    backends = {r["backend"] for r in rows if not r["skipped"]}
    assert backends == {"numpy", "target:HandLayerNorm"}
    assert all(float(r["pct_copy"]) > 0 for r in rows if r["backend"] == "target:HandLayerNorm")
    assert "target:HandLayerNorm" in capsys.readouterr().out


def test_bench_target_refuses_a_channels_first_norm(tmp_path, capsys):
    """A NORMSPEC_CONTRACT with axes=channels beside the class: bench's call normalizes the trailing dims, so the
    target's rows only said skipped, exit 0 (red team C-7); it is a usage error that says why."""
    (tmp_path / "cf.py").write_text(
        f"import sys\nsys.path.insert(0, {str(CANDIDATES)!r})\n"
        "from library import LayerNorm2d  # noqa: E402\n"
        "from normspec.validate import Contract  # noqa: E402\n"
        "NORMSPEC_CONTRACT = Contract(axes='channels')\n")
    assert main(["bench", "--target", f"{tmp_path / 'cf.py'}:LayerNorm2d", "--backend", "numpy"]) == 2
    assert "cannot time a channels-first norm" in capsys.readouterr().err


def test_bench_target_usage_errors_exit_2(capsys):
    assert main(["bench", "--target", "no_such_module_xyz:Thing"]) == 2
    assert main(["bench", "--compile"]) == 2
    assert main(["bench", "--ctor", "normalized_shape=dim"]) == 2
    assert "qualify --target" in capsys.readouterr().err
    assert main(["bench", "--target", f"{CANDIDATES / 'library.py'}:TimmStyleRmsNorm", "--ctor", "bad"]) == 2
    assert "is not NAME=VALUE" in capsys.readouterr().err
    # a --norm that leaves the target's norm out: its row was only "skipped", exit 0 (outside red team C-9)
    assert main(["bench", "--target", "torch.nn:LayerNorm", "--norm", "batch_norm"]) == 2
    assert "implements layer_norm, and --norm batch_norm leaves it out" in capsys.readouterr().err


@pytest.mark.parametrize("name,extra", [
    ("DeclaredRmsNorm", []),  # NORMSPEC_CONTRACT beside the class, as validate reads it
    ("TimmStyleRmsNorm", ["--as", "rms_norm", "--ctor",
                          "normalized_shape=channels:int,eps=eps,elementwise_affine=affine"]),
])
def test_bench_target_honours_validates_contract(tmp_path, name, extra):
    """A class whose constructor is not torch.nn's is timed under its contract, as validate runs it (it was
    skipped with a TypeError about normalized_shape)."""
    pytest.importorskip("matplotlib")
    rc = main(["bench", "--target", f"{CANDIDATES / 'library.py'}:{name}", *extra, "--backend", "numpy",
               "--shape", "8x16", "--pass", "forward", "--repeats", "1", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    row = {r["backend"]: r for r in csv.DictReader((tmp_path / "bench.csv").open())}[f"target:{name}"]
    assert not row["skipped"] and float(row["median_s"]) > 0, row


COMPILE_ARGS = ["--compile", "--profile", "dev", "--property", "forward_matches_spec", "--dtype", "float32",
                "--quiet"]


@pytest.mark.slow
def test_validate_compile_accepts_a_correct_drop_in(tmp_path):
    out = tmp_path / "r.json"
    rc = main(["validate", f"{CANDIDATES / 'compiled.py'}:CompiledOKLayerNorm", *COMPILE_ARGS, "--json", str(out),
               "--report-dir", str(tmp_path)])
    data = json.loads(out.read_text())
    assert rc == 0 and data["accepted"] and data["compiled"]["accepted"]
    assert data["compile_differences"] == []


@pytest.mark.slow
def test_validate_compile_rejects_a_drop_in_wrong_only_when_compiled(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = main(["validate", f"{CANDIDATES / 'compiled.py'}:LNWrongWhenCompiled", *COMPILE_ARGS, "--json", str(out),
               "--report-dir", str(tmp_path)])
    data = json.loads(out.read_text())
    assert rc == 1
    assert data["accepted"] and not data["compiled"]["accepted"]  # eager passes, compiled does not
    assert data["compile_differences"] == [{"property": "forward_matches_spec", "eager": "passed",
                                            "compiled": "failed"}]
    assert "eager vs compiled differences" in capsys.readouterr().out
    # the compiled run's reproducer replays the candidate compiled (it once replayed it eagerly and said
    # "no longer reproduces" for every compiled-only failure)
    import subprocess
    import sys
    (repro,) = [p for p in tmp_path.rglob("repro_*forward_matches_spec*.py") if "COMPILED = 'dynamic'" in p.read_text()]
    proc = subprocess.run([sys.executable, str(repro)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "REPRODUCED" in proc.stdout, proc.stdout + proc.stderr


def test_inductor_absent_and_none_optional_inputs_share_one_graph():
    """weight=None and no weight are the same call: the backend compiles one graph for both, not two."""
    b = engine("torch:inductor")
    x = b.native(np.arange(12.0).reshape(3, 4), "float32")
    params = {"normalized_shape": (4,), "eps": 1e-5}
    kernel = b.kernels["rms_norm"].forward
    kernel({"x": x, "weight": None}, params)
    graphs = b.compile_log.get("rms_norm", [0, 0.0])[0]
    y = kernel({"x": x}, params)["y"]
    assert b.compile_log.get("rms_norm", [0, 0.0])[0] == graphs
    np.testing.assert_allclose(b.to_numpy(y), b.to_numpy(torch_rms(x)), rtol=1e-6)


def torch_rms(x):
    import torch

    return torch.nn.functional.rms_norm(x, (x.shape[-1],), eps=1e-5)


def test_inductor_weight_norm_entries_cover_only_their_cases():
    """The rank-1 dim=0 entry covers that case only: a rank-2 failure, or one on torch:cpu, stays a FAIL."""
    from normspec.expected import expected_failure

    where = "y[1]=-0.38, but should be -0.99 [torch:inductor float64 contiguous "
    rank1 = where + "weight_norm(x(2,), weight(2,); dim=0)]"
    rank2 = where + "weight_norm(x(2, 3), weight(2, 1); dim=0)]"
    assert expected_failure("forward_matches_spec", "weight_norm", "torch:inductor", rank1, "float64") is not None
    assert expected_failure("forward_matches_spec", "weight_norm", "torch:inductor", rank2, "float64") is None
    assert expected_failure("forward_matches_spec", "weight_norm", "torch:cpu", rank1, "float64") is None
    half = "backward raised RuntimeError: expected scalar type Float but found Half [torch:inductor weight_norm]"
    assert expected_failure("inputs_unmodified", "weight_norm", "torch:inductor", half, "float16") is not None
    assert expected_failure("inputs_unmodified", "weight_norm", "torch:inductor", half, "bfloat16") is None


def test_catalogue_lists_opt_in_engines_without_starting_them(monkeypatch):
    """The README's catalogue names each opt-in engine beside the norms it has natively, from the class alone, so
    it reads the same whether or not jax/onnxruntime are installed (their constructors are never called)."""
    from normspec.catalogue import catalogue_markdown, opt_in_engines
    from normspec.impls.jax_backend import JaxBackend
    from normspec.impls.onnxruntime_backend import OnnxRuntimeBackend

    def refuse(self):
        raise AssertionError("the catalogue started an opt-in engine")

    monkeypatch.setattr(JaxBackend, "__init__", refuse)
    monkeypatch.setattr(OnnxRuntimeBackend, "__init__", refuse)
    engines = opt_in_engines()
    assert "mvn" in engines["onnxruntime"] and "weight_norm" in engines["torch:inductor"]
    assert set(engines["jax"]) == {"layer_norm", "rms_norm", "group_norm", "instance_norm", "batch_norm"}
    row = {line.split("|")[1].strip(): line for line in catalogue_markdown().splitlines()[2:]}
    assert row["`mvn`"].rstrip(" |").endswith("onnxruntime") and row["`batch_renorm`"].endswith("|  |")


def test_inductor_layer_norm_bfloat16_entry_covers_only_its_case():
    from normspec.expected import expected_failure
    where = ("dx[0, 1]=np.float64(0.006591796875), but should be np.float64(-4.7e-12) ± 5e-05 "
             "[torch:inductor bfloat16 contiguous layer_norm(x(5, 2); normalized_shape=(2,), eps=1e-12)]")
    assert expected_failure("reach_backward_matches_spec", "layer_norm", "torch:inductor", where, "bfloat16")
    assert expected_failure("reach_backward_matches_spec", "layer_norm", "torch:inductor", where, "float32") is None
    assert expected_failure("reach_forward_matches_spec", "layer_norm", "torch:inductor",
                            where.replace("dx", "y"), "bfloat16") is None


def test_compiled_module_class_really_compiles_an_inherited_forward():
    """`class MyLayerNorm(nn.LayerNorm): pass` under --compile: nn.Module.compile alone traced no frame for a
    forward inherited from torch.nn (pytorch#150915), so the 'compiled' run was eager and agreed by construction."""
    import torch
    from torch._dynamo.utils import counters

    from normspec.validate import adapters

    class InheritsForward(torch.nn.LayerNorm):
        pass

    before = counters["stats"]["unique_graphs"]
    m = adapters.compiled(InheritsForward)(4)
    x = torch.randn(3, 4)
    torch.testing.assert_close(m(x), torch.nn.functional.layer_norm(x, (4,), m.weight, m.bias))
    assert counters["stats"]["unique_graphs"] > before, "no graph was compiled: the compiled run would be eager"
    assert isinstance(m, InheritsForward) and type(m).__name__ == "InheritsForward"


def test_compile_shapes_static_compiles_a_kernel_per_shape():
    """--compile-shapes static: dynamic=False, so each new shape is a new graph (the static kernels a model compiled
    with the default dynamic=None runs for its first shapes, which can round differently: red-team probe); the
    default stays dynamic, one graph for every size. Sizes >= 2: Dynamo specializes 0 and 1 either way."""
    import torch
    from torch._dynamo.utils import counters

    from normspec.validate import adapters

    def graphs_for(shapes: str) -> int:
        def double_norm(x):  # a fresh function: its own Dynamo cache
            return x / x.abs().sum()

        fn = adapters.compiled(double_norm, shapes)
        before = counters["stats"]["unique_graphs"]
        for n in (3, 5, 7):
            torch.testing.assert_close(fn(torch.ones(n)), torch.full((n,), 1.0 / n))
        return counters["stats"]["unique_graphs"] - before

    assert graphs_for("static") == 3
    assert graphs_for("dynamic") == 1
    assert adapters.compile_shapes(True) == "dynamic" and adapters.compile_shapes(False) is None


@pytest.mark.parametrize("command", [["validate", "torch.nn:LayerNorm"], ["bench", "--target", "torch.nn:LayerNorm"]])
def test_compile_shapes_without_compile_is_a_usage_error(command, capsys):
    from normspec.cli import main

    assert main([*command, "--compile-shapes", "static"]) == 2
    assert "--compile-shapes qualifies --compile" in capsys.readouterr().err


def test_inductor_group_norm_entries_cover_only_their_cases():
    from normspec.expected import expected_failure
    half = ("dx[0, 0, 2, 0]=np.float64(0.0141143798828125), but should be np.float64(0.0138936) ± 0.000204 "
            "[torch:inductor float16 contiguous group_norm(x(1, 6, 4, 4); num_groups=3, eps=1e-05)]")
    assert expected_failure("backward_matches_spec", "group_norm", "torch:inductor", half, "float16")
    assert expected_failure("backward_matches_spec", "group_norm", "torch:inductor", half, "float32") is None
    const = "y(constant set)[0]=np.float64(0.25146044218672614), but should be np.float64(0.2514604421867866) ± 0"
    # every dtype, as torch:cpu's entry: the float64-only entry let the re-run meet float32 (0.25146484375 for beta
    # 0.2514604330) with the same cause; another norm is not covered
    assert expected_failure("constant_group_gives_beta", "group_norm", "torch:inductor", const, "float64")
    assert expected_failure("constant_group_gives_beta", "group_norm", "torch:inductor", const, "float32")
    assert expected_failure("constant_group_gives_beta", "instance_norm", "torch:inductor", const, "float32") is None
    crash = "backward raised BackendCompilerFailed: backend='inductor' raised:\nZeroDivisionError: float division"
    assert expected_failure("empty_input_gives_empty_output", "group_norm", "torch:inductor", crash, "float64")
    assert expected_failure("empty_input_gives_empty_output", "layer_norm", "torch:inductor", crash, "float64") is None


def test_inductor_instance_norm_entries_cover_only_their_cases():
    from normspec.expected import expected_failure
    half = ("dx[2, 0, 0, 1]=np.float64(-0.052032470703125), but should be np.float64(-0.0513790) ± 0.000541 "
            "[torch:inductor float16 contiguous instance_norm(x(4, 1, 2, 3); training=False, eps=1e-05)]")
    assert expected_failure("backward_matches_spec", "instance_norm", "torch:inductor", half, "float16")
    assert expected_failure("backward_matches_spec", "instance_norm", "torch:inductor", half, "float64") is None
    empty = "running_mean after an empty batch[0]=np.float64(nan), but should be np.float64(0.5669) ± 0"
    assert expected_failure("empty_input_gives_empty_output", "instance_norm", "torch:inductor", empty, "float64")
    assert expected_failure("empty_input_gives_empty_output", "batch_norm", "torch:inductor", empty, "float64") is None


def test_inductor_batch_norm_entries_cover_only_the_eval_half_backward():
    from normspec.expected import expected_failure
    where = ("dx[2, 0, 1]=np.float64(0.0027065), but should be np.float64(0.0030976) ± 0.000112 [torch:inductor "
             "float16 contiguous batch_norm(x(3, 2, 2); training=False, eps=1e-05)] with dy channels_last")
    assert expected_failure("mixed_layouts_match_spec", "batch_norm", "torch:inductor", where, "float16")
    assert expected_failure("mixed_layouts_match_spec", "batch_norm", "torch:inductor", where, "float32") is None
    trained = where.replace("training=False", "training=True")
    assert expected_failure("mixed_layouts_match_spec", "batch_norm", "torch:inductor", trained, "float16") is None
