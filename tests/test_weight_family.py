"""Weight Norm, Centered Weight Norm, Spectral Norm and Norm-Prop: the spec's closed-form
backwards against finite differences, and every property of properties/weight_family.py (plus
the catalogue's 'weight_norm with dim other than 0 or None' bug) rejecting a seeded bug while
accepting the numpy and torch:cpu backends."""
from __future__ import annotations

import math

import numpy as np
import pytest

from normspec.expected import expected_failure
from normspec.impls.base import Kernel, available_backends
from normspec.impls.numpy_backend import NUMPY_KERNELS, NumpyBackend
from normspec.properties import PROPERTIES, run_property
from normspec.registry import get_norm
from normspec.spec.centered_weight_norm import centered_weight_norm, centered_weight_norm_backward
from normspec.spec.norm_prop import norm_prop, norm_prop_backward
from normspec.spec.spectral_norm import spectral_norm, spectral_norm_backward
from normspec.spec.weight_norm import g_shape, weight_norm, weight_norm_backward

# ---------------------------------------------------------------- spec backwards vs finite differences


def numeric_grad(f, a, h=1e-6):
    """Central differences of the scalar f at a (float64)."""
    a = np.array(a, dtype=np.float64)
    grad = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        plus, minus = a.copy(), a.copy()
        plus[i] += h
        minus[i] -= h
        grad[i] = (f(plus) - f(minus)) / (2 * h)
    return grad


def check_fd(forward, backward, arrays, dy, roles):
    analytic = backward(dy, **arrays)
    for role in roles:
        def loss(a, role=role):
            return float((forward(**{**arrays, role: a}) * dy).sum())
        np.testing.assert_allclose(analytic[role], numeric_grad(loss, arrays[role]), rtol=1e-6, atol=1e-8,
                                   err_msg=f"d{role}")


@pytest.mark.parametrize("shape,dim", [((5,), 0), ((3, 4), 0), ((3, 4), 1), ((2, 3, 4), -2), ((2, 3, 2, 2), None),
                                       ((2, 3, 2, 2), 3)])
def test_weight_norm_backward_matches_finite_differences(shape, dim):
    rng = np.random.default_rng(0)
    v, g, dy = rng.standard_normal(shape), rng.uniform(0.5, 2, g_shape(shape, dim)), rng.standard_normal(shape)
    check_fd(lambda x, weight: weight_norm(x, weight, dim=dim),
             lambda dy, x, weight: {"x": weight_norm_backward(dy, x, weight, dim=dim)["x"],
                                    "weight": weight_norm_backward(dy, x, weight, dim=dim)["weight"]},
             {"x": v, "weight": g}, dy, ("x", "weight"))


@pytest.mark.parametrize("dim,eps", [(0, 0.0), (1, 1e-2), (None, 0.0), (-1, 0.0)])
def test_centered_weight_norm_backward_matches_finite_differences(dim, eps):
    rng = np.random.default_rng(1)
    v = rng.standard_normal((3, 4, 2)) + 2.0
    g, dy = rng.uniform(0.5, 2, g_shape(v.shape, dim)), rng.standard_normal(v.shape)
    check_fd(lambda x, weight: centered_weight_norm(x, weight, dim=dim, eps=eps),
             lambda dy, x, weight: centered_weight_norm_backward(dy, x, weight, dim=dim, eps=eps),
             {"x": v, "weight": g}, dy, ("x", "weight"))


