"""Batch Normalization (Ioffe & Szegedy, 2015, "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift", Algorithm 1 and 2).

Input (N, C, *S) with 0 to 3 spatial dims; statistics per channel over (N, *S).
Running-statistics conventions default to PyTorch's `nn.BatchNorm*d`:
- momentum_style="new": r <- (1 - momentum) r + momentum * stat   (PyTorch);
  "decay": r <- momentum r + (1 - momentum) stat                 (Keras, Flax, ONNX);
- momentum=None: cumulative average, factor 1/num_batches_tracked after the increment;
- running_var_style="unbiased": the running variance is fed sigma^2 * n/(n-1) (PyTorch);
  "biased": the population variance (ONNX, Keras).
- moving_average="ema" (PyTorch): the update above with factor a (a = momentum or 1 - momentum);
  "debiased": the bias-corrected moving average of the batch statistics seen so far,
      sum_k d^(t-k) stat_k / sum_k d^(t-k),  d = 1 - a,  t = num_batches_tracked + 1,
  which is r <- (1 - g) r + g stat with g = a / (1 - d^t) (= 1/t for a = 0). It is Caffe's
  BatchNorm layer (blobs mean_sum <- d mean_sum + mu_B, var_sum <- d var_sum + m/(m-1) var_B and the
  scale factor s <- d s + 1 = (1 - d^t)/(1 - d), all from 0; inference uses sum/s:
  moving_average_fraction = d, running = sum/s) and the zero-debiased EMA of Kingma & Ba 2015
  (Adam, sec. 3) as TensorFlow's `assign_moving_average(..., zero_debias=True)` keeps it (a biased
  accumulator from 0 and local_step = t; the variable holds biased/(1 - d^t): running here). The
  running buffers hold that debiased value, so inference is unchanged; num_batches_tracked is t.
  The initial buffers have weight 0 (t = 0: the first step replaces them). Needs a momentum.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from normspec.spec.moments import as_float64, moments, moments_backward

MOMENTUM_STYLES = ("new", "decay")
RUNNING_VAR_STYLES = ("unbiased", "biased")
MOVING_AVERAGES = ("ema", "debiased")


def debiased_factor(a: float, steps: int) -> float:
    """g = a / (1 - (1 - a)^steps): the weight of the newest statistic in the bias-corrected
    average after `steps` updates with EMA factor a (1/steps for a = 0, Caffe's d = 1)."""
    if steps < 1:
        raise ValueError(f"the debiased moving average needs at least one update, got {steps}")
    if a == 0.0:
        return 1.0 / steps
    return a / -math.expm1(steps * math.log1p(-a)) if a < 1.0 else 1.0


class BatchNormResult(NamedTuple):
    y: np.ndarray
    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    num_batches_tracked: int


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _reduction_axes(x: np.ndarray) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.ndim))


def _check(x: np.ndarray, training: bool, uses_batch_stats: bool) -> None:
    if x.ndim < 2 or x.ndim > 5:
        raise ValueError(f"batch_norm expects input of shape (N, C, *S) with 0-3 spatial dims, got {x.shape}")
    per_channel = x.size // max(x.shape[1], 1)
    if training and uses_batch_stats and per_channel == 1 and x.size:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input of shape {x.shape}"
        )


def batch_norm(
    x,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    training: bool = True,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    momentum_style: str = "new",
    running_var_style: str = "unbiased",
    num_batches_tracked: int = 0,
    moving_average: str = "ema",
) -> BatchNormResult:
    """y = gamma (x - mu) / sqrt(sigma^2 + eps) + beta, per channel (Algorithm 1).

    In training, or when no running statistics are given, (mu, sigma^2) are the batch's
    (biased variance); given running statistics are then updated and returned. In inference
    (training=False with running statistics) the running statistics are used (Algorithm 2).
    Mirrors `torch.nn.functional.batch_norm`, except that nothing is updated in place.
    """
    if momentum_style not in MOMENTUM_STYLES:
        raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {momentum_style!r}")
    if running_var_style not in RUNNING_VAR_STYLES:
        raise ValueError(f"running_var_style must be one of {RUNNING_VAR_STYLES}, got {running_var_style!r}")
    if moving_average not in MOVING_AVERAGES:
        raise ValueError(f"moving_average must be one of {MOVING_AVERAGES}, got {moving_average!r}")
    if moving_average == "debiased" and momentum is None:
        raise ValueError("moving_average='debiased' needs a momentum (momentum=None is already the plain average)")
    x = as_float64(x)
    has_running = running_mean is not None and running_var is not None
    use_batch_stats = training or not has_running
    _check(x, training, use_batch_stats)
    shape = _channel_shape(x)
    axes = _reduction_axes(x)

    new_mean = None if running_mean is None else as_float64(running_mean)
    new_var = None if running_var is None else as_float64(running_var)
    tracked = num_batches_tracked
    if x.size == 0:
        # An empty batch (N = 0 or a spatial size 0) normalizes to an empty output; it has no
        # statistics, so the running statistics are left as they are, while a training call still
        # counts in num_batches_tracked (PyTorch's convention, checked in tests/test_reach.py).
        return BatchNormResult(x.copy(), new_mean, new_var, tracked + (1 if training and has_running else 0))
    if use_batch_stats:
        m = moments(x, axes, eps)
        xhat = m.xhat
        if training and has_running:
            tracked = num_batches_tracked + 1
            factor = 1.0 / tracked if momentum is None else momentum
            if momentum_style == "decay" and momentum is not None:
                factor = 1.0 - momentum
            if moving_average == "debiased":
                factor = debiased_factor(factor, tracked)
            batch_mean = m.mean.reshape(-1)
            batch_var = m.var.reshape(-1)
            if running_var_style == "unbiased":
                batch_var = batch_var * m.count / (m.count - 1)
            new_mean = (1.0 - factor) * new_mean + factor * batch_mean
            new_var = (1.0 - factor) * new_var + factor * batch_var
    else:
        xhat = (x - new_mean.reshape(shape)) / np.sqrt(new_var.reshape(shape) + eps)

    y = xhat
    if weight is not None:
        y = y * as_float64(weight).reshape(shape)
    if bias is not None:
        y = y + as_float64(bias).reshape(shape)
    return BatchNormResult(y, new_mean, new_var, tracked)


def batch_norm_backward(
    dy,
    x,
    weight=None,
    running_mean=None,
    running_var=None,
    *,
    training: bool = True,
    eps: float = 1e-5,
) -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, bias} of `batch_norm` (Ioffe & Szegedy 2015, sec. 3).

    With batch statistics, mu and sigma depend on x (the shared moments backward); with
    running statistics they are constants and dx = dy * gamma / sqrt(rv + eps).
    """
    x, dy = as_float64(x), as_float64(dy)
    shape = _channel_shape(x)
    axes = _reduction_axes(x)
    gamma = np.ones(shape) if weight is None else as_float64(weight).reshape(shape)
    g_hat = dy * gamma
    has_running = running_mean is not None and running_var is not None
    if training or not has_running:
        m = moments(x, axes, eps)
        xhat, dx = m.xhat, moments_backward(g_hat, m, axes)
    else:
        s = np.sqrt(as_float64(running_var).reshape(shape) + eps)
        xhat = (x - as_float64(running_mean).reshape(shape)) / s
        dx = g_hat / s
    return {"x": dx, "weight": (dy * xhat).sum(axis=axes), "bias": dy.sum(axis=axes)}
