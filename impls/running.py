"""Running-statistics updates shared by the backends' batch-norm kernels (NumPy and torch alike).

The conventions (PyTorch's new-value momentum, Keras' decay momentum, momentum=None as the
cumulative average over num_batches_tracked, the unbiased or biased variance fed to the running
variance, the bias-corrected moving average of Caffe and TF's zero_debias) are mapped here once
for every kernel; the spec (`normspec.spec.batch_norm`) states them independently, so a mistake
here shows up against it.
"""
from __future__ import annotations

import math


def uses_batch_statistics(inputs, params) -> bool:
    """Whether a call normalizes by the batch's own statistics: in training, or in eval without
    both running buffers (PyTorch's rule for BatchNorm and InstanceNorm)."""
    has_running = inputs.get("running_mean") is not None and inputs.get("running_var") is not None
    return params.get("training", True) or not has_running


def momentum_factor(params) -> float:
    """The weight of the new batch statistic in r <- (1 - f) r + f stat."""
    momentum = params.get("momentum", 0.1)
    steps = params.get("num_batches_tracked", 0) + 1
    if momentum is None:  # cumulative average: 1/num_batches_tracked after the increment
        return 1.0 / steps
    factor = 1.0 - momentum if params.get("momentum_style", "new") == "decay" else momentum
    if params.get("moving_average", "ema") == "debiased":
        # the bias-corrected average (Caffe's sum / scale factor, TF's zero_debias EMA) is an EMA
        # whose newest statistic weighs a / (1 - (1 - a)^t): 1/t where a = 0 (Caffe's fraction 1)
        # (1 - (1 - a)^t as -expm1(t log1p(-a)): no cancellation to 0 for a below the roundoff)
        if factor >= 1.0:
            return 1.0
        return 1.0 / steps if factor == 0 else factor / -math.expm1(steps * math.log1p(-factor))
    return factor


def running_update(rm, rv, mean, var, count: int, params, cast):
    """New (running_mean, running_var) from the batch's per-channel mean and biased variance
    over `count` values, computed in the statistics' dtype; `cast(new, like)` returns `new` in the
    dtype of the buffer `like` (NumPy: `new.astype(like.dtype)`, torch: `new.to(like.dtype)`)."""
    factor = momentum_factor(params)
    if params.get("running_var_style", "unbiased") == "unbiased":
        var = var * (count / (count - 1))
    new_rm = (1 - factor) * cast(rm, mean) + factor * mean
    new_rv = (1 - factor) * cast(rv, var) + factor * var
    return cast(new_rm, rm), cast(new_rv, rv)
