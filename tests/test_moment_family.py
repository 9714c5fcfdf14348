"""GroupNorm, InstanceNorm, RMSNorm, MVN: the spec against finite differences, and every property
of `normspec.properties.moment_family` rejecting a seeded bug and accepting the reference backends."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import numeric_grad

from normspec.impls.base import Kernel
from normspec.impls.numpy_backend import NUMPY_KERNELS, NumpyBackend
from normspec.impls.torch_backend import TorchCPUBackend
from normspec.properties import PROPERTIES, run_property
from normspec.registry import get_norm
from normspec.spec.group_norm import group_norm, group_norm_backward
from normspec.spec.instance_norm import instance_norm, instance_norm_backward
from normspec.spec.mvn import mvn, mvn_backward
from normspec.spec.rms_norm import DEFAULT_EPS, rms_norm, rms_norm_backward

RNG = np.random.default_rng(0)



# ---------------------------------------------------------------- spec vs finite differences

def test_group_norm_backward_matches_finite_differences():
    x, w, b = RNG.normal(size=(2, 6, 3)), RNG.uniform(0.5, 2, 6), RNG.normal(size=6)
    dy = RNG.normal(size=x.shape)
    g = group_norm_backward(dy, x, 3, w, eps=1e-3)
    np.testing.assert_allclose(g["x"], numeric_grad(lambda a: group_norm(a, 3, w, b, eps=1e-3), x, dy), atol=1e-7)
    np.testing.assert_allclose(g["weight"], numeric_grad(lambda a: group_norm(x, 3, a, b, eps=1e-3), w, dy), atol=1e-7)
    np.testing.assert_allclose(g["bias"], numeric_grad(lambda a: group_norm(x, 3, w, a, eps=1e-3), b, dy), atol=1e-7)


@pytest.mark.parametrize("training", [True, False])
def test_instance_norm_backward_matches_finite_differences(training):
    x, w, b = RNG.normal(size=(2, 3, 4)), RNG.uniform(0.5, 2, 3), RNG.normal(size=3)
    rm, rv = RNG.normal(size=3), RNG.uniform(0.5, 2, 3)
    dy = RNG.normal(size=x.shape)

    def f(a, w=w):
        return instance_norm(a, w, b, rm, rv, training=training, eps=1e-3).y

    g = instance_norm_backward(dy, x, w, rm, rv, training=training, eps=1e-3)
    np.testing.assert_allclose(g["x"], numeric_grad(f, x, dy), atol=1e-7)
    np.testing.assert_allclose(g["weight"], numeric_grad(lambda a: f(x, a), w, dy), atol=1e-7)


def test_rms_norm_backward_matches_finite_differences():
    x, w = RNG.normal(size=(3, 2, 4)), RNG.uniform(0.5, 2, (2, 4))
    dy = RNG.normal(size=x.shape)
    g = rms_norm_backward(dy, x, (2, 4), w, eps=1e-3)
    np.testing.assert_allclose(g["x"], numeric_grad(lambda a: rms_norm(a, (2, 4), w, eps=1e-3), x, dy), atol=1e-7)
    np.testing.assert_allclose(g["weight"], numeric_grad(lambda a: rms_norm(x, (2, 4), a, eps=1e-3), w, dy), atol=1e-7)


@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("nv", [False, True])
def test_mvn_backward_matches_finite_differences(across, nv):
    x, dy = RNG.normal(size=(2, 3, 4)), RNG.normal(size=(2, 3, 4))
    kw = dict(across_channels=across, normalize_variance=nv, eps=1e-2)
    np.testing.assert_allclose(mvn_backward(dy, x, **kw)["x"], numeric_grad(lambda a: mvn(a, **kw), x, dy), atol=1e-7)


def test_spec_matches_torch_float64_and_eps_placement():
    x = torch.randn(2, 6, 5, dtype=torch.float64)
    w, b = torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64)
    np.testing.assert_allclose(group_norm(x.numpy(), 2, w.numpy(), b.numpy()), F.group_norm(x, 2, w, b).numpy(),
                               atol=1e-12)
    np.testing.assert_allclose(instance_norm(x.numpy()).y, F.instance_norm(x).numpy(), atol=1e-12)
    np.testing.assert_allclose(rms_norm(x.numpy(), (5,)), F.rms_norm(x, (5,)).numpy(), atol=1e-12)
    c = x - x.mean(-1, keepdim=True)  # MVN: eps outside the square root (Caffe/ONNX)
    expected = c / (c.square().mean(-1, keepdim=True).sqrt() + 0.5)
    np.testing.assert_allclose(mvn(x.numpy(), eps=0.5), expected.numpy(), atol=1e-12)


def test_rms_norm_eps_none_rule_is_what_torch_does():
    """The encoded rule, measured: fp32's eps for half types and fp32, fp64's for fp64."""
    for dtype, torch_dtype in [("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32),
                               ("float64", torch.float64)]:
        x = torch.full((1, 64), 1e-3, dtype=torch_dtype)
        xd = x.double()
        got = F.rms_norm(x.float() if dtype != "float64" else x, (64,), eps=None).double()
        want = xd / torch.sqrt(xd.square().mean() + DEFAULT_EPS[dtype])
        assert torch.allclose(got, want, rtol=1e-6), dtype


def test_spec_rejects_bad_input():
    with pytest.raises(ValueError, match="divisor"):
        group_norm(np.zeros((2, 5, 3)), 2)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        instance_norm(np.zeros((2, 3, 1)))
    with pytest.raises(ValueError, match="suffix"):
        rms_norm(np.zeros((2, 3)), (4,))


# ---------------------------------------------------------------- seeded bugs

def buggy(base, norm, forward, backward=None, name="buggy"):
    """A backend that is `base` except for `norm`, whose kernel is replaced."""
    b = base()
    kernels = dict(b.kernels)
    old = kernels[norm]
    kernels[norm] = Kernel(forward=forward, backward=backward or old.backward, unsupported=old.unsupported)
    b.kernels, b.name = kernels, f"{name}:{b.name}"
    return b


def np_kernel(norm):
    NumpyBackend()
    return NUMPY_KERNELS[norm]


def instance_norm_batch_var(inputs, params):
    """BatchNorm-style running variance: the variance of the whole batch per channel."""
    out = np_kernel("instance_norm").forward(inputs, params)
    if "running_var" in out:
        x = inputs["x"].astype(np.float64)
        m = params.get("momentum", 0.1) or 0.0
        var = x.var(axis=(0,) + tuple(range(2, x.ndim)), ddof=1)
        out["running_var"] = ((1 - m) * inputs["running_var"] + m * var).astype(inputs["running_var"].dtype)
    return out


def instance_norm_eval_uses_input_stats(inputs, params):
    return np_kernel("instance_norm").forward({k: v for k, v in inputs.items() if not k.startswith("running")},
                                              {**params, "training": True})


def instance_norm_no_raise(inputs, params):
    x = inputs["x"]
    return {"y": np.zeros_like(x)} if np.prod(x.shape[2:]) <= 1 else np_kernel("instance_norm").forward(inputs, params)


def group_norm_unbiased(inputs, params):
    """Normalizes by the unbiased variance: NaN/inf for a group of one value, wrong elsewhere."""
    x = inputs["x"].astype(np.float64)
    xg = x.reshape(x.shape[0], params["num_groups"], -1)
    with np.errstate(all="ignore"):
        y = (xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, ddof=1, keepdims=True) + params["eps"])
    return {"y": y.reshape(x.shape).astype(inputs["x"].dtype)}


def group_norm_per_group_affine(inputs, params):
    """ONNX opset-18 reading of the affine: weight/bias indexed per group, not per channel."""
    g = params["num_groups"]
    per_group = {r: np.repeat(inputs[r][:g], inputs["x"].shape[1] // g) for r in ("weight", "bias")
                 if inputs.get(r) is not None}
    return np_kernel("group_norm").forward({**inputs, **per_group}, params)


def rms_norm_input_dtype_eps(inputs, params):
    """eps=None read as the input dtype's own epsilon (what PyTorch's docs once said)."""
    eps = params.get("eps")
    if eps is None:
        eps = float(np.finfo(inputs["x"].dtype).eps)
    return np_kernel("rms_norm").forward(inputs, {**params, "eps": eps})


def rms_norm_centred(inputs, params):
    """Subtracts the mean first (a LayerNorm without bias): right only on zero-mean rows."""
    x = inputs["x"]
    k = len(params["normalized_shape"])
    axes = tuple(range(x.ndim - k, x.ndim))
    centred = (x - x.mean(axis=axes, keepdims=True)).astype(x.dtype)
    return np_kernel("rms_norm").forward({**inputs, "x": centred}, params)


def mvn_eps_inside(inputs, params):
    """eps inside the square root, as InstanceNorm: (x - mu)/sqrt(sigma^2 + eps)."""
    if not params.get("normalize_variance", True):
        return np_kernel("mvn").forward(inputs, params)
    x = inputs["x"]
    first = 1 if params.get("across_channels") else 2
    axes = tuple(range(first, x.ndim))
    xa = x.astype(np.float32 if x.dtype == np.float16 else x.dtype)
    c = xa - xa.mean(axis=axes, keepdims=True)
    return {"y": (c / np.sqrt(np.square(c).mean(axis=axes, keepdims=True) + params["eps"])).astype(x.dtype)}


def mvn_grad_bug(inputs, params, dy):
    """A backward that treats the mean and sigma as constants: dx = dy/(sigma + eps)."""
    y, sigma = __import__("normspec.impls.numpy_kernels.mvn", fromlist=["_normalized"])._normalized(inputs["x"], params)
    if sigma is None:
        return {"x": dy}
    return {"x": (dy / (sigma + params["eps"])).astype(inputs["x"].dtype)}


BUGS = {
    "group_norm_one_group_is_layer_norm": ("group_norm", group_norm_per_group_affine, None),
    "group_norm_per_channel_groups_is_instance_norm": ("group_norm", group_norm_unbiased, None),
    "group_norm_single_value_input": ("group_norm", group_norm_unbiased, None),
    "instance_eval_is_per_channel_affine": ("instance_norm", instance_norm_eval_uses_input_stats, None),
    "instance_running_stats_update": ("instance_norm", instance_norm_batch_var, None),
    "instance_single_spatial_element_raises": ("instance_norm", instance_norm_no_raise, None),
    "rms_norm_eps_none_rule": ("rms_norm", rms_norm_input_dtype_eps, None),
    "rms_norm_is_layer_norm_on_zero_mean_rows": ("rms_norm", None, None),
    "mvn_scale_invariance": ("mvn", mvn_eps_inside, None),
    "mvn_is_instance_or_layer_norm_without_eps": ("mvn", None, mvn_grad_bug),
}


@pytest.mark.parametrize("name", sorted(BUGS))
def test_property_rejects_seeded_bug(name):
    norm, forward, backward = BUGS[name]
    if name == "rms_norm_is_layer_norm_on_zero_mean_rows":
        # the identity holds for any correct RMSNorm; its seeded bug is a LayerNorm kernel that
        # forgets to subtract the mean (an RMSNorm in disguise would pass): replace layer_norm.
        def ln_without_centering(inputs, params):
            return np_kernel("rms_norm").forward({"x": inputs["x"] + 0.25, "weight": inputs.get("weight")}, params)
        backend = buggy(NumpyBackend, "layer_norm", ln_without_centering)
    else:
        backend = buggy(NumpyBackend, norm, forward or np_kernel(norm).forward, backward)
    verdict = run_property(PROPERTIES[name], get_norm(norm), backend, "ci")
    assert verdict.status == "failed", (name, verdict.status, verdict.reason)


@pytest.mark.parametrize("name", sorted(BUGS))
def test_property_accepts_numpy(name):
    norm = BUGS[name][0]
    verdict = run_property(PROPERTIES[name], get_norm(norm), NumpyBackend(), "dev")
    assert verdict.status == "passed", (name, verdict.message, verdict.reason)


@pytest.mark.parametrize("name", sorted(BUGS))
def test_property_accepts_torch_cpu(name):
    from normspec.expected import expected_failure
    norm = BUGS[name][0]
    verdict = run_property(PROPERTIES[name], get_norm(norm), TorchCPUBackend(), "dev")
    if verdict.status == "failed":
        assert expected_failure(name, norm, "torch:cpu", verdict.message) is not None, verdict.message
    else:
        assert verdict.status == "passed", (name, verdict.reason)
