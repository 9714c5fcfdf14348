"""Recurrent batch normalization over sequences (N, T, F).

- statistics="frame": statistics per time step, over the batch (Cooijmans, Ballas, Laurent,
  Gulcehre & Courville 2017, "Recurrent Batch Normalization", eq. 5-6, sec. 3): per-time-step
  population statistics running_mean/running_var of shape (T_max, F); in inference a step
  t >= T_max uses those of step T_max - 1 ("the population statistics of time T_max").
- statistics="sequence": statistics per feature over every (batch, time) position (Laurent,
  Pereyra, Brakel, Zhang & Bengio 2016, "Batch Normalized Recurrent Neural Networks", sec. 4,
  "sequence-wise normalization"): BatchNorm on the (N*T, F) matrix; running stats (F,).
y = gamma (x - mu)/sqrt(sigma^2 + eps) + beta, biased batch variance, affine per feature (F,).
Training with frame-wise running statistics needs T <= T_max and updates steps 0..T-1 only.
Running-statistics conventions as BatchNorm's (momentum_style, running_var_style).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normspec.spec.moments import as_float64, moments, moments_backward

STATISTICS = ("frame", "sequence")


class RecurrentBatchNormResult(NamedTuple):
    y: np.ndarray
    running_mean: np.ndarray | None
    running_var: np.ndarray | None


def stats_axes(statistics: str) -> tuple[int, ...]:
    return (0,) if statistics == "frame" else (0, 1)


def check(x_shape, running_shape, statistics, training, batch, momentum_style="new", running_var_style="unbiased"):
    if statistics not in STATISTICS:
        raise ValueError(f"statistics must be one of {STATISTICS}, got {statistics!r}")
    if len(x_shape) != 3:
        raise ValueError(f"recurrent_batch_norm expects input of shape (N, T, F), got {x_shape}")
    if momentum_style not in ("new", "decay") or running_var_style not in ("unbiased", "biased"):
        raise ValueError(f"unknown convention momentum_style={momentum_style!r} "
                         f"running_var_style={running_var_style!r}")
    n, t, f = x_shape
    if running_shape is not None:
        if statistics == "frame" and (len(running_shape) != 2 or running_shape[1] != f or running_shape[0] < 1):
            raise ValueError(f"frame-wise running statistics must have shape (T_max, {f}), got {running_shape}")
        if statistics == "sequence" and tuple(running_shape) != (f,):
            raise ValueError(f"sequence-wise running statistics must have shape ({f},), got {running_shape}")
        if training and statistics == "frame" and t > running_shape[0]:
            raise ValueError(f"training on T={t} steps needs population statistics for every step, "
                             f"got T_max={running_shape[0]}")
    count = n if statistics == "frame" else n * t
    if training and batch and count <= 1:
        raise ValueError(f"Expected more than 1 value per feature when training, got input of shape {x_shape}")


def population_rows(t: int, t_max: int) -> np.ndarray:
    """The row of the (T_max, F) population statistics each step uses: min(t, T_max - 1)."""
    return np.minimum(np.arange(t), t_max - 1)


def recurrent_batch_norm(x, weight=None, bias=None, running_mean=None, running_var=None, *, statistics: str = "frame",
                         training: bool = True, momentum: float = 0.1, eps: float = 1e-5, momentum_style: str = "new",
                         running_var_style: str = "unbiased") -> RecurrentBatchNormResult:
    """Forward; running statistics (if given) are updated in training and used in eval."""
    x = as_float64(x)
    has_running = running_mean is not None and running_var is not None
    batch = training or not has_running
    check(x.shape, None if running_mean is None else np.shape(running_mean), statistics, training, batch,
          momentum_style, running_var_style)
    axes = stats_axes(statistics)
    new_rm = None if running_mean is None else as_float64(running_mean)
    new_rv = None if running_var is None else as_float64(running_var)
    if batch:
        m = moments(x, axes, eps)
        xhat = m.xhat
        if training and has_running:
            f = momentum if momentum_style == "new" else 1.0 - momentum
            var = m.var * (m.count / (m.count - 1) if running_var_style == "unbiased" else 1.0)
            mean, var = m.mean.reshape(-1, x.shape[2]), var.reshape(-1, x.shape[2])
            if statistics == "sequence":
                mean, var = mean[0], var[0]
            steps = slice(0, x.shape[1]) if statistics == "frame" else slice(None)
            new_rm, new_rv = new_rm.copy(), new_rv.copy()
            new_rm[steps] = (1.0 - f) * new_rm[steps] + f * mean
            new_rv[steps] = (1.0 - f) * new_rv[steps] + f * var
    else:
        mean, var = population(new_rm, new_rv, x.shape, statistics)
        xhat = (x - mean) / np.sqrt(var + eps)
    y = xhat
    if weight is not None:
        y = y * as_float64(weight)
    if bias is not None:
        y = y + as_float64(bias)
    return RecurrentBatchNormResult(y, new_rm, new_rv)


def population(running_mean, running_var, x_shape, statistics):
    """The running statistics broadcast against x: per step (rows min(t, T_max-1)) or per feature."""
    if statistics == "frame":
        rows = population_rows(x_shape[1], running_mean.shape[0])
        return running_mean[rows][None], running_var[rows][None]
    return running_mean.reshape(1, 1, -1), running_var.reshape(1, 1, -1)


def recurrent_batch_norm_backward(dy, x, weight=None, running_mean=None, running_var=None, *,
                                  statistics: str = "frame", training: bool = True, eps: float = 1e-5) -> dict:
    """Closed-form gradients {x, weight, bias}: BatchNorm's backward over the statistics' sets."""
    x, dy = as_float64(x), as_float64(dy)
    has_running = running_mean is not None and running_var is not None
    batch = training or not has_running
    check(x.shape, None if running_mean is None else np.shape(running_mean), statistics, training, batch)
    g = dy if weight is None else dy * as_float64(weight)
    if batch:
        m = moments(x, stats_axes(statistics), eps)
        xhat, dx = m.xhat, moments_backward(g, m, stats_axes(statistics))
    else:
        mean, var = population(as_float64(running_mean), as_float64(running_var), x.shape, statistics)
        s = np.sqrt(var + eps)
        xhat, dx = (x - mean) / s, g / s
    return {"x": dx, "weight": (dy * xhat).sum(axis=(0, 1)), "bias": dy.sum(axis=(0, 1))}
