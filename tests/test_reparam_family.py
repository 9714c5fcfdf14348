"""Normalization by reparametrization: the spec's backwards against finite differences, the spec's
refresh against its promises, and every property of properties/reparam_family.py rejecting a seeded
bug (a refresh without its compensating update, a covariance without eps, a bias compensated with the
old mean, ...) while accepting the numpy and torch:cpu backends."""
from __future__ import annotations

import numpy as np
import pytest
from test_weight_family import check_fd

from normspec.expected import expected_failure
from normspec.impls.base import Kernel, available_backends
from normspec.impls.numpy_backend import NUMPY_KERNELS, NumpyBackend
from normspec.properties import PROPERTIES, run_property
from normspec.registry import get_norm
from normspec.spec.reparametrization import (
    mean_normalized_linear,
    mean_normalized_linear_backward,
    raiko_tanh,
    raiko_tanh_backward,
    whitened_linear,
    whitened_linear_backward,
)


def _whitened_arrays(rng, n=6, n_in=3, n_out=2):
    x = rng.standard_normal((n, n_in)) @ (np.eye(n_in) + rng.normal(0, 0.7, (n_in, n_in))) + 3.0
    return {"x": x, "weight": rng.standard_normal((n_out, n_in)), "bias": rng.standard_normal(n_out),
            "running_mean": rng.standard_normal(n_in), "whitening": rng.standard_normal((n_in, n_in))}


def _raiko_arrays(rng, n=6, n_in=3, h=4, n_out=2):
    return {"x": rng.standard_normal((n, n_in)), "weight": rng.standard_normal((h, n_in)),
            "bias": rng.standard_normal(h), "out_weight": rng.standard_normal((n_out, h)),
            "shortcut": rng.standard_normal((n_out, n_in)), "out_bias": rng.standard_normal(n_out),
            "alpha": rng.uniform(0.1, 1, h), "beta": rng.normal(0, 0.3, h)}


# ---------------------------------------------------------------- the spec


def test_whitened_backward_matches_finite_differences():
    arrays = _whitened_arrays(np.random.default_rng(0))
    dy = np.random.default_rng(1).standard_normal((6, 2))
    fwd = lambda **a: whitened_linear(**a, training=False)["y"]  # noqa: E731
    check_fd(fwd, lambda dy, **a: whitened_linear_backward(dy, **a), arrays, dy, ("x", "weight", "bias"))


def test_mean_normalized_backward_matches_finite_differences():
    arrays = {k: v for k, v in _whitened_arrays(np.random.default_rng(2)).items() if k != "whitening"}
    dy = np.random.default_rng(3).standard_normal((6, 2))
    fwd = lambda **a: mean_normalized_linear(**a, training=False)["y"]  # noqa: E731
    check_fd(fwd, lambda dy, **a: mean_normalized_linear_backward(dy, **a), arrays, dy, ("x", "weight", "bias"))


def test_raiko_backward_matches_finite_differences():
    arrays = _raiko_arrays(np.random.default_rng(4))
    dy = np.random.default_rng(5).standard_normal((6, 2))
    fwd = lambda **a: raiko_tanh(**a, training=False)["y"]  # noqa: E731
    check_fd(fwd, lambda dy, **a: raiko_tanh_backward(dy, **a), arrays, dy,
             ("x", "weight", "bias", "out_weight", "shortcut", "out_bias"))


@pytest.mark.parametrize("method", ["pca", "zca"])
def test_whitened_refresh_keeps_the_function_and_whitens(method):
    arrays = _whitened_arrays(np.random.default_rng(6))
    eps = 1e-3
    r = whitened_linear(**arrays, eps=eps, method=method)
    probe = np.random.default_rng(7).standard_normal((5, 3))
    before = whitened_linear(**{**arrays, "x": probe}, training=False)["y"]
    after = whitened_linear(probe, r["new_weight"], r["new_bias"], r["running_mean"], r["whitening"],
                            training=False)["y"]
    np.testing.assert_allclose(after, before, rtol=1e-10, atol=1e-10)
    z = (arrays["x"] - r["running_mean"]) @ r["whitening"].T
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-12)
    u = r["whitening"]
    np.testing.assert_allclose(np.cov(z.T, bias=True), np.eye(3) - eps * u @ u.T, atol=1e-10)
    if method == "zca":
        np.testing.assert_allclose(u, u.T, atol=1e-12)
    else:  # PCA: rows are scaled eigenvectors, in descending eigenvalue order
        np.testing.assert_allclose(u @ u.T, np.diag(np.diag(u @ u.T)), atol=1e-10)
        assert np.all(np.diff(np.diag(u @ u.T)) >= 0)