@pytest.mark.parametrize("training,n,dim", [(True, 1, 0), (True, 3, 1), (False, 1, 0), (True, 2, -1)])
def test_spectral_norm_backward_matches_finite_differences(training, n, dim):
    """u, v are held constant (PyTorch computes them without gradient): the finite difference
    moves W with the post-iteration state fixed, which is what the closed form differentiates."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 2, 2))
    rows = w.shape[dim]
    u0, v0 = rng.standard_normal(rows), rng.standard_normal(w.size // rows)
    r = spectral_norm(w, u0, v0, dim=dim, n_power_iterations=n, training=training)
    dy = rng.standard_normal(w.shape)
    fixed = lambda x: spectral_norm(x, r.u, r.v, dim=dim, training=False).y  # noqa: E731
    analytic = spectral_norm_backward(dy, w, u0, v0, dim=dim, n_power_iterations=n, training=training)["x"]
    np.testing.assert_allclose(analytic, numeric_grad(lambda x: float((fixed(x) * dy).sum()), w), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("activation", ["relu", "identity"])
def test_norm_prop_backward_matches_finite_differences(activation):
    rng = np.random.default_rng(3)
    arrays = {"x": rng.standard_normal((5, 4)), "weight": rng.standard_normal((3, 4)),
              "gamma": rng.uniform(0.5, 2, 3), "beta": rng.normal(size=3)}
    dy = rng.standard_normal((5, 3))

    def fwd(x, weight, gamma, beta):
        return norm_prop(x, weight, gamma, beta, activation=activation)

    def bwd(dy, x, weight, gamma, beta):
        grads = norm_prop_backward(dy, x, weight, gamma, beta, activation=activation)
        return {**grads, "beta": grads["bias"]}

    check_fd(fwd, bwd, arrays, dy, ("x", "weight", "gamma", "beta"))


def test_spectral_norm_converged_sigma_is_top_singular_value():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((4, 6))
    r = spectral_norm(w, rng.standard_normal(4), rng.standard_normal(6), n_power_iterations=500)
    assert math.isclose(r.sigma, np.linalg.svd(w, compute_uv=False)[0], rel_tol=1e-12)


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="dim 2 is out of range"):
        weight_norm(np.ones((2, 2)), np.ones((2, 1)), dim=2)
    with pytest.raises(ValueError, match="g has shape"):
        weight_norm(np.ones((2, 3)), np.ones(3), dim=0)
    with pytest.raises(ValueError, match="does not fit the weight matrix"):
        spectral_norm(np.ones((2, 3)), np.ones(3), np.ones(2))
    with pytest.raises(ValueError, match="activation must be one of"):
        norm_prop(np.ones((1, 2)), np.ones((2, 2)), activation="tanh")


# ---------------------------------------------------------------- seeded bugs


def bug_backend(name: str, norm: str, forward=None, backward=None) -> NumpyBackend:
    """The numpy backend with `norm`'s kernel replaced by a buggy one."""
    base = NumpyBackend()
    original = NUMPY_KERNELS[norm]
    backend = NumpyBackend()
    backend.kernels = {**base.kernels, norm: Kernel(forward=forward or original.forward,
                                                      backward=backward or original.backward)}
    backend.name = f"numpy+{name}"
    return backend


def _wn_dim_as_zero(inputs, params):
    """weight_norm with dim other than 0 or None (the catalogue's bug): the norm is always taken
    over every dim except 0, and g is broadcast as given."""
    v, g = inputs["x"], inputs["weight"]
    if params.get("dim", 0) is None:
        return NUMPY_KERNELS["weight_norm"].forward(inputs, params)
    norm = np.sqrt((v.astype(np.float64) ** 2).sum(axis=tuple(range(1, v.ndim)), keepdims=True))
    return {"y": (g * (v / norm)).astype(v.dtype)}


def _wn_eps_in_norm(inputs, params):
    v, g = inputs["x"], inputs["weight"]
    axes = tuple(a for a in range(v.ndim) if params.get("dim", 0) is not None and a != params["dim"] % v.ndim) \
        if params.get("dim", 0) is not None else tuple(range(v.ndim))
    norm = np.sqrt((v.astype(np.float64) ** 2).sum(axis=axes, keepdims=True)) + 1e-3
    return {"y": (g.reshape(norm.shape) * v / norm).astype(v.dtype)}


def _wn_norm_as_constant(inputs, params, dy):
    grads = NUMPY_KERNELS["weight_norm"].backward(inputs, params, dy)
    v = inputs["x"]
    if params.get("dim", 0) is None:
        axes = tuple(range(v.ndim))
    else:
        axes = tuple(a for a in range(v.ndim) if a != params["dim"] % v.ndim)
    norm = np.sqrt((v.astype(np.float64) ** 2).sum(axis=axes, keepdims=True))
    grads["x"] = (inputs["weight"].reshape(norm.shape) / norm * dy).astype(v.dtype)
    return grads


