"""Mean-Variance Normalization (Caffe `MVNLayer`; ONNX `MeanVarianceNormalization`).

y = (x - mu) / (sigma + eps) with the biased standard deviation sigma and eps *outside* the
square root (Caffe `mvn_param.eps`, default 1e-9; ONNX adds 1e-9 to the standard deviation);
with normalize_variance=False only the mean is removed. Statistics over the spatial dims of each
(n, c) (across_channels=False, Caffe's default; ONNX axes=[2, 3]) or over (C, *S) of each sample
(across_channels=True; ONNX axes=[1, 2, 3]). ONNX's default axes [0, 2, 3] also reduce over the
batch and are not covered here. No affine parameters.
"""
from __future__ import annotations

import numpy as np

from normspec.spec.moments import as_float64


def mvn_axes(ndim: int, across_channels: bool) -> tuple[int, ...]:
    return tuple(range(1 if across_channels else 2, ndim))


def _check(x: np.ndarray, across_channels: bool) -> None:
    if x.ndim < 3 - int(bool(across_channels)) or x.ndim > 5:
        raise ValueError(f"mvn expects input of shape (N, C, *S) with up to 3 spatial dims "
                         f"(at least one unless across_channels), got {x.shape}")


def centered(x: np.ndarray, axes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(x - mu, mu), computed after subtracting each set's first value so that a constant set
    centres to exactly 0 (its standard deviation is then exactly 0, not a rounding residue)."""
    index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    first = x[index]
    shifted = x - first
    shift_mean = shifted.mean(axis=axes, keepdims=True)
    return shifted - shift_mean, first + shift_mean


def mvn(x, *, across_channels: bool = False, normalize_variance: bool = True, eps: float = 1e-9) -> np.ndarray:
    """y = (x - mu)/(sigma + eps) or x - mu, mu and biased sigma over `mvn_axes`."""
    x = as_float64(x)
    _check(x, across_channels)
    c, _ = centered(x, mvn_axes(x.ndim, across_channels))
    if not normalize_variance:
        return c
    sigma = np.sqrt(np.mean(c * c, axis=mvn_axes(x.ndim, across_channels), keepdims=True))
    return c / (sigma + eps)


def mvn_backward(dy, x, *, across_channels: bool = False, normalize_variance: bool = True,
                 eps: float = 1e-9) -> dict[str, np.ndarray]:
    """Closed-form input gradient. With y = (x - mu)/(sigma + eps):
    dx = (dy - mean dy)/(sigma + eps) - y * mean(dy * y)/sigma, undefined (NaN) where sigma = 0
    (sigma is not differentiable at a constant set). Without variance normalization
    dx = dy - mean dy. Caffe's backward drops the eps in the last term (exact only as eps -> 0)."""
    x, dy = as_float64(x), as_float64(dy)
    _check(x, across_channels)
    axes = mvn_axes(x.ndim, across_channels)
    centred_dy = dy - dy.mean(axis=axes, keepdims=True)
    if not normalize_variance:
        return {"x": centred_dy}
    c, _ = centered(x, axes)
    sigma = np.sqrt(np.mean(c * c, axis=axes, keepdims=True))
    y = c / (sigma + eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = centred_dy / (sigma + eps) - y * np.mean(dy * y, axis=axes, keepdims=True) / sigma
    return {"x": np.where(sigma > 0, dx, np.nan)}