def test_mean_normalized_is_whitened_with_identity_in_the_spec():
    arrays = _whitened_arrays(np.random.default_rng(8))
    mean_arrays = {k: v for k, v in arrays.items() if k != "whitening"}
    r = mean_normalized_linear(**mean_arrays, momentum=1.0)
    w = whitened_linear(**{**arrays, "whitening": np.eye(3)}, training=False)
    np.testing.assert_allclose(r["y"], w["y"], rtol=1e-12)
    np.testing.assert_allclose(r["running_mean"], arrays["x"].mean(axis=0))
    shift = r["running_mean"] - arrays["running_mean"]
    np.testing.assert_allclose(r["new_bias"], arrays["bias"] + arrays["weight"] @ shift)


def test_raiko_refresh_keeps_the_function_and_centres_units():
    arrays = _raiko_arrays(np.random.default_rng(9))
    r = raiko_tanh(**arrays)
    probe = np.random.default_rng(10).standard_normal((4, 3))
    new = {**arrays, "x": probe, "alpha": r["alpha"], "beta": r["beta"], "shortcut": r["new_shortcut"],
           "out_bias": r["new_out_bias"]}
    np.testing.assert_allclose(raiko_tanh(**new, training=False)["y"],
                               raiko_tanh(**{**arrays, "x": probe}, training=False)["y"], rtol=1e-10, atol=1e-12)
    a = arrays["x"] @ arrays["weight"].T + arrays["bias"]
    np.testing.assert_allclose((1 - np.tanh(a) ** 2 - r["alpha"]).mean(axis=0), 0, atol=1e-14)
    np.testing.assert_allclose((np.tanh(a) - r["alpha"] * a - r["beta"]).mean(axis=0), 0, atol=1e-14)


def test_refresh_schedule_follows_the_interval():
    arrays = _whitened_arrays(np.random.default_rng(11))
    assert "new_weight" in whitened_linear(**arrays, step=4, interval=2)
    assert "new_weight" not in whitened_linear(**arrays, step=3, interval=2)
    assert "new_weight" not in whitened_linear(**arrays, step=4, interval=2, training=False)


def test_bad_input_is_refused_with_a_clear_message():
    arrays = _whitened_arrays(np.random.default_rng(12))
    with pytest.raises(ValueError, match="interval must be a positive integer"):
        whitened_linear(**arrays, interval=0)
    with pytest.raises(ValueError, match="method must be one of"):
        whitened_linear(**arrays, method="cholesky")
    with pytest.raises(ValueError, match="eps must be positive"):
        whitened_linear(**arrays, eps=0.0)
    with pytest.raises(ValueError, match="whitening has shape"):
        whitened_linear(**{**arrays, "whitening": np.eye(2)})
    with pytest.raises(ValueError, match="momentum must lie in"):
        mean_normalized_linear(**{k: v for k, v in arrays.items() if k != "whitening"}, momentum=0.0)
    with pytest.raises(ValueError, match="out_weight has shape"):
        raiko_tanh(**{**_raiko_arrays(np.random.default_rng(13)), "out_weight": np.ones((2, 3))})


# ---------------------------------------------------------------- seeded bugs


def bug_backend(name: str, norm: str, forward=None, backward=None) -> NumpyBackend:
    backend = NumpyBackend()
    original = NUMPY_KERNELS[norm]
    backend.kernels = {**backend.kernels, norm: Kernel(forward=forward or original.forward,
                                                      backward=backward or original.backward)}
    backend.name = f"numpy+{name}"
    return backend


def _patched(norm, change):
    """The reference numpy kernel of `norm`, its refreshed state passed through change(inputs, params, out)."""
    def forward(inputs, params):
        out = NUMPY_KERNELS[norm].forward(inputs, params)
        return change(inputs, params, out) if "y" in out and len(out) > 1 else out
    return forward


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _keep(*roles_names):
    """A refresh that returns the new statistics but leaves these parameters as they were."""
    def change(inputs, params, out):
        return {**out, **{name: inputs[role].copy() for name, role in roles_names}}
    return change


def _whitened_old_mean(inputs, params, out):
    """d' = b + W c with the old mean c where the new c' belongs: d' = d while V' is updated."""
    return {**out, "new_bias": inputs["bias"].copy()}