def _cwn_axes(v, params):
    dim = params.get("dim", 0)
    return tuple(range(v.ndim)) if dim is None else tuple(a for a in range(v.ndim) if a != dim % v.ndim)


def _cwn_gain(inputs, params, shape):
    g = inputs.get("weight")
    return np.full(shape, params.get("scale", 1.0)) if g is None else g.astype(np.float64).reshape(shape)


def _cwn_uncentred(inputs, params):
    v = inputs["x"].astype(np.float64)
    axes = _cwn_axes(v, params)
    r = np.sqrt((v * v).sum(axis=axes, keepdims=True))
    return {"y": (_cwn_gain(inputs, params, r.shape) * v / (r + params.get("eps", 0.0))).astype(inputs["x"].dtype)}


def _cwn_one_pass(inputs, params):
    """||v - mean||^2 as sum v^2 - m mean^2, in the input's dtype (float32 for float16)."""
    acc = np.float32 if inputs["x"].dtype == np.float16 else inputs["x"].dtype
    v = inputs["x"].astype(acc)
    axes = _cwn_axes(v, params)
    m = v.size // np.prod([1] + [v.shape[a] for a in range(v.ndim) if a not in axes])
    mean = v.mean(axis=axes, keepdims=True)
    r = np.sqrt(np.abs((v * v).sum(axis=axes, keepdims=True) - m * mean * mean))
    y = _cwn_gain(inputs, params, r.shape).astype(acc) * (v - mean) / (r + acc(params.get("eps", 0.0)))
    return {"y": y.astype(inputs["x"].dtype)}


def _cwn_by_std(inputs, params):
    v = inputs["x"].astype(np.float64)
    axes = _cwn_axes(v, params)
    c = v - v.mean(axis=axes, keepdims=True)
    std = np.sqrt((c * c).mean(axis=axes, keepdims=True))
    return {"y": (_cwn_gain(inputs, params, std.shape) * c / (std + params.get("eps", 0.0))).astype(inputs["x"].dtype)}


def _sn_with(params_change):
    def forward(inputs, params):
        return NUMPY_KERNELS["spectral_norm"].forward(inputs, {**params, **params_change(params)})
    return forward


def _sn_sigma_plus_eps(inputs, params):
    out = NUMPY_KERNELS["spectral_norm"].forward(inputs, params)
    w = inputs["x"].astype(np.float64)
    sigma = (w * w).sum() / (w * out["y"].astype(np.float64)).sum()
    return {**out, "y": (w / (sigma + 1e-4)).astype(inputs["x"].dtype)}


def _np_variance_half(inputs, params):
    out = NUMPY_KERNELS["norm_prop"].forward(inputs, {**params, "activation": "identity"})
    u = out["y"].astype(np.float64)
    if params.get("activation", "relu") == "identity":
        return out
    return {"y": ((np.maximum(u, 0) - 1 / math.sqrt(2 * math.pi)) / math.sqrt(0.5)).astype(inputs["x"].dtype)}


