"""Batch Renormalization forward/backward in NumPy (Ioffe 2017, Algorithm 1); r, d are constants in backward."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel
from normspec.impls.numpy_kernels.moments import normalize, normalize_backward


def _geometry(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _check(inputs, params):
    x = inputs["x"]
    if inputs.get("running_mean") is None or inputs.get("running_std") is None:
        raise ValueError("batch_renorm needs running_mean and running_std")
    if params.get("rmax", 3.0) < 1.0 or params.get("dmax", 5.0) < 0.0:
        raise ValueError(f"batch_renorm needs rmax >= 1 and dmax >= 0, got {params.get('rmax')}, {params.get('dmax')}")
    if params.get("training", True) and x.size // x.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")


def _normalized(inputs, params):
    """(r xhat + d, xhat, batch mean, sigma_B, inv_std, r, d) in the accumulation dtype."""
    _check(inputs, params)
    x = inputs["x"]
    axes, shape = _geometry(x)
    acc = accumulation_dtype(x.dtype)
    rm = inputs["running_mean"].astype(acc).reshape(shape)
    rs = inputs["running_std"].astype(acc).reshape(shape)
    if not params.get("training", True):
        xr = (x.astype(acc) - rm) / rs
        return xr, xr, None, None, None, None, None
    xhat, mean, var, inv_std = normalize(x, axes, params.get("eps", 1e-5))
    sigma_b = np.sqrt(var + acc.type(params.get("eps", 1e-5)))
    rmax, dmax = params.get("rmax", 3.0), params.get("dmax", 5.0)
    r = np.clip(sigma_b / rs, acc.type(1.0 / rmax), acc.type(rmax))
    d = np.clip((mean - rm) / rs, acc.type(-dmax), acc.type(dmax))
    return xhat * r + d, xhat, mean, sigma_b, inv_std, r, d


def forward(inputs, params):
    x = inputs["x"]
    _, shape = _geometry(x)
    xr, _, mean, sigma_b, _, _, _ = _normalized(inputs, params)
    y = xr
    if inputs.get("weight") is not None:
        y = y * inputs["weight"].astype(y.dtype).reshape(shape)
    if inputs.get("bias") is not None:
        y = y + inputs["bias"].astype(y.dtype).reshape(shape)
    rm, rs = inputs["running_mean"], inputs["running_std"]
    out = {"y": y.astype(x.dtype)}
    if params.get("training", True):
        momentum = params.get("momentum", 0.1)
        a = momentum if params.get("momentum_style", "new") == "new" else 1.0 - momentum
        acc = mean.dtype
        out["running_mean"] = (rm.astype(acc) + a * (mean.reshape(-1) - rm.astype(acc))).astype(rm.dtype)
        out["running_std"] = (rs.astype(acc) + a * (sigma_b.reshape(-1) - rs.astype(acc))).astype(rs.dtype)
    return out


def backward(inputs, params, dy):
    x = inputs["x"]
    axes, shape = _geometry(x)
    xr, xhat, _, _, inv_std, r, d = _normalized(inputs, params)
    dy = dy.astype(xr.dtype)
    g = dy if inputs.get("weight") is None else dy * inputs["weight"].astype(xr.dtype).reshape(shape)
    if params.get("training", True):
        dx = r * normalize_backward(g, xhat, inv_std, axes)
    else:
        dx = g / inputs["running_std"].astype(xr.dtype).reshape(shape)
    grads = {"x": dx.astype(x.dtype)}
    if inputs.get("weight") is not None:
        grads["weight"] = (dy * xr).sum(axis=axes).astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dy.sum(axis=axes).astype(inputs["bias"].dtype)
    return grads


numpy_kernel("batch_renorm", backward=backward)(forward)
