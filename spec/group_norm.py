"""Group Normalization (Wu & He, 2018, "Group Normalization", eq. 1-3 and Fig. 3).

Input (N, C, *S); the C channels are split into `num_groups` contiguous blocks of C/G channels and
each (n, g) block is normalized by its own mean and biased variance over (C/G, *S). The affine
parameters are per channel (PyTorch `nn.GroupNorm`, ONNX opset 21; ONNX opset 18 had them per
group). G = 1 is LayerNorm over (C, *S) with a per-channel affine; G = C is InstanceNorm.
"""
from __future__ import annotations

import numpy as np

from normspec.spec.moments import as_float64, moments, moments_backward


def _grouped(x: np.ndarray, num_groups: int) -> np.ndarray:
    """x of shape (N, C, *S) viewed as (N, G, C/G, *S), whose reduction sets are axis-aligned."""
    if x.ndim < 2:
        raise ValueError(f"group_norm expects input of shape (N, C, *S), got {x.shape}")
    c = x.shape[1]
    if not isinstance(num_groups, (int, np.integer)) or num_groups < 1 or c % num_groups:
        raise ValueError(f"num_groups={num_groups!r} must be a positive divisor of the {c} channels")
    return x.reshape((x.shape[0], num_groups, c // num_groups) + x.shape[2:])


def group_axes(ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(statistics axes, parameter-gradient axes) of the grouped view of an ndim-dim input."""
    return tuple(range(2, ndim + 1)), (0,) + tuple(range(3, ndim + 1))


def _per_channel(a, x: np.ndarray, num_groups: int, default: float) -> np.ndarray:
    c = x.shape[1]
    a = np.full(c, default) if a is None else as_float64(a)
    if a.shape != (c,):
        raise ValueError(f"group_norm affine parameters must have shape ({c},), got {a.shape}")
    return a.reshape((1, num_groups, c // num_groups) + (1,) * (x.ndim - 2))


def group_norm(x, num_groups: int, weight=None, bias=None, *, eps: float = 1e-5) -> np.ndarray:
    """y = gamma_c (x - mu_ng)/sqrt(sigma^2_ng + eps) + beta_c  (Wu & He 2018, eq. 1-2, S_i of eq. 7)."""
    x = as_float64(x)
    xg = _grouped(x, num_groups)
    stats_axes, _ = group_axes(x.ndim)
    y = moments(xg, stats_axes, eps).xhat
    y = y * _per_channel(weight, x, num_groups, 1.0) + _per_channel(bias, x, num_groups, 0.0)
    return y.reshape(x.shape)


def group_norm_backward(dy, x, num_groups: int, weight=None, *, eps: float = 1e-5) -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, bias} of `group_norm`: the shared moments backward per (n, g)."""
    x, dy = as_float64(x), as_float64(dy)
    xg, dyg = _grouped(x, num_groups), _grouped(dy, num_groups)
    stats_axes, param_axes = group_axes(x.ndim)
    m = moments(xg, stats_axes, eps)
    dx = moments_backward(dyg * _per_channel(weight, x, num_groups, 1.0), m, stats_axes)
    return {
        "x": dx.reshape(x.shape),
        "weight": (dyg * m.xhat).sum(axis=param_axes).reshape(-1),
        "bias": dyg.sum(axis=param_axes).reshape(-1),
    }
