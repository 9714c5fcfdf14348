"""The response-normalization and divisive-normalization properties accept the reference backends
and reject realistic wrong implementations (seeded bugs in NumPy kernels)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import numeric_grad as finite_difference

from normspec.expected import expected_failure
from normspec.impls.base import Kernel, available_backends
from normspec.impls.numpy_backend import NumpyBackend
from normspec.impls.numpy_kernels import divisive as np_divisive
from normspec.impls.numpy_kernels import lrn as np_lrn
from normspec.properties import PROPERTIES, run_property
from normspec.registry import get_norm
from normspec.spec.divisive import divisive_norm, divisive_norm_backward
from normspec.spec.lrn import (
    local_response_norm,
    local_response_norm_backward,
    matconvnet_cross_channel,
    matconvnet_spatial,
    matconvnet_spatial_backward,
)

OWN = ("local_response_norm", "matconvnet_cross_channel", "matconvnet_spatial", "divisive_norm")
IDENTITIES = {
    "lrn_conventions_convert": "local_response_norm",
    "matconvnet_is_lrn_with_alpha_times_n": "matconvnet_cross_channel",
    "response_homogeneity": "local_response_norm",
    "divisive_special_cases": "divisive_norm",
    "divisive_shift_invariance": "divisive_norm",
}


def buggy(norm: str, forward=None, backward=None) -> NumpyBackend:
    backend = NumpyBackend()
    original = backend.kernels[norm]
    backend.kernels = {**backend.kernels, norm: Kernel(forward or original.forward, backward or original.backward,
                                                       original.unsupported)}
    backend.name = "numpy:bug"
    return backend


def verdict(prop: str, norm: str, backend, **focus):
    """The property's verdict in the ci profile; `focus` fixes case overrides (e.g. a convention)
    so that the test exercises the inputs the seeded bug is about."""
    record = get_norm(norm)
    if focus:
        record = dataclasses.replace(record, cases=lambda **kw: get_norm(norm).cases(**{**focus, **kw}))
    return run_property(PROPERTIES[prop], record, backend, "ci")


# ------------------------------------------------------------ the spec against finite differences


@pytest.mark.parametrize("convention,size", [("pytorch", 4), ("pytorch", 3), ("onnx", 4), ("tensorflow", 3),
                                             ("caffe_across", 5), ("caffe_within", 3)])
def test_lrn_backward_is_the_derivative(convention, size):
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 3))

    def f(z):
        return local_response_norm(z, size, 0.7, 0.8, 1.3, convention=convention)

    got = local_response_norm_backward(dy, x, size, 0.7, 0.8, 1.3, convention=convention)["x"]
    np.testing.assert_allclose(got, finite_difference(f, x, dy), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matconvnet_spatial_backward_is_the_derivative(reduction):
    rng = np.random.default_rng(1)
    x, dy = rng.standard_normal((2, 2, 4, 3)), rng.standard_normal((2, 2, 4, 3))

    def f(z):
        return matconvnet_spatial(z, (2, 3), 0.5, 1.5, reduction=reduction)

    got = matconvnet_spatial_backward(dy, x, (2, 3), 0.5, 1.5, reduction=reduction)["x"]
    np.testing.assert_allclose(got, finite_difference(f, x, dy), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("fields", [(("all", 1, "all"),) * 2, ((1, 3, 2), (1, "all", 3)), (("all", 2, 1), (1, 1, 3))])
@pytest.mark.parametrize("border", ["exclude", "zero"])
def test_divisive_backward_is_the_derivative(fields, border):
    rng = np.random.default_rng(2)
    x, dy, w = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3)), rng.standard_normal(4)
    kw = dict(summation=fields[0], suppression=fields[1], eps=0.1, border=border)
    got = divisive_norm_backward(dy, x, w, **kw)["x"]
    np.testing.assert_allclose(got, finite_difference(lambda z: divisive_norm(z, w, **kw), x, dy), rtol=1e-6, atol=1e-8)


def test_spec_pytorch_convention_is_torch_local_response_norm():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(3).standard_normal((3, 6, 4, 2))
    for size in range(1, 9):
        want = torch.nn.LocalResponseNorm(size, 0.3, 0.7, 1.5)(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(local_response_norm(x, size, 0.3, 0.7, 1.5), want, rtol=1e-13)


def test_known_values_of_the_conventions():
    """Hand-computed: x = [1, 2, 3] over channels, size 2, alpha 1, beta 1, k 1."""
    x = np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1)
    # PyTorch window [c-1, c]: sums 1, 5, 13; ONNX window [c, c+1]: sums 5, 13, 9
    np.testing.assert_allclose(local_response_norm(x, 2, 1.0, 1.0, 1.0).ravel(), [1 / 1.5, 2 / 3.5, 3 / 7.5])
    np.testing.assert_allclose(local_response_norm(x, 2, 1.0, 1.0, 1.0, convention="onnx").ravel(),
                               [1 / 3.5, 2 / 7.5, 3 / 5.5])
    # MatConvNet: no division by N, window like ONNX
    np.testing.assert_allclose(matconvnet_cross_channel(x, 2, 1.0, 1.0, 1.0).ravel(), [1 / 6, 2 / 14, 3 / 10])
    # Caffe WITHIN_CHANNEL ignores k: 1 + alpha/3 * (window of 3 over the one spatial dim)
    s = np.array([1.0, 2.0, 3.0]).reshape(1, 1, 3)
    np.testing.assert_allclose(local_response_norm(s, 3, 3.0, 1.0, 100.0, convention="caffe_within").ravel(),
                               [1 / 6, 2 / 15, 3 / 14])


@pytest.mark.parametrize("call,match", [
    (lambda: local_response_norm(np.ones((2, 3)), 3), "3-D or higher"),
    (lambda: local_response_norm(np.ones((2, 3, 4)), 4, convention="caffe_across"), "odd"),
    (lambda: local_response_norm(np.ones((2, 3, 4)), 3, convention="keras"), "convention must be one of"),
    (lambda: divisive_norm(np.ones((2, 3, 4)), summation=(3, 1, 1), suppression=(1, 1, 1)), "batch axis"),
    (lambda: divisive_norm(np.ones((2, 3, 4)), summation=(1, 1), suppression=(1, 1, 1)), "one entry per axis"),
])
def test_bad_input_is_refused_by_name(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------ the reference backends pass

@pytest.fixture(scope="module")
def references():
    backends, _ = available_backends(["numpy", "torch:cpu"])
    return backends


@pytest.mark.parametrize("prop", sorted(IDENTITIES))
@pytest.mark.parametrize("backend", ["numpy", "torch:cpu"])
def test_identities_accept_reference_backends(prop, backend, references):
    v = verdict(prop, IDENTITIES[prop], references[backend])
    known = v.status == "failed" and expected_failure(prop, v.norm, backend, v.message) is not None
    assert v.status == "passed" or known, v.message


# ------------------------------------------------------------ seeded bugs are rejected

def test_wrong_axis_window_is_caught():
    """The catalogue's bug: the window runs over the batch axis; it agrees only when N == C."""
    original = np_lrn._plan

    def wrong_axis_forward(inputs, params):
        np_lrn._plan = lambda norm, shape, p: (lambda w: ([(0, b, a) if ax == 1 else (ax, b, a) for ax, b, a in w[0]],
                                                          *w[1:]))(original(norm, shape, p))
        try:
            return np_lrn._forward("local_response_norm")(inputs, params)
        finally:
            np_lrn._plan = original

    v = verdict("forward_matches_spec", "local_response_norm", buggy("local_response_norm", wrong_axis_forward))
    assert v.status == "failed", v


