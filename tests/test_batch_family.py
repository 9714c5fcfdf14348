"""Batch Renorm, Lp batch norm, ZCA batch norm, recurrent batch norm: spec backward against finite
differences, the identities in float64, and every family property accepting the reference
backends and rejecting a realistic seeded bug."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import numeric_grad as finite_difference

from normspec.impls.base import Kernel
from normspec.impls.numpy_backend import NumpyBackend
from normspec.impls.torch_backend import TorchCPUBackend
from normspec.properties import PROPERTIES, run_property
from normspec.registry import get_norm
from normspec.spec.batch_norm import batch_norm
from normspec.spec.batch_renorm import batch_renorm, batch_renorm_backward
from normspec.spec.decorrelated_batch_norm import decorrelated_batch_norm, decorrelated_batch_norm_backward
from normspec.spec.lp_batch_norm import gaussian_constant, lp_batch_norm, lp_batch_norm_backward
from normspec.spec.recurrent_batch_norm import recurrent_batch_norm, recurrent_batch_norm_backward

RNG = np.random.default_rng(7)



# ---------------------------------------------------------------- spec

X = RNG.standard_normal((5, 4, 3))
DY = RNG.standard_normal(X.shape)
W = RNG.uniform(0.5, 2.0, 4)


@pytest.mark.parametrize("group_size", [1, 2, 4])
@pytest.mark.parametrize("training", [True, False])
def test_zca_backward_matches_finite_differences(group_size, training):
    rm = RNG.standard_normal(4)
    rw = np.stack([np.eye(group_size) * 1.3 + 0.1] * (4 // group_size))

    def f(x):
        return decorrelated_batch_norm(x, W, None, rm, rw, group_size=group_size, training=training, eps=1e-3).y

    g = decorrelated_batch_norm_backward(DY, X, W, rm, rw, group_size=group_size, training=training, eps=1e-3)
    np.testing.assert_allclose(g["x"], finite_difference(f, X, DY), atol=1e-7)


def test_zca_backward_is_finite_for_repeated_eigenvalues():
    x = RNG.standard_normal((2, 4))  # m = 2 < group size 4: eigenvalue 0 three times
    dy = RNG.standard_normal(x.shape)
    g = decorrelated_batch_norm_backward(dy, x, group_size=4, eps=1e-2)["x"]

    def f(z):
        return decorrelated_batch_norm(z, group_size=4, eps=1e-2).y

    assert np.isfinite(g).all()
    np.testing.assert_allclose(g, finite_difference(f, x, dy), atol=1e-6)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("placement", ["outside", "inside"])
@pytest.mark.parametrize("k", [1, 3])
def test_lp_backward_matches_finite_differences(p, placement, k):
    def f(x):
        return lp_batch_norm(x, W, p=p, k=k, eps=1e-3, eps_placement=placement).y

    g = lp_batch_norm_backward(DY, X, W, p=p, k=k, eps=1e-3, eps_placement=placement)["x"]
    np.testing.assert_allclose(g, finite_difference(f, X, DY), atol=1e-7)


def test_lp_constants():
    assert gaussian_constant(1.0, 10) == pytest.approx(math.sqrt(math.pi / 2), rel=1e-14)
    assert gaussian_constant(2.0, 10) == pytest.approx(1.0, rel=1e-14)
    z = RNG.standard_normal(200_000)
    for p in (1.0, 3.0):  # C_p (mean |z|^p)^(1/p) estimates sigma = 1 for Gaussian data
        assert gaussian_constant(p, z.size) * np.mean(np.abs(z) ** p) ** (1 / p) == pytest.approx(1.0, abs=0.01)


def test_renorm_backward_is_batch_norm_backward_with_frozen_corrections():
    rm, rs = RNG.standard_normal(4), RNG.uniform(0.5, 2.0, 4)
    r = batch_renorm(X, W, None, rm, rs, rmax=1.5, dmax=0.5)
    shape = (1, 4, 1)

    def frozen(x):  # r and d held at their values: the stop-gradient
        mu, var = x.mean(axis=(0, 2), keepdims=True), x.var(axis=(0, 2), keepdims=True)
        return W.reshape(shape) * ((x - mu) / np.sqrt(var + 1e-5) * r.r.reshape(shape) + r.d.reshape(shape))

    g = batch_renorm_backward(DY, X, W, rm, rs, rmax=1.5, dmax=0.5)["x"]
    np.testing.assert_allclose(g, finite_difference(frozen, X, DY), atol=1e-7)
    assert (r.r != 1).any() and (r.d != 0).any()


def test_recurrent_backward_matches_finite_differences():
    x, dy, w = RNG.standard_normal((4, 3, 2)), RNG.standard_normal((4, 3, 2)), RNG.uniform(0.5, 2, 2)
    for statistics in ("frame", "sequence"):
        def f(z):
            return recurrent_batch_norm(z, w, statistics=statistics).y

        g = recurrent_batch_norm_backward(dy, x, w, statistics=statistics)["x"]
        np.testing.assert_allclose(g, finite_difference(f, x, dy), atol=1e-7)


def test_identities_in_float64():
    rm, rs = RNG.standard_normal(4), RNG.uniform(0.5, 2.0, 4)
    assert np.array_equal(batch_renorm(X, W, None, rm, rs, rmax=1.0, dmax=0.0).y, batch_norm(X, W).y)
    np.testing.assert_allclose(lp_batch_norm(X, p=2.0, constant=1.0, eps_placement="inside").y, batch_norm(X).y,
                               atol=1e-14)
    np.testing.assert_allclose(decorrelated_batch_norm(X, group_size=1).y, batch_norm(X).y, atol=1e-14)
    seq = RNG.standard_normal((3, 4, 2))
    np.testing.assert_allclose(recurrent_batch_norm(seq, statistics="sequence").y.reshape(-1, 2),
                               batch_norm(seq.reshape(-1, 2)).y, atol=1e-14)
    # steps past T_max reuse the last population statistics
    rmean, rvar = RNG.standard_normal((2, 2)), RNG.uniform(0.5, 2, (2, 2))
    y = recurrent_batch_norm(seq, None, None, rmean, rvar, training=False).y
    np.testing.assert_allclose(y[:, 3], (seq[:, 3] - rmean[1]) / np.sqrt(rvar[1] + 1e-5))


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="group_size"):
        decorrelated_batch_norm(X, group_size=3)
    with pytest.raises(ValueError, match="running_std"):
        batch_renorm(X)
    with pytest.raises(ValueError, match="T_max"):
        recurrent_batch_norm(np.zeros((2, 3, 2)), None, None, np.zeros((2, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match="p >= 1"):
        lp_batch_norm(X, p=0.5)


# ---------------------------------------------------------------- seeded bugs (torch, autograd gives gradients)

def _acc(x):
    return x.to(torch.float32) if x.dtype in (torch.float16, torch.bfloat16) else x


def _wrap(base, change):
    """A kernel whose forward is `base` applied to (inputs, params) rewritten by `change`."""
    return lambda inputs, params: base(*change(dict(inputs), dict(params)))


def renorm_unbiased(inputs, params):
    """Batch Renorm whose sigma_B uses the unbiased batch variance (a realistic torch.var default)."""
    x = inputs["x"]
    xa, dims = _acc(x), (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = xa.mean(dims, keepdim=True)
    sigma = torch.sqrt(xa.var(dims, keepdim=True, unbiased=True) + params.get("eps", 1e-5))
    rm, rs = _acc(inputs["running_mean"]).reshape(shape), _acc(inputs["running_std"]).reshape(shape)
    r = (sigma / rs).clamp(1 / params.get("rmax", 3.0), params.get("rmax", 3.0)).detach()
    d = ((mean - rm) / rs).clamp(-params.get("dmax", 5.0), params.get("dmax", 5.0)).detach()
    y = (xa - mean) / sigma * r + d if params.get("training", True) else (xa - rm) / rs
    if inputs.get("weight") is not None:
        y = y * _acc(inputs["weight"]).reshape(shape) + _acc(inputs["bias"]).reshape(shape)
    return {"y": y.to(x.dtype), "running_mean": inputs["running_mean"], "running_std": inputs["running_std"]}


def renorm_eps_outside(inputs, params):
    """Batch Renorm with sigma_B = sqrt(var) + eps (eps outside the root)."""
    from normspec.impls.torch_kernels.batch_renorm import forward
    x = inputs["x"]
    dims = (0,) + tuple(range(2, x.ndim))
    var = _acc(x).var(dims, unbiased=False)
    eps = params.get("eps", 1e-5)
    shifted = (torch.sqrt(var) + eps) ** 2 - var  # the eps that puts it outside
    return forward(inputs, {**params, "eps": shifted})


def zca(kind):
    def forward(inputs, params):
        x, gs = inputs["x"], params["group_size"]
        c = x.shape[1]
        flat = _acc(x).movedim(1, -1).reshape(-1, c)
        xg = flat.reshape(flat.shape[0], c // gs, gs).transpose(0, 1)
        xc = xg - xg.mean(1, keepdim=True)
        m = xg.shape[1] - (1 if kind == "unbiased" else 0)
        lam, v = torch.linalg.eigh(xc.transpose(1, 2) @ xc / m)
        lam = lam.clamp_min(0) + params.get("eps", 1e-5)
        if kind == "pca":
            phi = v / lam.sqrt().unsqueeze(1)
        elif kind == "inverse":
            phi = (v / lam.unsqueeze(1)) @ v.transpose(1, 2)
        else:
            phi = (v / lam.sqrt().unsqueeze(1)) @ v.transpose(1, 2)
        y = (xc @ phi).transpose(0, 1).reshape(flat.shape)
        y = y.reshape((x.shape[0],) + tuple(x.shape[2:]) + (c,)).movedim(-1, 1)
        shape = (1, c) + (1,) * (x.ndim - 2)
        if inputs.get("weight") is not None:
            y = y * _acc(inputs["weight"]).reshape(shape) + _acc(inputs["bias"]).reshape(shape)
        return {"y": y.to(x.dtype)}
    return forward


def recurrent_unbiased(inputs, params):
    """Frame-wise recurrent BN normalizing by the unbiased variance."""
    from normspec.impls.torch_kernels.recurrent_batch_norm import forward
    if params.get("statistics", "frame") == "frame":
        n = inputs["x"].shape[0]
    else:
        n = inputs["x"].shape[0] * inputs["x"].shape[1]
    x = inputs["x"] * math.sqrt(n / (n - 1)) if n > 1 else inputs["x"]
    out = forward({**inputs, "x": x}, {**params, "eps": params.get("eps", 1e-5) * n / max(n - 1, 1)})
    return out


def past_t_max_uses_first_step(inputs, params):
    from normspec.impls.torch_kernels.recurrent_batch_norm import forward
    rm = inputs.get("running_mean")
    t = inputs["x"].shape[1]
    if not params.get("training", True) and rm is not None and params.get("statistics") == "frame" and t > rm.shape[0]:
        rows = torch.tensor([i if i < rm.shape[0] else 0 for i in range(t)])
        inputs = {**inputs, "running_mean": rm[rows], "running_var": inputs["running_var"][rows]}
    return forward(inputs, params)


def _flip(placement):
    return "inside" if placement == "outside" else "outside"


def _lp(change):
    from normspec.impls.torch_kernels.lp_batch_norm import forward
    return _wrap(forward, change)


def _recurrent(change):
    from normspec.impls.torch_kernels.recurrent_batch_norm import forward
    return _wrap(forward, change)


BUGS = {
    ("renorm_without_corrections_is_batch_norm", "batch_renorm"): renorm_unbiased,
    ("exact_scale_invariance_with_state", "batch_renorm"): renorm_eps_outside,
    ("l2_scale_with_eps_inside_is_batch_norm", "lp_batch_norm"):
        _lp(lambda i, p: (i, {**p, "eps_placement": "outside"})),
    ("exact_scale_invariance_with_state", "lp_batch_norm"):
        _lp(lambda i, p: (i, {**p, "eps_placement": "inside"})),
    ("train_equals_eval_on_own_statistics", "lp_batch_norm"):
        _lp(lambda i, p: (i, p if p.get("training", True)
                          else {**p, "eps_placement": _flip(p.get("eps_placement", "outside"))})),
    ("zca_group_size_one_is_batch_norm", "decorrelated_batch_norm"): zca("unbiased"),
    ("whitened_covariance", "decorrelated_batch_norm"): zca("inverse"),
    ("zca_rotation_equivariance", "decorrelated_batch_norm"): zca("pca"),
    ("frame_wise_single_step_is_batch_norm", "recurrent_batch_norm"): recurrent_unbiased,
    ("sequence_wise_is_batch_norm_on_flattened_steps", "recurrent_batch_norm"):
        _recurrent(lambda i, p: ({**i, "running_mean": None, "running_var": None}, {**p, "statistics": "frame"})),
    ("population_statistics_match_spec", "recurrent_batch_norm"): past_t_max_uses_first_step,
    ("train_equals_eval_on_own_statistics", "recurrent_batch_norm"):
        _recurrent(lambda i, p: (i, p if p.get("training", True) else {**p, "eps": p.get("eps", 1e-5) * 4})),
}


class SeededBug(TorchCPUBackend):
    def __init__(self, norm, forward):
        super().__init__()
        self.kernels = {**self.kernels, norm: Kernel(forward=forward)}
        self.name = f"torch:cpu+bug({norm})"


FAMILY = sorted({prop for prop, _ in BUGS})


def test_every_family_property_has_a_seeded_bug():
    mine = {name for name, p in PROPERTIES.items() if p.group == "batch_family"}
    assert mine == set(FAMILY)


@pytest.mark.parametrize("prop_name,norm", sorted(BUGS))
def test_property_rejects_seeded_bug(prop_name, norm):
    verdict = run_property(PROPERTIES[prop_name], get_norm(norm), SeededBug(norm, BUGS[prop_name, norm]), "ci")
    assert verdict.status == "failed", f"{prop_name} did not catch the bug: {verdict.status} {verdict.reason}"


@pytest.mark.parametrize("backend", [NumpyBackend, TorchCPUBackend], ids=["numpy", "torch:cpu"])
@pytest.mark.parametrize("prop_name,norm", sorted(BUGS))
def test_property_accepts_reference_backends(prop_name, norm, backend):
    from normspec.expected import expected_failure
    b = backend()
    b.name = "numpy" if backend is NumpyBackend else "torch:cpu"
    verdict = run_property(PROPERTIES[prop_name], get_norm(norm), b, "dev")
    if verdict.status == "failed" and expected_failure(prop_name, norm, b.name, verdict.message):
        pytest.xfail(verdict.message)
    assert verdict.status in ("passed", "skipped"), verdict.message


# ---------------------------------------------------------------- the error models are tight enough to catch bugs

def renorm_without_stop_gradient(inputs, params):
    """Batch Renorm whose r and d are not detached: the forward is right, the gradient is not."""
    import normspec.impls.torch_kernels.batch_renorm as brn
    original = torch.Tensor.detach
    try:
        torch.Tensor.detach = lambda t: t  # the classic bug: forgetting the stop-gradient
        return brn.forward(inputs, params)
    finally:
        torch.Tensor.detach = original


GENERIC_BUGS = {
    ("backward_matches_spec", "batch_renorm"): renorm_without_stop_gradient,
    ("forward_matches_spec", "lp_batch_norm"):  # sqrt(2/pi) where sqrt(pi/2) belongs
        _lp(lambda i, p: (i, {**p, "constant": math.sqrt(2 / math.pi)}
                          if p.get("p") == 1.0 and "constant" not in p else p)),
    ("forward_matches_spec", "decorrelated_batch_norm"): zca("unbiased"),
    ("backward_matches_spec", "decorrelated_batch_norm"): zca("pca"),
    ("forward_matches_spec", "recurrent_batch_norm"):
        _recurrent(lambda i, p: (i, {**p, "statistics": "sequence" if p.get("statistics") == "frame" else "frame"})),
}


@pytest.mark.parametrize("prop_name,norm", sorted(GENERIC_BUGS))
def test_error_model_catches_seeded_bug(prop_name, norm):
    verdict = run_property(PROPERTIES[prop_name], get_norm(norm), SeededBug(norm, GENERIC_BUGS[prop_name, norm]), "ci")
    assert verdict.status == "failed", f"{prop_name} did not catch the bug on {norm}: {verdict.status}"


def test_zca_spec_is_rotation_equivariant_and_whitens():
    x = RNG.standard_normal((9, 6))
    q = np.linalg.qr(RNG.standard_normal((3, 3)))[0]
    rot = np.kron(np.eye(2), q)
    y0 = decorrelated_batch_norm(x, group_size=3, eps=1e-3).y
    np.testing.assert_allclose(decorrelated_batch_norm(x @ rot.T, group_size=3, eps=1e-3).y, y0 @ rot.T, atol=1e-12)


def test_numpy_whitening_backward_forms_gamma_dy_in_float32():
    """Regression: a float16 gamma * dy in the NumPy ZCA backward broke the model's bound (1.27x);
    the recorded example passes now, and a kernel that rounds gamma * dy to float16 fails it."""
    from regressions.decorrelated_half_gamma_dy import draws

    import normspec.impls.numpy_kernels.decorrelated_batch_norm as zca
    from normspec.impls.numpy_backend import NumpyBackend
    from normspec.properties import PropertyFailure, replay

    record = get_norm("decorrelated_batch_norm")
    replay("backward_matches_spec", record, NumpyBackend(), draws)

    def half_gamma_dy(inputs, params, dy):
        shape = (1, dy.shape[1]) + (1,) * (dy.ndim - 2)
        rounded = (dy * inputs["weight"].astype(dy.dtype).reshape(shape)).astype(np.float32)
        return zca.backward({**inputs, "weight": None}, params, rounded) | {
            k: v for k, v in zca.backward(inputs, params, dy).items() if k != "x"}

    backend = NumpyBackend()
    backend.kernels = {**backend.kernels,
                       "decorrelated_batch_norm": Kernel(forward=zca.forward, backward=half_gamma_dy)}
    with pytest.raises(PropertyFailure, match="dx"):
        replay("backward_matches_spec", record, backend, draws)
