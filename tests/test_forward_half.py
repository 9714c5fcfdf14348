"""Forward halves of gradient properties on forward-only engines (`ctx.run(..., grads=OPTIONAL)`).

A forward-only engine (ONNX Runtime) has no gradients. A property whose gradient half is optional
still checks its outputs there and its verdict says "forward half only"; a property that is only about
gradients is skipped, saying "forward-only". Shown here on a forward-only NumPy backend with seeded
forward bugs (caught), the reference kernels (pass, marked) and a seeded backward bug (invisible to
the forward half, and the verdict says that only the forward half was checked).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from bugs import buggy_backend

import normspec.matrix as matrix
from normspec.cli import main
from normspec.impls.numpy_backend import NumpyBackend
from normspec.library.case import Case
from normspec.properties import PROPERTIES, run_property
from normspec.properties.core import OPTIONAL, Context
from normspec.registry import norms
from normspec.report import matrix_json, summary_rows, to_json, to_junit


class ForwardOnlyNumpy(NumpyBackend):
    """The NumPy backend without gradients, as a forward-only engine declares itself."""

    name = "numpy-forward-only"
    differentiates = False

    def gradients(self, norm, inputs, params, dy, wrt):
        raise AssertionError("the harness asked a forward-only backend for gradients")


def forward_only(backend: NumpyBackend | None = None) -> ForwardOnlyNumpy:
    """A forward-only copy of `backend` (its kernels, seeded bugs included)."""
    fo = ForwardOnlyNumpy()
    if backend is not None:
        fo.__dict__.update(backend.__dict__)
        fo.name = f"{backend.name}-forward-only"
    return fo


def _per_channel_group_norm():
    """GroupNorm that ignores num_groups and normalizes each channel alone (a grouped view built
    with G = C): right for G = C, wrong for every coarser grouping."""
    reference = NumpyBackend().kernels["group_norm"]

    def forward(inputs, params):
        return reference.forward(inputs, {**params, "num_groups": inputs["x"].shape[1]})

    backend = NumpyBackend()
    backend.kernels = {**backend.kernels, "group_norm": type(reference)(forward=forward,
                                                                       backward=reference.backward)}
    backend.name = "numpy+group_norm_per_channel"
    return backend


def judge(prop: str, norm: str, backend, profile: str = "ci"):
    """The verdict in the derandomized ci profile: the same draws on every run."""
    return run_property(PROPERTIES[prop], norms()[norm], backend, profile)


# ---------------------------------------------------------------- seeded forward bugs are caught

@pytest.mark.parametrize("prop,norm,bug", [
    ("scale_invariance", "layer_norm", "eps_outside_sqrt"),           # y depends on the scale
    ("layout_consistency", "batch_norm", "ignores_strides"),          # y depends on the memory layout
    ("deterministic", "batch_norm", "nondeterministic"),
    ("empty_input_gives_empty_output", "batch_norm", "nan_running_stats_on_empty_batch"),
])
def test_forward_half_catches_a_wrong_forward_on_a_forward_only_backend(prop, norm, bug):
    v = judge(prop, norm, forward_only(buggy_backend(norm, bug)))
    assert v.status == "failed", v.reason
    assert v.forward_half and v.draws


def test_identity_forward_half_catches_a_wrong_group_norm():
    """GroupNorm(G = 1) == LayerNorm: a GroupNorm that normalizes per channel fails on y alone."""
    v = judge("group_norm_one_group_is_layer_norm", "group_norm", forward_only(_per_channel_group_norm()))
    assert v.status == "failed" and v.message.startswith("y"), v.message
    assert v.forward_half


# ---------------------------------------------------------------- right forwards pass, marked

@pytest.mark.parametrize("prop,norm", [
    ("scale_invariance", "layer_norm"),
    ("layout_consistency", "batch_norm"),
    ("deterministic", "batch_norm"),
    ("empty_input_gives_empty_output", "batch_norm"),
    ("group_norm_one_group_is_layer_norm", "group_norm"),
    ("rms_norm_is_layer_norm_on_zero_mean_rows", "rms_norm"),
    ("mvn_scale_invariance", "mvn"),
    ("exact_scale_invariance_with_state", "batch_renorm"),
    ("renorm_without_corrections_is_batch_norm", "batch_renorm"),
    ("weight_norm_scale_invariance", "weight_norm"),
    ("cwn_affine_invariance", "centered_weight_norm"),
    ("sync_equals_unsplit_norm", "sync_batch_norm"),
    ("divisive_special_cases", "divisive_norm"),
])
def test_right_forward_passes_saying_forward_half_only(prop, norm):
    v = judge(prop, norm, forward_only())
    assert v.status == "passed", v.message
    assert v.forward_half and v.reason.startswith("forward half only:") and "forward-only" in v.reason


def test_a_backward_bug_is_invisible_to_the_forward_half_and_the_verdict_says_so():
    """mixed_layouts_match_spec fails a backward that reads dy in x's layout on the differentiating backend;
    on its forward-only copy the same property passes, marked as a forward-half verdict, never a full pass."""
    bug = buggy_backend("batch_norm", "backward_reads_dy_in_x_layout")
    full = judge("mixed_layouts_match_spec", "batch_norm", bug)
    assert full.status == "failed" and full.message.startswith("dx") and not full.forward_half
    half = judge("mixed_layouts_match_spec", "batch_norm", forward_only(bug))
    assert half.status == "passed" and half.forward_half


# ---------------------------------------------------------------- gradient-only properties still skip

@pytest.mark.parametrize("prop,norm", [
    ("backward_matches_spec", "layer_norm"),
    ("gradient_orthogonality", "batch_norm"),
    ("weight_norm_gradient_orthogonal", "weight_norm"),
])
def test_properties_about_gradients_skip_saying_forward_only(prop, norm):
    v = judge(prop, norm, forward_only())
    assert v.status == "skipped" and "forward-only" in v.reason and not v.forward_half


def test_differentiating_backend_is_unchanged():
    """On a backend with gradients an OPTIONAL run returns them, and the verdict is a full one."""
    v = judge("scale_invariance", "layer_norm", NumpyBackend())
    assert v.status == "passed" and not v.forward_half and v.reason == ""
    ctx = Context(norms()["layer_norm"], NumpyBackend(), lambda strategy, label: 7)
    run = ctx.run(_case(), "float64", grads=OPTIONAL)
    assert run.dy is not None and "x" in run.grads and not ctx.forward_half
    fo_ctx = Context(norms()["layer_norm"], forward_only(), lambda strategy, label: 7)
    run = fo_ctx.run(_case(), "float64", grads=OPTIONAL)
    assert run.dy is None and run.grads == {} and fo_ctx.forward_half and "y" in run.outputs


def _case() -> Case:
    x = np.random.default_rng(0).standard_normal((3, 4))
    return Case("layer_norm", {"x": x}, {"normalized_shape": (4,), "eps": 1e-5})


def test_grads_argument_is_checked():
    ctx = Context(norms()["layer_norm"], NumpyBackend(), lambda strategy, label: 7)
    with pytest.raises(ValueError, match="grads must be"):
        ctx.run(_case(), "float64", grads="maybe")


# ---------------------------------------------------------------- reports never show it as a full pass

def test_reports_mark_forward_half_passes(tmp_path):
    fo = forward_only()
    verdicts = [judge("scale_invariance", "layer_norm", fo), judge("forward_matches_spec", "layer_norm", fo),
                judge("backward_matches_spec", "layer_norm", fo)]
    assert [v.forward_half for v in verdicts] == [True, False, False]
    cells = matrix_json(verdicts)
    assert cells["scale_invariance"]["layer_norm/numpy-forward-only"] == "passed (forward half only)"
    assert cells["forward_matches_spec"]["layer_norm/numpy-forward-only"] == "passed"
    (_, _, counts), = summary_rows(verdicts)
    assert counts["passed"] == 1 and counts["fwd_half"] == 1 and counts["skipped"] == 1
    data = json.loads(to_json(verdicts, 1.0, "dev", {}))
    assert data["forward_half_only"] == 1 and data["summary"]["passed"] == 2
    first = data["results"][0]
    assert first["forward_half"] and first["reason"].startswith("forward half only")
    assert "forward half only" in to_junit(verdicts, 1.0)


def test_check_command_says_forward_half_only(tmp_path, monkeypatch, capsys):
    fo = forward_only()
    monkeypatch.setattr(matrix, "available_backends", lambda names=None: ({fo.name: fo}, {}))
    out = tmp_path / "r.json"
    code = main(["check", "--norm", "layer_norm", "--property", "scale_invariance,backward_matches_spec",
                 "--profile", "dev", "--quiet", "--matrix", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pass*" in printed and "fwd half" in printed
    assert "passed on the forward half only" in printed and "1 passed (1 on the forward half only)" in printed
    report = json.loads(out.read_text())
    assert report["matrix"]["scale_invariance"]["layer_norm/numpy-forward-only"] == "passed (forward half only)"
    assert report["matrix"]["backward_matches_spec"]["layer_norm/numpy-forward-only"] == "skipped"


def test_forward_only_numpy_never_computes_gradients():
    fo = forward_only()
    with pytest.raises(AssertionError):
        fo.gradients("layer_norm", {}, {}, np.zeros(1), ("x",))