def _whitened_no_eps(inputs, params):
    """The covariance inverted without eps (eps still 'used' elsewhere): U' = Sigma^-1/2."""
    return NUMPY_KERNELS["whitened_linear"].forward(inputs, {**params, "eps": 1e-30})


def _mean_batch_mean(inputs, params, out):
    """b' = b + W (mean(x) - mu): compensated with the batch mean, not the new running mean."""
    x, w, mu = _f64(inputs["x"]), _f64(inputs["weight"]), _f64(inputs["running_mean"])
    b1 = _f64(inputs["bias"]) + w @ (x.mean(axis=0) - mu)
    return {**out, "new_bias": b1.astype(inputs["x"].dtype)}


def _mean_momentum_flipped(inputs, params):
    """mu' = m mu + (1 - m) mean(x): the momentum taken as the weight of the old value."""
    m = params.get("momentum", 1.0)
    out = NUMPY_KERNELS["mean_normalized_linear"].forward(inputs, {**params, "momentum": 1.0})
    if "running_mean" in out:
        mu, mean = _f64(inputs["running_mean"]), _f64(inputs["x"]).mean(axis=0)
        mu1 = m * mu + (1 - m) * mean
        out["running_mean"] = mu1.astype(inputs["x"].dtype)
        out["new_bias"] = (_f64(inputs["bias"]) + _f64(inputs["weight"]) @ (mu1 - mu)).astype(inputs["x"].dtype)
    return out


def _mean_batch_mean_in_eval(inputs, params):
    """Outside a refresh the layer centres with the batch's mean instead of the running mean."""
    x = _f64(inputs["x"])
    out = NUMPY_KERNELS["mean_normalized_linear"].forward(inputs, params)
    if len(out) == 1:
        out["y"] = ((x - x.mean(axis=0)) @ _f64(inputs["weight"]).T + _f64(inputs["bias"])).astype(inputs["x"].dtype)
    return out


def _whitened_bias_dropped(inputs, params):
    out = NUMPY_KERNELS["whitened_linear"].forward(inputs, params)
    if len(out) == 1:
        out["y"] = (out["y"] - inputs["bias"]).astype(inputs["x"].dtype)
    return out


def _raiko_slope_at_mean(inputs, params, out):
    """alpha' = tanh'(mean a): the slope at the mean pre-activation, not the mean slope."""
    x, bw, b = _f64(inputs["x"]), _f64(inputs["weight"]), _f64(inputs["bias"])
    a = x @ bw.T + b
    al1 = 1 - np.tanh(a.mean(axis=0)) ** 2
    be1 = np.tanh(a).mean(axis=0) - al1 * a.mean(axis=0)
    d_al, d_be = al1 - _f64(inputs["alpha"]), be1 - _f64(inputs["beta"])
    aw = _f64(inputs["out_weight"])
    dt = inputs["x"].dtype
    return {**out, "alpha": al1.astype(dt), "beta": be1.astype(dt),
            "new_shortcut": (_f64(inputs["shortcut"]) + (aw * d_al) @ bw).astype(dt),
            "new_out_bias": (_f64(inputs["out_bias"]) + aw @ (d_al * b + d_be)).astype(dt)}


def _whitened_unbiased(inputs, params):
    """The refresh's covariance divided by N - 1 (np.cov's default) instead of N."""
    out = NUMPY_KERNELS["whitened_linear"].forward(inputs, params)
    if len(out) > 1:
        x = _f64(inputs["x"])
        n = x.shape[0]
        scaled = x.mean(axis=0) + (x - x.mean(axis=0)) * np.sqrt(n / max(n - 1, 1))
        refit = NUMPY_KERNELS["whitened_linear"].forward({**inputs, "x": scaled.astype(inputs["x"].dtype)}, params)
        out = {**out, **{k: refit[k] for k in ("whitening", "new_weight")}}
    return out


def _raiko_backward_untransformed(inputs, params, dy):
    """The backward of the plain tanh unit: g = (dy A) o tanh'(a), without the -alpha of the transform."""
    grads = NUMPY_KERNELS["raiko_tanh"].backward(inputs, params, dy)
    x, bw, b, aw = (_f64(inputs[r]) for r in ("x", "weight", "bias", "out_weight"))
    g = (_f64(dy) @ aw) * (1 - np.tanh(x @ bw.T + b) ** 2)
    dt = inputs["x"].dtype
    return {**grads, "x": (g @ bw + _f64(dy) @ _f64(inputs["shortcut"])).astype(dt), "weight": (g.T @ x).astype(dt),
            "bias": g.sum(axis=0).astype(dt)}


