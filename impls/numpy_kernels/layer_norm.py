"""LayerNorm forward/backward in NumPy (Ba, Kiros & Hinton 2016)."""
from __future__ import annotations

from normspec.impls.numpy_backend import numpy_kernel
from normspec.impls.numpy_kernels.moments import normalize, normalize_backward


def _axes(x, params):
    k = len(tuple(params["normalized_shape"]))
    if k == 0 or tuple(x.shape[x.ndim - k:]) != tuple(params["normalized_shape"]):
        raise ValueError(
            f"normalized_shape {tuple(params['normalized_shape'])} must be a suffix of the input shape {x.shape}"
        )
    return tuple(range(x.ndim - k, x.ndim))


def forward(inputs, params):
    x = inputs["x"]
    xhat, *_ = normalize(x, _axes(x, params), params.get("eps", 1e-5))
    y = xhat
    if inputs.get("weight") is not None:
        y = y * inputs["weight"].astype(y.dtype)
    if inputs.get("bias") is not None:
        y = y + inputs["bias"].astype(y.dtype)
    return {"y": y.astype(x.dtype)}


def backward(inputs, params, dy):
    x = inputs["x"]
    axes = _axes(x, params)
    xhat, _, _, inv_std = normalize(x, axes, params.get("eps", 1e-5))
    dy = dy.astype(xhat.dtype)
    g_hat = dy if inputs.get("weight") is None else dy * inputs["weight"].astype(xhat.dtype)
    batch_axes = tuple(range(x.ndim - len(axes)))
    grads = {"x": normalize_backward(g_hat, xhat, inv_std, axes).astype(x.dtype)}
    if inputs.get("weight") is not None:
        grads["weight"] = (dy * xhat).sum(axis=batch_axes).astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dy.sum(axis=batch_axes).astype(inputs["bias"].dtype)
    return grads


numpy_kernel("layer_norm", backward=backward)(forward)
