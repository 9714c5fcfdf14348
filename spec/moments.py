"""Centering and scaling by the moments of a reduction set: the kernel shared by BatchNorm,
LayerNorm, InstanceNorm and GroupNorm.

Notation follows the catalogue: over the reduction set R with m = |R| elements,
mu = mean_R x, sigma^2 = mean_R (x - mu)^2 (biased), s = sqrt(sigma^2 + eps), xhat = (x - mu)/s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Moments:
    """Statistics of x over `axes` (kept as size-1 dims so they broadcast against x)."""

    mean: np.ndarray
    var: np.ndarray  # biased
    std: np.ndarray  # s = sqrt(var + eps)
    xhat: np.ndarray
    count: int  # m = |R|


def as_float64(a) -> np.ndarray:
    """A float64 copy-or-view that the caller's array can never be modified through."""
    out = np.asarray(a, dtype=np.float64)
    if out is a:
        out = out.copy()
    return out


def moments(x: np.ndarray, axes: tuple[int, ...], eps: float) -> Moments:
    """Mean and biased variance of x over `axes`, and the normalized xhat.

    The reference must be more accurate than anything it judges, and exact where the
    mathematics is exact: the values are shifted by each set's first value (so a constant set
    centres to exactly 0), averaged, centred, and the centring corrected once more by the mean
    of the centred values (the corrected two-pass algorithm; Chan, Golub & LeVeque 1983).
    """
    x = as_float64(x)
    count = int(np.prod([x.shape[a] for a in axes])) if axes else 1
    first = x[tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))]
    shifted = x - first
    shifted_mean = shifted.mean(axis=axes, keepdims=True)
    centered = shifted - shifted_mean
    correction = centered.mean(axis=axes, keepdims=True)
    centered = centered - correction
    mean = first + (shifted_mean + correction)
    var = (centered * centered).mean(axis=axes, keepdims=True)
    std = np.sqrt(var + eps)
    return Moments(mean=mean, var=var, std=std, xhat=centered / std, count=count)


def moments_backward(g_hat: np.ndarray, m: Moments, axes: tuple[int, ...]) -> np.ndarray:
    """Input gradient of xhat = (x - mu)/s when mu and s depend on x (Ioffe & Szegedy 2015, sec. 3).

    `g_hat` is dL/dxhat (gamma * dy). The closed form is
    dx = (1/(m s)) (m g_hat - sum_R g_hat - xhat * sum_R g_hat xhat).
    """
    sum_g = g_hat.sum(axis=axes, keepdims=True)
    sum_gx = (g_hat * m.xhat).sum(axis=axes, keepdims=True)
    return (m.count * g_hat - sum_g - m.xhat * sum_gx) / (m.count * m.std)


def affine(y: np.ndarray, weight, bias, shape: tuple[int, ...]) -> np.ndarray:
    """gamma y + beta with gamma, beta reshaped to `shape`; an absent weight or bias is left out
    (PyTorch's affine=False)."""
    if weight is not None:
        y = y * as_float64(weight).reshape(shape)
    if bias is not None:
        y = y + as_float64(bias).reshape(shape)
    return y
