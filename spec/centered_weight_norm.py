"""Centered Weight Normalization (Huang, Liu, Lang & Tao, ICCV 2017, "Centered Weight
Normalization in Accelerating Training of Deep Neural Networks", eq. 3-4).

Per output unit (each index of `dim`, the rows of a (out, in) or (out, in, kh, kw) weight):
w = g (v - mean v) / (||v - mean v|| + eps), mean and norm over every dim except `dim`.
The paper has eps = 0; its reference code adds a small constant (1e-5) to the norm, outside the
square root: that is `eps`. g is learned (the `weight` role, shaped as weight_norm's g) or fixed
(`scale`, 1.0 by default; the reference code uses 1.414 for ReLU networks).
"""
from __future__ import annotations

import numpy as np

from normspec.spec.moments import as_float64
from normspec.spec.weight_norm import g_shape, norm_axes


def _gain(v: np.ndarray, g, dim, scale: float) -> np.ndarray:
    if g is None:
        return np.full(g_shape(v.shape, dim), float(scale))
    g = as_float64(g)
    want = g_shape(v.shape, dim)
    if g.size != int(np.prod(want)):
        raise ValueError(f"g has shape {g.shape}, but centered_weight_norm(dim={dim}) of v{v.shape} needs shape {want}")
    return g.reshape(want)


def centered_weight_norm(v, g=None, *, dim: int | None = 0, eps: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """w = g (v - mean v)/(||v - mean v|| + eps) over all dims except `dim` (eq. 4)."""
    v = as_float64(v)
    gain = _gain(v, g, dim, scale)
    axes = norm_axes(v.ndim, dim)
    c = v - v.mean(axis=axes, keepdims=True)
    r = np.sqrt((c * c).sum(axis=axes, keepdims=True))
    return gain * c / (r + eps)


def centered_weight_norm_backward(dw, v, g=None, *, dim: int | None = 0, eps: float = 0.0,
                                  scale: float = 1.0) -> dict[str, np.ndarray]:
    """Closed-form gradients {"x": dL/dv, "weight": dL/dg} (Huang et al. 2017, eq. 6-7).

    With c = v - mean v, r = ||c||, d = r + eps: dc = (g/d) dw - (g (c.dw)/(d^2 r)) c, and
    dv = dc - mean(dc) (the centering projection); dg = sum dw c/d. For eps = 0,
    dv = (g/r)(dw - mean dw - c_hat (c_hat.dw)), c_hat = c/r.
    """
    dw, v = as_float64(dw), as_float64(v)
    gain = _gain(v, g, dim, scale)
    axes = norm_axes(v.ndim, dim)
    c = v - v.mean(axis=axes, keepdims=True)
    r = np.sqrt((c * c).sum(axis=axes, keepdims=True))
    d = r + eps
    cdw = (c * dw).sum(axis=axes, keepdims=True)
    dc = (gain / d) * dw - (gain * cdw / (d * d * r)) * c
    grads = {"x": dc - dc.mean(axis=axes, keepdims=True)}
    if g is not None:
        grads["weight"] = (cdw / d).reshape(np.shape(g))
    return grads
