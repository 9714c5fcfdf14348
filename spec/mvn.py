"""Mean-Variance Normalization (Caffe `MVNLayer`; ONNX `MeanVarianceNormalization`).

y = (x - mu) / (sigma + eps) with the biased standard deviation sigma and eps *outside* the
square root (Caffe `mvn_param.eps`, default 1e-9; ONNX adds 1e-9 to the standard deviation);
with normalize_variance=False only the mean is removed. Statistics over the spatial dims of each
(n, c) (across_channels=False, Caffe's default; ONNX axes=[2, 3]) or over (C, *S) of each sample
(across_channels=True; ONNX axes=[1, 2, 3]). `axes` (ONNX's attribute, any non-empty set of
axes) overrides across_channels: ONNX opset 13's default axes=[0, 2, 3] normalize each channel over
the batch and space (a batch-dependent normalization, like BatchNorm without running statistics);
OpenVINO MVN-6 takes the same `axes`. No affine parameters.
"""
from __future__ import annotations

import numpy as np

from normspec.spec.moments import as_float64

ONNX_DEFAULT_AXES = (0, 2, 3)


def normalize_axes(axes, ndim: int) -> tuple[int, ...]:
    """Sorted distinct non-negative axes of an ndim array (negative ones count from the end)."""
    out = []
    for a in axes:
        if int(a) != a or not -ndim <= a < ndim:
            raise ValueError(f"mvn axes {tuple(axes)!r} out of range for an input of {ndim} dims")
        out.append(int(a) % ndim)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"mvn axes must be a non-empty set of distinct axes, got {tuple(axes)!r}")
    return tuple(sorted(out))


def mvn_axes(ndim: int, across_channels: bool, axes=None) -> tuple[int, ...]:
    if axes is not None:
        return normalize_axes(axes, ndim)
    return tuple(range(1 if across_channels else 2, ndim))


def _check(x: np.ndarray, across_channels: bool, axes=None) -> None:
    if axes is not None:
        if x.ndim < 1 or x.ndim > 5:
            raise ValueError(f"mvn with axes expects an input of 1-5 dims, got {x.shape}")
        normalize_axes(axes, x.ndim)
        return
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


def mvn(x, *, across_channels: bool = False, normalize_variance: bool = True, eps: float = 1e-9,
        axes=None) -> np.ndarray:
    """y = (x - mu)/(sigma + eps) or x - mu, mu and biased sigma over `mvn_axes` (or `axes`)."""
    x = as_float64(x)
    _check(x, across_channels, axes)
    red = mvn_axes(x.ndim, across_channels, axes)
    c, _ = centered(x, red)
    if not normalize_variance:
        return c
    sigma = np.sqrt(np.mean(c * c, axis=red, keepdims=True))
    return c / (sigma + eps)


def mvn_backward(dy, x, *, across_channels: bool = False, normalize_variance: bool = True,
                 eps: float = 1e-9, axes=None) -> dict[str, np.ndarray]:
    """Closed-form input gradient. With y = (x - mu)/(sigma + eps):
    dx = (dy - mean dy)/(sigma + eps) - y * mean(dy * y)/sigma, undefined (NaN) where sigma = 0
    (sigma is not differentiable at a constant set). Without variance normalization
    dx = dy - mean dy. Caffe's backward drops the eps in the last term (exact only as eps -> 0)."""
    x, dy = as_float64(x), as_float64(dy)
    _check(x, across_channels, axes)
    axes = mvn_axes(x.ndim, across_channels, axes)
    centred_dy = dy - dy.mean(axis=axes, keepdims=True)
    if not normalize_variance:
        return {"x": centred_dy}
    c, _ = centered(x, axes)
    sigma = np.sqrt(np.mean(c * c, axis=axes, keepdims=True))
    y = c / (sigma + eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        dx = centred_dy / (sigma + eps) - y * np.mean(dy * y, axis=axes, keepdims=True) / sigma
    return {"x": np.where(sigma > 0, dx, np.nan)}
