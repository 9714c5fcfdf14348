"""BatchNorm forward/backward in NumPy (Ioffe & Szegedy 2015), with the spec's conventions."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel
from normspec.impls.numpy_kernels.moments import affine_backward, apply_affine, normalize, normalize_backward
from normspec.impls.running import running_update, uses_batch_statistics


def _geometry(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _check(x, params, batch):
    if params.get("training", True) and batch and x.size // x.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")


def _normalized(inputs, params):
    x = inputs["x"]
    axes, shape = _geometry(x)
    eps = params.get("eps", 1e-5)
    batch = uses_batch_statistics(inputs, params)
    _check(x, params, batch)
    if batch:
        return (*normalize(x, axes, eps), batch)
    acc = accumulation_dtype(x.dtype)
    mean = inputs["running_mean"].astype(acc).reshape(shape)
    var = inputs["running_var"].astype(acc).reshape(shape)
    inv_std = 1.0 / np.sqrt(var + acc.type(eps))
    return (x.astype(acc) - mean) * inv_std, mean, var, inv_std, batch


def _running_update(inputs, params, mean, var, count):
    """The new running statistics (`normspec.impls.running`), in the buffers' dtype."""
    return running_update(inputs["running_mean"], inputs["running_var"], mean.reshape(-1), var.reshape(-1), count,
                          params, _cast)


def _cast(new, like):
    with np.errstate(over="ignore"):  # a running statistic past the dtype's range rounds to inf
        return new.astype(like.dtype)


def forward(inputs, params):
    x = inputs["x"]
    _, shape = _geometry(x)
    xhat, mean, var, _, batch = _normalized(inputs, params)
    out = {"y": apply_affine(xhat, inputs, shape).astype(x.dtype)}
    if params.get("training", True) and inputs.get("running_mean") is not None:
        count = x.size // x.shape[1]
        out["running_mean"], out["running_var"] = _running_update(inputs, params, mean, var, count)
    return out


def backward(inputs, params, dy):
    x = inputs["x"]
    axes, shape = _geometry(x)
    xhat, _, _, inv_std, batch = _normalized(inputs, params)
    g_hat, grads = affine_backward(dy.astype(xhat.dtype), xhat, inputs, axes, shape)
    dx = normalize_backward(g_hat, xhat, inv_std, axes) if batch else g_hat * inv_std
    return {"x": dx.astype(x.dtype), **grads}


numpy_kernel("batch_norm", backward=backward)(forward)
