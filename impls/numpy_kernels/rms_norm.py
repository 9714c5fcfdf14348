"""RMSNorm forward/backward in NumPy (Zhang & Sennrich 2019), with PyTorch's eps=None rule."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel
from normspec.spec.layer_norm import normalize_axes, param_shape


def _axes(x, params):
    if params.get("axes") is not None:  # over the given dims (channels-first: (1,)), a weight of their sizes
        return normalize_axes(params["axes"], x.ndim)
    shape = tuple(params["normalized_shape"])
    k = len(shape)
    if k == 0 or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"normalized_shape {shape} must be a suffix of the input shape {x.shape}")
    return tuple(range(x.ndim - k, x.ndim))


def _eps(params, acc):
    """eps=None: the machine epsilon of the accumulation dtype (float32 for half inputs)."""
    eps = params.get("eps")
    return np.finfo(acc).eps if eps is None else acc.type(eps)


def _normalized(x, params):
    """(x / r, 1 / r) in the accumulation dtype, r = sqrt(mean(x^2) + eps)."""
    acc = accumulation_dtype(x.dtype)
    xa = x.astype(acc)
    inv_rms = 1.0 / np.sqrt(np.square(xa).mean(axis=_axes(x, params), keepdims=True) + _eps(params, acc))
    return xa * inv_rms, inv_rms


def _gain(inputs, params, acc):
    """(weight_offset + w) in the accumulation dtype (Gemma's x̂ (1 + w) with weight_offset=1), shaped to
    broadcast against x."""
    x = inputs["x"]
    w = inputs["weight"].reshape(param_shape(x, _axes(x, params)))
    return w.astype(acc) + acc.type(params.get("weight_offset", 0.0))


def forward(inputs, params):
    x = inputs["x"]
    y, _ = _normalized(x, params)
    if inputs.get("weight") is not None:
        y = y * _gain(inputs, params, y.dtype)
    return {"y": y.astype(x.dtype)}


def backward(inputs, params, dy):
    x = inputs["x"]
    axes = _axes(x, params)
    xhat, inv_rms = _normalized(x, params)
    dy = dy.astype(xhat.dtype)
    g = dy if inputs.get("weight") is None else dy * _gain(inputs, params, xhat.dtype)
    dx = inv_rms * (g - xhat * (g * xhat).mean(axis=axes, keepdims=True))
    grads = {"x": dx.astype(x.dtype)}
    if inputs.get("weight") is not None:
        batch_axes = tuple(a for a in range(x.ndim) if a not in axes)
        grads["weight"] = (dy * xhat).sum(axis=batch_axes).astype(inputs["weight"].dtype)
    return grads


numpy_kernel("rms_norm", backward=backward)(forward)
