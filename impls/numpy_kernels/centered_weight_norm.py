"""Centered Weight Normalization forward/backward in NumPy (Huang et al. ICCV 2017)."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel
from normspec.impls.numpy_kernels.weight_norm import reduce_axes


def _parts(inputs, params):
    v = inputs["x"]
    acc = accumulation_dtype(v.dtype)
    axes = reduce_axes(v.ndim, params.get("dim", 0))
    c = v.astype(acc)
    c -= c.mean(axis=axes, keepdims=True)
    r = np.sqrt(np.square(c).sum(axis=axes, keepdims=True))
    denom = r + acc.type(params.get("eps", 0.0))
    if inputs.get("weight") is not None:
        g = inputs["weight"].astype(acc).reshape(r.shape)
    else:
        g = np.full(r.shape, params.get("scale", 1.0), dtype=acc)
    return c, r, denom, g, axes


def forward(inputs, params):
    c, _, denom, g, _ = _parts(inputs, params)
    return {"y": (c * (g / denom)).astype(inputs["x"].dtype)}


def backward(inputs, params, dy):
    c, r, denom, g, axes = _parts(inputs, params)
    dw = dy.astype(c.dtype)
    c_dw = (c * dw).sum(axis=axes, keepdims=True)
    dc = (g / denom) * dw - (g * c_dw / (denom * denom * r)) * c
    grads = {"x": (dc - dc.mean(axis=axes, keepdims=True)).astype(inputs["x"].dtype)}
    if inputs.get("weight") is not None:
        grads["weight"] = (c_dw / denom).reshape(inputs["weight"].shape).astype(inputs["weight"].dtype)
    return grads


numpy_kernel("centered_weight_norm", backward=backward)(forward)
