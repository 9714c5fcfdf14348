"""Weight Normalization forward/backward in NumPy (Salimans & Kingma 2016), any dim or None."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel


def reduce_axes(ndim: int, dim) -> tuple[int, ...]:
    """Axes of the norm: all but `dim` (negative dims count from the end); all of them for None."""
    if dim is None:
        return tuple(range(ndim))
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim {dim} is out of range for a weight of rank {ndim}")
    keep = dim % ndim
    return tuple(a for a in range(ndim) if a != keep)


def _parts(inputs, params):
    v = inputs["x"]
    acc = accumulation_dtype(v.dtype)
    axes = reduce_axes(v.ndim, params.get("dim", 0))
    va = v.astype(acc)
    inv_norm = 1.0 / np.sqrt(np.square(va).sum(axis=axes, keepdims=True))
    g = inputs["weight"].astype(acc).reshape(inv_norm.shape)
    return va, g, inv_norm, axes


def forward(inputs, params):
    va, g, inv_norm, _ = _parts(inputs, params)
    return {"y": ((g * inv_norm) * va).astype(inputs["x"].dtype)}


def backward(inputs, params, dy):
    va, g, inv_norm, axes = _parts(inputs, params)
    dw = dy.astype(va.dtype)
    direction = va * inv_norm
    dg = (dw * direction).sum(axis=axes, keepdims=True)
    dv = (g * inv_norm) * (dw - direction * dg)
    g_shape = () if params.get("dim", 0) is None else dg.shape  # g is a scalar for dim=None
    return {"x": dv.astype(inputs["x"].dtype), "weight": dg.reshape(g_shape).astype(inputs["weight"].dtype)}


numpy_kernel("weight_norm", backward=backward)(forward)
