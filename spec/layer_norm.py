"""Layer Normalization (Ba, Kiros & Hinton, 2016, "Layer Normalization", eq. 4).

Statistics per sample over the trailing `normalized_shape` dims; the affine parameters have
that shape (PyTorch's `elementwise_affine`, with `bias` optional since PyTorch 2.1).
"""
from __future__ import annotations

import numpy as np

from normspec.spec.moments import as_float64, moments, moments_backward


def _axes(x: np.ndarray, normalized_shape) -> tuple[int, ...]:
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if k == 0 or x.shape[x.ndim - k:] != normalized_shape:
        raise ValueError(
            f"normalized_shape {normalized_shape} must be a non-empty suffix of the input shape {x.shape}"
        )
    return tuple(range(x.ndim - k, x.ndim))


def layer_norm(x, normalized_shape, weight=None, bias=None, *, eps: float = 1e-5) -> np.ndarray:
    """y = gamma (x - mu)/sqrt(sigma^2 + eps) + beta, mu and sigma^2 over the last dims."""
    x = as_float64(x)
    y = moments(x, _axes(x, normalized_shape), eps).xhat
    if weight is not None:
        y = y * as_float64(weight)
    if bias is not None:
        y = y + as_float64(bias)
    return y


def layer_norm_backward(dy, x, normalized_shape, weight=None, *, eps: float = 1e-5) -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, bias} of `layer_norm`."""
    x, dy = as_float64(x), as_float64(dy)
    axes = _axes(x, normalized_shape)
    m = moments(x, axes, eps)
    g_hat = dy if weight is None else dy * as_float64(weight)
    batch_axes = tuple(range(x.ndim - len(axes)))
    return {
        "x": moments_backward(g_hat, m, axes),
        "weight": (dy * m.xhat).sum(axis=batch_axes),
        "bias": dy.sum(axis=batch_axes),
    }
