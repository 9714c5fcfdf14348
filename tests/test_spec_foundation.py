"""The spec itself: closed-form backward vs finite differences, purity, conventions.

The spec is the reference everything is judged against, so it is checked two independent ways:
its gradients against central finite differences in float64, and its forward and running
statistics against PyTorch's float64 ops (a separate implementation of the same conventions).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from normspec.spec import batch_norm, batch_norm_backward, layer_norm, layer_norm_backward


def finite_difference(f, arrays, role, dy, h=1e-6):
    """Central differences of <f(arrays), dy> with respect to arrays[role]."""
    base = arrays[role]
    grad = np.zeros_like(base)
    for i in np.ndindex(base.shape):
        up, down = base.copy(), base.copy()
        up[i] += h
        down[i] -= h
        grad[i] = ((f({**arrays, role: up}) - f({**arrays, role: down})) * dy).sum() / (2 * h)
    return grad


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (2, 3, 2, 3), (2, 2, 2, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_backward_matches_finite_differences(shape, training):
    rng = np.random.default_rng(0)
    c = shape[1]
    arrays = {"x": rng.normal(2.0, 3.0, shape), "weight": rng.uniform(0.5, 2, c), "bias": rng.normal(size=c)}
    rm, rv = rng.normal(size=c), rng.uniform(0.5, 2, c)
    dy = rng.normal(size=shape)

    def f(a):
        return batch_norm(a["x"], a["weight"], a["bias"], rm, rv, training=training, eps=1e-3).y

    grads = batch_norm_backward(dy, arrays["x"], arrays["weight"], rm, rv, training=training, eps=1e-3)
    for role in ("x", "weight", "bias"):
        np.testing.assert_allclose(grads[role], finite_difference(f, arrays, role, dy), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape,normalized", [((3, 5), (5,)), ((2, 3, 4), (3, 4)), ((2, 2, 2, 3), (2, 2, 3))])
def test_layer_norm_backward_matches_finite_differences(shape, normalized):
    rng = np.random.default_rng(1)
    arrays = {"x": rng.normal(-1.0, 2.0, shape), "weight": rng.uniform(0.5, 2, normalized),
              "bias": rng.normal(size=normalized)}
    dy = rng.normal(size=shape)

    def f(a):
        return layer_norm(a["x"], normalized, a["weight"], a["bias"], eps=1e-3)

    grads = layer_norm_backward(dy, arrays["x"], normalized, arrays["weight"], eps=1e-3)
    for role in ("x", "weight", "bias"):
        np.testing.assert_allclose(grads[role], finite_difference(f, arrays, role, dy), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_torch_float64(momentum, training):
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, (5, 3, 4))
    w, b, rm, rv = rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)
    tracked = 3
    ours = batch_norm(x, w, b, rm, rv, training=training, momentum=momentum, eps=1e-4, num_batches_tracked=tracked)
    t_rm, t_rv = torch.tensor(rm), torch.tensor(rv)
    factor = 1.0 / (tracked + 1) if momentum is None else momentum
    y = F.batch_norm(torch.tensor(x), t_rm, t_rv, torch.tensor(w), torch.tensor(b), training=training,
                     momentum=factor, eps=1e-4)
    np.testing.assert_allclose(ours.y, y.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.running_mean, t_rm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.running_var, t_rv.numpy(), rtol=1e-12)
    assert ours.num_batches_tracked == (tracked + 1 if training else tracked)


def test_batch_norm_conventions():
    """Old-value decay (Keras/ONNX) and biased running variance, from their definitions."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 2))
    rm, rv = np.array([0.5, -1.0]), np.array([2.0, 0.5])
    r = batch_norm(x, running_mean=rm, running_var=rv, momentum=0.9, momentum_style="decay",
                   running_var_style="biased")
    np.testing.assert_allclose(r.running_mean, 0.9 * rm + 0.1 * x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(r.running_var, 0.9 * rv + 0.1 * x.var(0), rtol=1e-14)


def test_layer_norm_matches_torch_float64():
    rng = np.random.default_rng(4)
    x = rng.normal(5.0, 0.5, (3, 4, 5))
    w, b = rng.uniform(0.5, 2, (4, 5)), rng.normal(size=(4, 5))
    y = F.layer_norm(torch.tensor(x), (4, 5), torch.tensor(w), torch.tensor(b), eps=1e-5)
    np.testing.assert_allclose(layer_norm(x, (4, 5), w, b), y.numpy(), rtol=1e-12, atol=1e-12)


def test_spec_functions_are_pure():
    rng = np.random.default_rng(5)
    x, rm, rv = rng.normal(size=(4, 3)), rng.normal(size=3), rng.uniform(1, 2, 3)
    copies = [a.copy() for a in (x, rm, rv)]
    batch_norm(x, None, None, rm, rv, training=True)
    layer_norm(x, (3,))
    for a, c in zip((x, rm, rv), copies):
        np.testing.assert_array_equal(a, c)


def test_constant_set_normalizes_to_exactly_zero():
    x = np.full((5, 2, 3), 3.3)
    x[:, 1] = 1e7 + 0.5
    assert np.all(batch_norm(x, training=True).y == 0.0)
    assert np.all(layer_norm(np.full((2, 4), -12345.678), (4,)) == 0.0)


@pytest.mark.parametrize("bad,match", [
    (dict(x=np.ones((1, 3))), "more than 1 value per channel"),
    (dict(x=np.ones(3)), r"\(N, C, \*S\)"),
    (dict(x=np.ones((4, 3)), momentum_style="keras"), "momentum_style"),
    (dict(x=np.ones((4, 3)), running_var_style="population"), "running_var_style"),
])
def test_batch_norm_refuses_bad_input_clearly(bad, match):
    x = bad.pop("x")
    with pytest.raises(ValueError, match=match):
        batch_norm(x, training=True, **bad)


def test_layer_norm_refuses_mismatched_shape():
    with pytest.raises(ValueError, match="suffix of the input shape"):
        layer_norm(np.ones((2, 3)), (4,))