def test_alpha_not_divided_by_n_is_caught():
    def forward(inputs, params):
        p = dict(params)
        if p.get("convention", "pytorch") == "pytorch":
            p["convention"] = "tensorflow" if p["size"] % 2 else "onnx"  # alpha/n confusion (and tf's window)
            if p["convention"] == "onnx":
                p["alpha"] = p.get("alpha", 1e-4) * p["size"]
        return np_lrn._forward("local_response_norm")(inputs, p)

    v = verdict("forward_matches_spec", "local_response_norm", buggy("local_response_norm", forward),
                convention="pytorch")
    assert v.status == "failed", v


def test_tensorflow_dividing_alpha_by_n_breaks_the_conversion():
    def forward(inputs, params):
        p = dict(params)
        if p.get("convention") == "tensorflow":
            p["convention"] = "caffe_across"  # alpha/n where TensorFlow takes alpha as is
        return np_lrn._forward("local_response_norm")(inputs, p)

    v = verdict("lrn_conventions_convert", "local_response_norm", buggy("local_response_norm", forward))
    assert v.status == "failed" and "tensorflow" in v.message, v


def test_even_window_misplacement_is_caught():
    """ONNX's even window placed like PyTorch's (leaning backwards instead of forwards)."""
    def forward(inputs, params):
        p = dict(params)
        if p.get("convention") == "onnx":
            p["convention"] = "pytorch"
        return np_lrn._forward("local_response_norm")(inputs, p)

    backend = buggy("local_response_norm", forward)
    assert verdict("lrn_conventions_convert", "local_response_norm", backend).status == "failed"
    even = verdict("forward_matches_spec", "local_response_norm", backend, convention="onnx", parity="even")
    assert even.status == "failed"


