"""Recurrent batch norm over (N, T, F) in NumPy: frame-wise (Cooijmans et al. 2017) or
sequence-wise (Laurent et al. 2016) statistics, per-step population statistics in eval."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel
from normspec.impls.numpy_kernels.moments import normalize, normalize_backward


def _axes(params):
    statistics = params.get("statistics", "frame")
    if statistics not in ("frame", "sequence"):
        raise ValueError(f"statistics must be 'frame' or 'sequence', got {statistics!r}")
    return (0,) if statistics == "frame" else (0, 1)


def _state(inputs, params):
    x = inputs["x"]
    if x.ndim != 3:
        raise ValueError(f"recurrent_batch_norm expects input of shape (N, T, F), got {x.shape}")
    axes = _axes(params)
    rm, rv = inputs.get("running_mean"), inputs.get("running_var")
    batch = params.get("training", True) or rm is None or rv is None
    frame = axes == (0,)
    if rm is not None and frame and (rm.ndim != 2 or rm.shape[1] != x.shape[2]):
        raise ValueError(f"frame-wise running statistics must have shape (T_max, {x.shape[2]}), got {rm.shape}")
    if rm is not None and not frame and rm.shape != (x.shape[2],):
        raise ValueError(f"sequence-wise running statistics must have shape ({x.shape[2]},), got {rm.shape}")
    if params.get("training", True):
        count = x.shape[0] * (1 if frame else x.shape[1])
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per feature when training, got input of shape {x.shape}")
        if rm is not None and frame and x.shape[1] > rm.shape[0]:
            raise ValueError(f"training on T={x.shape[1]} steps needs T_max >= T, got T_max={rm.shape[0]}")
    if batch:
        xhat, mean, var, inv_std = normalize(x, axes, params.get("eps", 1e-5))
        return x, axes, batch, xhat, mean, var, inv_std
    acc = accumulation_dtype(x.dtype)
    if frame:
        steps = np.clip(np.arange(x.shape[1]), None, rm.shape[0] - 1)
        mean, var = rm.astype(acc)[steps][None], rv.astype(acc)[steps][None]
    else:
        mean, var = rm.astype(acc)[None, None], rv.astype(acc)[None, None]
    inv_std = 1 / np.sqrt(var + acc.type(params.get("eps", 1e-5)))
    return x, axes, batch, (x.astype(acc) - mean) * inv_std, mean, var, inv_std


def forward(inputs, params):
    x, axes, batch, xhat, mean, var, _ = _state(inputs, params)
    y = xhat
    if inputs.get("weight") is not None:
        y = y * inputs["weight"].astype(y.dtype)
    if inputs.get("bias") is not None:
        y = y + inputs["bias"].astype(y.dtype)
    out = {"y": y.astype(x.dtype)}
    rm, rv = inputs.get("running_mean"), inputs.get("running_var")
    if params.get("training", True) and rm is not None:
        m = params.get("momentum", 0.1)
        f = m if params.get("momentum_style", "new") == "new" else 1.0 - m
        count = int(np.prod([x.shape[a] for a in axes]))
        if params.get("running_var_style", "unbiased") == "unbiased":
            var = var * (count / (count - 1))
        new_rm, new_rv = rm.astype(mean.dtype), rv.astype(var.dtype)
        t = x.shape[1] if axes == (0,) else None
        rows = slice(0, t)
        new_rm[rows] = (1 - f) * new_rm[rows] + f * mean.reshape(new_rm[rows].shape)
        new_rv[rows] = (1 - f) * new_rv[rows] + f * var.reshape(new_rv[rows].shape)
        out["running_mean"], out["running_var"] = new_rm.astype(rm.dtype), new_rv.astype(rv.dtype)
    return out


def backward(inputs, params, dy):
    x, axes, batch, xhat, _, _, inv_std = _state(inputs, params)
    dy = dy.astype(xhat.dtype)
    g = dy if inputs.get("weight") is None else dy * inputs["weight"].astype(xhat.dtype)
    dx = normalize_backward(g, xhat, inv_std, axes) if batch else g * inv_std
    grads = {"x": dx.astype(x.dtype)}
    if inputs.get("weight") is not None:
        grads["weight"] = (dy * xhat).sum(axis=(0, 1)).astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dy.sum(axis=(0, 1)).astype(inputs["bias"].dtype)
    return grads


numpy_kernel("recurrent_batch_norm", backward=backward)(forward)
