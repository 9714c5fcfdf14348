"""Instance Normalization (Ulyanov, Vedaldi & Lempitsky, 2016, "Instance Normalization: The
Missing Ingredient for Fast Stylization", eq. 2).

Input (N, C, *S) with 1-3 spatial dims; each (n, c) instance is normalized by its own mean and
biased variance over S. Conventions follow `torch.nn.InstanceNorm*d` / `F.instance_norm`:
- with running statistics (track_running_stats=True) training updates them with
  r <- (1 - momentum) r + momentum * stat, where stat is the batch-mean of the per-instance means
  and of the per-instance *unbiased* variances sigma^2 m/(m - 1), m = prod(S);
  momentum=None means no update (the module hands F.instance_norm momentum 0.0);
- eval with running statistics is the per-channel affine (x - rm)/sqrt(rv + eps) gamma + beta;
  eval without them normalizes by the instance's statistics, as training does.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from normspec.spec.moments import affine, as_float64, moments, moments_backward


class InstanceNormResult(NamedTuple):
    y: np.ndarray
    running_mean: np.ndarray | None
    running_var: np.ndarray | None


def _geometry(x: np.ndarray):
    """(statistics axes, parameter axes, per-channel broadcast shape)."""
    return tuple(range(2, x.ndim)), (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def uses_input_stats(running_mean, running_var, training: bool) -> bool:
    return training or running_mean is None or running_var is None


def _check(x: np.ndarray, input_stats: bool) -> None:
    if x.ndim < 3 or x.ndim > 5:
        raise ValueError(f"instance_norm expects input of shape (N, C, *S) with 1-3 spatial dims, got {x.shape}")
    if input_stats and math.prod(x.shape[2:]) == 1 and x.size:
        raise ValueError(f"Expected more than 1 spatial element when training, got input of shape {x.shape}")


def instance_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *, training: bool = True,
                  momentum: float | None = 0.1, eps: float = 1e-5) -> InstanceNormResult:
    """y = gamma_c (x - mu_nc)/sqrt(sigma^2_nc + eps) + beta_c, statistics over the spatial dims."""
    x = as_float64(x)
    input_stats = uses_input_stats(running_mean, running_var, training)
    _check(x, input_stats)
    axes, _, shape = _geometry(x)
    new_mean = None if running_mean is None else as_float64(running_mean)
    new_var = None if running_var is None else as_float64(running_var)
    if x.size == 0:  # an empty batch or map: an empty output, no statistics, running stats unchanged
        return InstanceNormResult(x.copy(), new_mean, new_var)
    if input_stats:
        m = moments(x, axes, eps)
        xhat = m.xhat
        if new_mean is not None and new_var is not None:
            factor = 0.0 if momentum is None else momentum
            batch_mean = m.mean.reshape(x.shape[:2]).mean(axis=0)
            batch_var = (m.var.reshape(x.shape[:2]) * m.count / (m.count - 1)).mean(axis=0)
            new_mean = (1.0 - factor) * new_mean + factor * batch_mean
            new_var = (1.0 - factor) * new_var + factor * batch_var
    else:
        xhat = (x - new_mean.reshape(shape)) / np.sqrt(new_var.reshape(shape) + eps)
    return InstanceNormResult(affine(xhat, weight, bias, shape), new_mean, new_var)


def instance_norm_backward(dy, x, weight=None, running_mean=None, running_var=None, *, training: bool = True,
                           eps: float = 1e-5) -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, bias}: the shared moments backward per instance, or
    dx = gamma dy/sqrt(rv + eps) when eval-mode running statistics are constants."""
    x, dy = as_float64(x), as_float64(dy)
    axes, param_axes, shape = _geometry(x)
    g_hat = dy if weight is None else dy * as_float64(weight).reshape(shape)
    if uses_input_stats(running_mean, running_var, training):
        m = moments(x, axes, eps)
        xhat, dx = m.xhat, moments_backward(g_hat, m, axes)
    else:
        s = np.sqrt(as_float64(running_var).reshape(shape) + eps)
        xhat, dx = (x - as_float64(running_mean).reshape(shape)) / s, g_hat / s
    return {"x": dx, "weight": (dy * xhat).sum(axis=param_axes), "bias": dy.sum(axis=param_axes)}
