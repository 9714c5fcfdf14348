"""InstanceNorm forward/backward in NumPy (Ulyanov et al. 2016), PyTorch's running-stat semantics."""
from __future__ import annotations

import math

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel
from normspec.impls.numpy_kernels.moments import affine_backward, apply_affine, normalize, normalize_backward
from normspec.impls.running import uses_batch_statistics


def _geometry(x):
    if x.ndim < 3:
        raise ValueError(f"instance_norm expects (N, C, *S) with at least one spatial dim, got {x.shape}")
    return tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _normalized(inputs, params):
    """(xhat, mean, var, inv_std, whether the instance's own statistics were used)."""
    x = inputs["x"]
    axes, shape = _geometry(x)
    eps = params.get("eps", 1e-5)
    if uses_batch_statistics(inputs, params):
        if math.prod(x.shape[2:]) <= 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input of shape {x.shape}")
        return (*normalize(x, axes, eps), True)
    acc = accumulation_dtype(x.dtype)
    mean = inputs["running_mean"].astype(acc).reshape(shape)
    inv_std = 1.0 / np.sqrt(inputs["running_var"].astype(acc).reshape(shape) + acc.type(eps))
    return (x.astype(acc) - mean) * inv_std, mean, None, inv_std, False


def _running_update(inputs, params, mean, var, count):
    """Batch-mean of per-instance means and of per-instance unbiased variances (as F.instance_norm)."""
    rm, rv = inputs["running_mean"], inputs["running_var"]
    momentum = params.get("momentum", 0.1)
    factor = 0.0 if momentum is None else momentum  # nn.InstanceNorm passes momentum=None as 0.0
    n, c = mean.shape[:2]
    batch_mean = mean.reshape(n, c).mean(axis=0)
    batch_var = (var.reshape(n, c) * (count / (count - 1))).mean(axis=0)
    acc = mean.dtype
    new_rm = (1 - factor) * rm.astype(acc) + factor * batch_mean
    new_rv = (1 - factor) * rv.astype(acc) + factor * batch_var
    return new_rm.astype(rm.dtype), new_rv.astype(rv.dtype)


def forward(inputs, params):
    x = inputs["x"]
    _, shape = _geometry(x)
    xhat, mean, var, _, own = _normalized(inputs, params)
    out = {"y": apply_affine(xhat, inputs, shape).astype(x.dtype)}
    if own and inputs.get("running_mean") is not None and inputs.get("running_var") is not None:
        out["running_mean"], out["running_var"] = _running_update(inputs, params, mean, var, math.prod(x.shape[2:]))
    return out


def backward(inputs, params, dy):
    x = inputs["x"]
    axes, shape = _geometry(x)
    xhat, _, _, inv_std, own = _normalized(inputs, params)
    g_hat, grads = affine_backward(dy.astype(xhat.dtype), xhat, inputs, (0,) + axes, shape)
    dx = normalize_backward(g_hat, xhat, inv_std, axes) if own else g_hat * inv_std
    return {"x": dx.astype(x.dtype), **grads}


numpy_kernel("instance_norm", backward=backward)(forward)
