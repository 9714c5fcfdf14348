"""Batch Renormalization forward/backward in NumPy (Ioffe 2017, Algorithm 1, or Keras'
BatchNormalization(renorm=True) with form="keras"); r, d are constants in backward."""
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
    low = 1.0 if params.get("rmin") is None else params["rmin"]
    if params.get("rmax", 3.0) < low or params.get("dmax", 5.0) < 0.0 or low < 0.0:
        raise ValueError(f"batch_renorm needs rmax >= max(rmin, 1 without rmin) and dmax >= 0, got "
                         f"{params.get('rmin')}, {params.get('rmax')}, {params.get('dmax')}")
    keras = params.get("form", "ioffe") == "keras"
    if keras and (inputs.get("moving_mean") is None or inputs.get("moving_std") is None):
        raise ValueError("batch_renorm form='keras' needs moving_mean and moving_std")
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
    keras = params.get("form", "ioffe") == "keras"
    eps = acc.type(params.get("eps", 1e-5))
    if not params.get("training", True):
        xr = (x.astype(acc) - _eval_mean(inputs, params, acc, shape)) / _eval_std(inputs, params, acc, shape)
        return xr, xr, None, None, None, None, None
    xhat, mean, var, inv_std = normalize(x, axes, params.get("eps", 1e-5))
    sigma_b = np.sqrt(var + eps)
    if keras:  # Keras floors the renorm std at sqrt(eps) and clips r to [rmin, rmax]
        rs = np.maximum(rs, np.sqrt(eps))
    rmax, dmax = params.get("rmax", 3.0), params.get("dmax", 5.0)
    rmin = 1.0 / rmax if params.get("rmin") is None else params["rmin"]
    r = np.clip(sigma_b / rs, acc.type(rmin), acc.type(rmax))
    d = np.clip((mean - rm) / rs, acc.type(-dmax), acc.type(dmax))
    return xhat * r + d, xhat, mean, sigma_b, inv_std, r, d


def _eval_mean(inputs, params, acc, shape):
    role = "moving_mean" if params.get("form", "ioffe") == "keras" else "running_mean"
    return inputs[role].astype(acc).reshape(shape)


def _eval_std(inputs, params, acc, shape):
    """Inference divisor: running_std (Ioffe), or Keras' sqrt(relu(moving_std^2 - eps) + eps)."""
    if params.get("form", "ioffe") != "keras":
        return inputs["running_std"].astype(acc).reshape(shape)
    ms = inputs["moving_std"].astype(acc).reshape(shape)
    eps = acc.type(params.get("eps", 1e-5))
    return np.sqrt(np.maximum(ms * ms - eps, acc.type(0)) + eps)


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
        keras = params.get("form", "ioffe") == "keras"
        momentum = params.get("momentum", 0.1)
        renorm_momentum = params.get("renorm_momentum") if keras and params.get("renorm_momentum") is not None \
            else momentum

        def weight(m):
            return m if params.get("momentum_style", "new") == "new" else 1.0 - m

        def ema(old, new, a):
            acc = mean.dtype
            return (old.astype(acc) + a * (new.reshape(-1) - old.astype(acc))).astype(old.dtype)
        out["running_mean"] = ema(rm, mean, weight(renorm_momentum))
        out["running_std"] = ema(rs, sigma_b, weight(renorm_momentum))
        if keras:  # Keras' inference statistics, with `momentum`
            out["moving_mean"] = ema(inputs["moving_mean"], mean, weight(momentum))
            out["moving_std"] = ema(inputs["moving_std"], sigma_b, weight(momentum))
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
        dx = g / _eval_std(inputs, params, xr.dtype, shape)
    grads = {"x": dx.astype(x.dtype)}
    if inputs.get("weight") is not None:
        grads["weight"] = (dy * xr).sum(axis=axes).astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dy.sum(axis=axes).astype(inputs["bias"].dtype)
    return grads


numpy_kernel("batch_renorm", backward=backward)(forward)