def test_matconvnet_dividing_alpha_by_n_is_caught():
    def forward(inputs, params):
        p = {**params, "alpha": params.get("alpha", 1e-4) / params.get("size", 5)}
        return np_lrn._forward("matconvnet_cross_channel")(inputs, p)

    v = verdict("matconvnet_is_lrn_with_alpha_times_n", "matconvnet_cross_channel",
                buggy("matconvnet_cross_channel", forward))
    assert v.status == "failed", v


def test_absolute_values_instead_of_squares_break_homogeneity():
    def forward(inputs, params):
        x = inputs["x"]
        windows, scale, offset, _, beta = np_lrn._plan("local_response_norm", x.shape, params)
        d = offset + scale * np_lrn._reduce(np.abs(x), windows)
        return {"y": x * d ** (-beta)}

    v = verdict("response_homogeneity", "local_response_norm", buggy("local_response_norm", forward))
    assert v.status == "failed", v


def test_divisive_backward_with_constant_statistics_is_caught():
    """The classic bug: the denominator treated as a constant in the backward."""
    def backward(inputs, params, dy):
        v, r, a, _, shape = np_divisive._parts(inputs, params)
        g = dy if inputs.get("weight") is None else dy * inputs["weight"].reshape(shape)
        grads = np_divisive.backward(inputs, params, dy)
        grads["x"] = (g / r - a.mean_t(g / r)).astype(inputs["x"].dtype)
        return grads

    v = verdict("divisive_special_cases", "divisive_norm", buggy("divisive_norm", backward=backward))
    assert v.status == "failed" and "dx" in v.message, v


def test_divisive_unbiased_variance_is_caught():
    def forward(inputs, params):
        out = np_divisive.forward(inputs, params)
        x = inputs["x"]
        m = x.size // x.shape[1] if params["suppression"][0] == "all" else x[0].size
        return {"y": out["y"] * np.sqrt((m - 1) / m) if m > 1 else out["y"]}

    v = verdict("divisive_special_cases", "divisive_norm", buggy("divisive_norm", forward))
    assert v.status == "failed", v


def test_divisive_border_dividing_by_full_window_breaks_shift_invariance():
    def forward(inputs, params):
        return np_divisive.forward(inputs, {**params, "border": "zero"})

    v = verdict("divisive_shift_invariance", "divisive_norm", buggy("divisive_norm", forward))
    assert v.status == "failed", v