def _np_frobenius(inputs, params):
    w = inputs["weight"]
    r = np.sqrt((w.astype(np.float64) ** 2).sum())
    rows = np.sqrt((w.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
    return NUMPY_KERNELS["norm_prop"].forward({**inputs, "weight": (w * (rows / r)).astype(w.dtype)}, params)


def _np_column_norm(inputs, params):
    w = inputs["weight"].astype(np.float64)
    x = inputs["x"].astype(np.float64)
    u = x @ (w / np.sqrt((w * w).sum(axis=0, keepdims=True))).T
    if inputs.get("gamma") is not None:
        u = u * inputs["gamma"]
    if inputs.get("bias") is not None:
        u = u + inputs["bias"]
    if params.get("activation", "relu") == "identity":
        y = u
    else:
        y = (np.maximum(u, 0) - 1 / math.sqrt(2 * math.pi)) / math.sqrt((1 - 1 / math.pi) / 2)
    return {"y": y.astype(inputs["x"].dtype)}


SEEDED = [
    # (property, norm, bug name, forward, backward)
    ("forward_matches_spec", "weight_norm", "dim_as_0", _wn_dim_as_zero, None),
    ("weight_norm_folded_layer", "weight_norm", "dim_as_0", _wn_dim_as_zero, None),
    ("weight_norm_scale_invariance", "weight_norm", "eps_in_norm", _wn_eps_in_norm, None),
    ("weight_norm_gradient_orthogonal", "weight_norm", "norm_as_constant", None, _wn_norm_as_constant),
    ("backward_matches_spec", "weight_norm", "norm_as_constant", None, _wn_norm_as_constant),
    ("cwn_rows_centered_with_norm_g", "centered_weight_norm", "uncentred", _cwn_uncentred, None),
    ("cwn_affine_invariance", "centered_weight_norm", "one_pass_norm", _cwn_one_pass, None),
    ("cwn_equals_weight_norm_of_centered", "centered_weight_norm", "divides_by_std", _cwn_by_std, None),
    ("spectral_norm_sigma_converges", "spectral_norm", "one_iteration",
     _sn_with(lambda p: {"n_power_iterations": 1}), None),
    ("spectral_norm_state_train_only", "spectral_norm", "iterates_in_eval",
     _sn_with(lambda p: {"training": True}), None),
    ("spectral_norm_scale_invariance", "spectral_norm", "sigma_plus_eps", _sn_sigma_plus_eps, None),
    ("norm_prop_output_moments", "norm_prop", "variance_one_half", _np_variance_half, None),
    ("norm_prop_weight_scale_invariance", "norm_prop", "frobenius_norm", _np_frobenius, None),
    ("norm_prop_rectangular", "norm_prop", "column_norm", _np_column_norm, None),
]


@pytest.mark.parametrize("prop,norm,bug,forward,backward", SEEDED, ids=[f"{p}-{b}" for p, _, b, _, _ in SEEDED])
def test_property_rejects_seeded_bug(prop, norm, bug, forward, backward):
    backend = bug_backend(bug, norm, forward, backward)
    verdict = run_property(PROPERTIES[prop], get_norm(norm), backend, "ci")
    assert verdict.status == "failed", f"{prop} did not catch {bug}: {verdict.status} {verdict.reason}"


REFERENCE_BACKENDS, _ = available_backends(["numpy", "torch:cpu"])
OWN = sorted({p for p, *_ in SEEDED} - {"forward_matches_spec", "backward_matches_spec"})


@pytest.mark.parametrize("backend", sorted(REFERENCE_BACKENDS))
@pytest.mark.parametrize("prop", OWN)
def test_property_accepts_reference_backends(prop, backend):
    norm = next(n for p, n, *_ in SEEDED if p == prop)
    verdict = run_property(PROPERTIES[prop], get_norm(norm), REFERENCE_BACKENDS[backend], "dev")
    known = expected_failure(prop, norm, backend, verdict.message) if verdict.status == "failed" else None
    assert verdict.status == "passed" or known is not None, verdict.message


def test_torch_weight_norm_dim_minus_one_is_the_recorded_finding():
    """PyTorch reads weight_norm's dim=-1 as the whole tensor: forward_matches_spec fails on it and
    the failure is covered by the expected-failure entry (and only that one)."""
    from normspec.library.case import Case
    from normspec.properties.core import Context

    torch_cpu = REFERENCE_BACKENDS["torch:cpu"]
    rng = np.random.default_rng(5)
    case = Case("weight_norm", {"x": rng.standard_normal((3, 4)), "weight": rng.uniform(0.5, 2, (1, 4))}, {"dim": -1})
    ctx = Context(get_norm("weight_norm"), torch_cpu, lambda s, label: None)
    run = ctx.run(case, "float64")
    ref, _ = ctx.reference(run)
    assert not np.allclose(run.outputs["y"], ref["y"])
    message = f"y ... [{case.describe()}]"
    assert expected_failure("forward_matches_spec", "weight_norm", "torch:cpu", message) is not None
    other = Case("weight_norm", case.arrays, {"dim": -2}).describe()
    assert expected_failure("forward_matches_spec", "weight_norm", "torch:cpu", f"y ... [{other}]") is None
