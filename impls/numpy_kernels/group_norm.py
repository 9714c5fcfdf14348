"""GroupNorm forward/backward in NumPy (Wu & He 2018): moments per (n, g) of the grouped view."""
from __future__ import annotations

from normspec.impls.numpy_backend import numpy_kernel
from normspec.impls.numpy_kernels.moments import normalize, normalize_backward


def _view(x, params):
    """The (N, G, C/G * prod(S)) view whose last axis is one group, and the per-channel shape."""
    g, c = params["num_groups"], x.shape[1]
    if g < 1 or c % g:
        raise ValueError(f"num_groups={g} must be a positive divisor of the {c} channels")
    return x.reshape(x.shape[0], g, -1), (1, g, c // g) + (1,) * (x.ndim - 2)


def _per_channel(inputs, role, shape, dtype, like):
    a = inputs.get(role)
    return None if a is None else a.astype(dtype).reshape(shape).reshape(like)


def forward(inputs, params):
    x = inputs["x"]
    xg, cshape = _view(x, params)
    xhat, *_ = normalize(xg, (2,), params.get("eps", 1e-5))
    y = xhat.reshape(x.shape)
    like = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    w = _per_channel(inputs, "weight", cshape, y.dtype, like)
    b = _per_channel(inputs, "bias", cshape, y.dtype, like)
    if w is not None:
        y = y * w
    if b is not None:
        y = y + b
    return {"y": y.astype(x.dtype)}


def backward(inputs, params, dy):
    x = inputs["x"]
    xg, _ = _view(x, params)
    xhat, _, _, inv_std = normalize(xg, (2,), params.get("eps", 1e-5))
    like = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    dy = dy.astype(xhat.dtype)
    g_hat = dy if inputs.get("weight") is None else dy * inputs["weight"].astype(xhat.dtype).reshape(like)
    dx = normalize_backward(g_hat.reshape(xg.shape), xhat, inv_std, (2,)).reshape(x.shape)
    param_axes = (0,) + tuple(range(2, x.ndim))
    grads = {"x": dx.astype(x.dtype)}
    if inputs.get("weight") is not None:
        grads["weight"] = (dy * xhat.reshape(x.shape)).sum(axis=param_axes).astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dy.sum(axis=param_axes).astype(inputs["bias"].dtype)
    return grads


numpy_kernel("group_norm", backward=backward)(forward)
