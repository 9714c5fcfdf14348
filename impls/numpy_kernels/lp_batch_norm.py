"""Lp batch normalization forward/backward in NumPy (Hoffer et al. 2018, sec. 5), per channel."""
from __future__ import annotations

import math

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel


def _constant(p, count, given):
    if given is not None:
        return float(given)
    if math.isinf(p):
        # Hoffer et al.'s reference code (norm_matters, models/lp_norm.py TopkBatchNorm2d)
        return 0.5 * (1.0 + math.sqrt(math.pi * math.log(4.0))) / math.sqrt(2.0 * math.log(count))
    # (E|g|^p)^(-1/p) = (sqrt(pi) / (2^(p/2) Gamma((p+1)/2)))^(1/p)
    return (math.sqrt(math.pi) / (2.0 ** (p / 2) * math.gamma((p + 1) / 2))) ** (1.0 / p)


def _rows(x, acc):
    """x as (C, m) in the accumulation dtype: one row per channel."""
    return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1).astype(acc)


def _back(rows, shape):
    return np.moveaxis(rows.reshape((shape[1], shape[0]) + tuple(shape[2:])), 0, 1)


def _check(x, params, batch):
    p, k = params.get("p", 1.0), params.get("k", 1)
    count = x.size // x.shape[1]
    if not p >= 1.0:
        raise ValueError(f"lp_batch_norm needs p >= 1, got {p!r}")
    if math.isinf(p) and not 1 <= k <= count:
        raise ValueError(f"top-k needs 1 <= k <= {count}, got k={k!r}")
    if params.get("training", True) and batch and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")


def _batch_scale(z, p, k, c):
    """S per row of z and dS/dz (ties in top-k share the subgradient evenly)."""
    a = np.abs(z)
    if math.isinf(p):
        kth = np.partition(a, a.shape[1] - k, axis=1)[:, a.shape[1] - k][:, None]
        above, tied = a > kth, a == kth
        n_above = above.sum(axis=1, keepdims=True)
        share = (k - n_above) / tied.sum(axis=1, keepdims=True)
        w = (above + tied * share).astype(z.dtype) / k
        return c * (w * a).sum(axis=1, keepdims=True), c * w * np.sign(z)
    powered = a if p == 1 else a**p
    mp = powered.mean(axis=1, keepdims=True)
    s = c * (mp if p == 1 else mp ** (1.0 / p))
    safe = np.where(mp > 0, mp, 1)
    ds = np.where(mp > 0, c * safe ** (1.0 / p - 1.0) * (a ** (p - 1) if p != 1 else 1.0) * np.sign(z), 0) / z.shape[1]
    return s, ds.astype(z.dtype)


def _den(s, eps, placement):
    return s + eps if placement == "outside" else np.sqrt(s * s + eps)


def _state(inputs, params):
    x = inputs["x"]
    has_running = inputs.get("running_mean") is not None and inputs.get("running_scale") is not None
    batch = params.get("training", True) or not has_running
    _check(x, params, batch)
    acc = accumulation_dtype(x.dtype)
    rows = _rows(x, acc)
    eps, placement = acc.type(params.get("eps", 1e-5)), params.get("eps_placement", "outside")
    if batch:
        p = params.get("p", 1.0)
        shift = rows[:, :1].copy()  # shifted mean: a constant channel centres to exactly 0
        mean = shift + (rows - shift).mean(axis=1, keepdims=True)
        z = (rows - shift) - (mean - shift)
        s, ds = _batch_scale(z, p, params.get("k", 1), acc.type(_constant(p, rows.shape[1], params.get("constant"))))
    else:
        mean = inputs["running_mean"].astype(acc)[:, None]
        z = rows - mean
        s, ds = inputs["running_scale"].astype(acc)[:, None], None
    return x, batch, mean, z, s, ds, _den(s, eps, placement), eps, placement


def _affine(yrows, inputs):
    if inputs.get("weight") is not None:
        yrows = yrows * inputs["weight"].astype(yrows.dtype)[:, None]
    if inputs.get("bias") is not None:
        yrows = yrows + inputs["bias"].astype(yrows.dtype)[:, None]
    return yrows


def forward(inputs, params):
    x, batch, mean, z, s, _, den, _, _ = _state(inputs, params)
    out = {"y": _back(_affine(z / den, inputs), x.shape).astype(x.dtype)}
    if params.get("training", True) and inputs.get("running_mean") is not None:
        m = params.get("momentum", 0.1)
        f = m if params.get("momentum_style", "new") == "new" else 1.0 - m
        rm, rs = inputs["running_mean"], inputs["running_scale"]
        out["running_mean"] = ((1 - f) * rm.astype(mean.dtype) + f * mean[:, 0]).astype(rm.dtype)
        out["running_scale"] = ((1 - f) * rs.astype(s.dtype) + f * s[:, 0]).astype(rs.dtype)
    return out


def backward(inputs, params, dy):
    x, batch, _, z, s, ds, den, eps, placement = _state(inputs, params)
    dyr = _rows(dy, z.dtype)
    g = dyr if inputs.get("weight") is None else dyr * inputs["weight"].astype(z.dtype)[:, None]
    if batch:
        slope = np.ones_like(s) if placement == "outside" else s / den
        dz = g / den - ds * slope * (g * z).sum(axis=1, keepdims=True) / (den * den)
        dx = dz - dz.mean(axis=1, keepdims=True)
    else:
        dx = g / den
    with np.errstate(over="ignore"):  # a gradient past the dtype's range rounds to inf
        grads = {"x": _back(dx, x.shape).astype(x.dtype)}
    if inputs.get("weight") is not None:
        grads["weight"] = (dyr * (z / den)).sum(axis=1).astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dyr.sum(axis=1).astype(inputs["bias"].dtype)
    return grads


numpy_kernel("lp_batch_norm", backward=backward)(forward)