AGREEMENT = [
    ("forward_matches_spec", "whitened_linear", "unbiased_covariance", _whitened_unbiased, None),
    ("backward_matches_spec", "raiko_tanh", "untransformed_slope", None, _raiko_backward_untransformed),
]


@pytest.mark.parametrize("prop,norm,bug,forward,backward", AGREEMENT, ids=[f"{p}-{n}-{b}" for p, n, b, *_ in AGREEMENT])
def test_agreement_rejects_seeded_bug(prop, norm, bug, forward, backward):
    verdict = run_property(PROPERTIES[prop], get_norm(norm), bug_backend(bug, norm, forward, backward), "ci")
    assert verdict.status == "failed", f"{prop} did not catch {bug}: {verdict.status} {verdict.reason}"


SEEDED = [
    # (property, norm, bug name, forward)
    ("refresh_preserves_function", "whitened_linear", "no_compensation",
     _patched("whitened_linear", _keep(("new_weight", "weight"), ("new_bias", "bias")))),
    ("refresh_preserves_function", "whitened_linear", "bias_with_old_mean",
     _patched("whitened_linear", _whitened_old_mean)),
    ("refresh_preserves_function", "mean_normalized_linear", "no_compensation",
     _patched("mean_normalized_linear", _keep(("new_bias", "bias")))),
    ("refresh_preserves_function", "mean_normalized_linear", "bias_with_batch_mean",
     _patched("mean_normalized_linear", _mean_batch_mean)),
    ("refresh_preserves_function", "raiko_tanh", "no_compensation",
     _patched("raiko_tanh", _keep(("new_shortcut", "shortcut"), ("new_out_bias", "out_bias")))),
    ("refresh_preserves_function", "raiko_tanh", "shortcut_only",
     _patched("raiko_tanh", _keep(("new_out_bias", "out_bias")))),
    ("refresh_whitens_input", "whitened_linear", "covariance_without_eps", _whitened_no_eps),
    ("refresh_whitens_input", "mean_normalized_linear", "momentum_flipped", _mean_momentum_flipped),
    ("raiko_units_centred", "raiko_tanh", "slope_at_mean", _patched("raiko_tanh", _raiko_slope_at_mean)),
    ("whitened_identity_is_linear", "whitened_linear", "bias_dropped", _whitened_bias_dropped),
    ("mean_normalized_is_whitened_with_identity", "mean_normalized_linear", "batch_mean_in_eval",
     _mean_batch_mean_in_eval),
]


@pytest.mark.parametrize("prop,norm,bug,forward", SEEDED, ids=[f"{p}-{n}-{b}" for p, n, b, _ in SEEDED])
def test_property_rejects_seeded_bug(prop, norm, bug, forward):
    verdict = run_property(PROPERTIES[prop], get_norm(norm), bug_backend(bug, norm, forward), "ci")
    assert verdict.status == "failed", f"{prop} did not catch {bug}: {verdict.status} {verdict.reason}"


def test_covariance_without_eps_is_caught_on_a_nonsingular_covariance():
    """The eps bug is caught by its effect eps U' U'^T, not only through the NaN of a singular Sigma:
    with every feature varying, ample samples and eps = 0.5 the property still fails."""
    from dataclasses import replace

    record = get_norm("whitened_linear")
    original = record.cases

    def cases(**overrides):
        drawn = original(**{**overrides, "allow_constant": False, "eps": 0.5})
        return drawn.filter(lambda c: c.x.shape[0] > c.x.shape[1])

    patched = replace(record, cases=cases)
    verdict = run_property(PROPERTIES["refresh_whitens_input"], patched,
                           bug_backend("no_eps", "whitened_linear", _whitened_no_eps), "ci")
    assert verdict.status == "failed" and "nan" not in verdict.message.lower(), verdict.message


REFERENCE_BACKENDS, _ = available_backends(["numpy", "torch:cpu"])
OWN = sorted({(p, n) for p, n, *_ in SEEDED})


@pytest.mark.parametrize("backend", sorted(REFERENCE_BACKENDS))
@pytest.mark.parametrize("prop,norm", OWN, ids=[f"{p}-{n}" for p, n in OWN])
def test_property_accepts_reference_backends(prop, norm, backend):
    verdict = run_property(PROPERTIES[prop], get_norm(norm), REFERENCE_BACKENDS[backend], "dev")
    known = expected_failure(prop, norm, backend, verdict.message) if verdict.status == "failed" else None
    assert verdict.status == "passed" or known is not None, verdict.message
