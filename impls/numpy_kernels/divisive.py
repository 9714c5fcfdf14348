"""Divisive normalization (Ren et al. 2017) in NumPy: field averages from padded sliding windows,
closed-form backward dv = g/r - v M_B^T(g v/r^3), dx = dv - M_A^T dv."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel


def _sum(a, axis, before, after):
    pad = [(0, 0)] * a.ndim
    pad[axis] = (before, after)
    return sliding_window_view(np.pad(a, pad), before + after + 1, axis=axis).sum(axis=-1)


class _Field:
    def __init__(self, entries, shape, border, acc):
        if len(entries) != len(shape) or entries[0] not in (1, "all"):
            raise ValueError(f"field {entries!r} does not fit input shape {shape} (batch entry must be 1 or 'all')")
        self.full = tuple(a for a, e in enumerate(entries) if e == "all")
        self.windows = [(a, (e - 1) // 2, e - 1 - (e - 1) // 2) for a, e in enumerate(entries) if e not in ("all", 1)]
        self.shape = shape
        if border == "zero":
            self.divisor = acc.type(np.prod([b + f + 1 for _, b, f in self.windows]))
        else:
            ones = np.ones(shape, acc)
            for axis, b, f in self.windows:
                ones = _sum(ones, axis, b, f)
            self.divisor = ones

    def mean(self, a):
        if self.full:
            a = np.broadcast_to(a.mean(axis=self.full, keepdims=True), self.shape)
        for axis, b, f in self.windows:
            a = _sum(a, axis, b, f)
        return a / self.divisor

    def mean_t(self, g):
        g = g / self.divisor
        for axis, b, f in reversed(self.windows):
            g = _sum(g, axis, f, b)
        if self.full:
            g = np.broadcast_to(g.mean(axis=self.full, keepdims=True), self.shape)
        return g


def _parts(inputs, params):
    x = inputs["x"]
    acc = accumulation_dtype(x.dtype)
    border = params.get("border", "exclude")
    a = _Field(tuple(params["summation"]), x.shape, border, acc)
    b = _Field(tuple(params["suppression"]), x.shape, border, acc)
    xa = x.astype(acc)
    v = xa - a.mean(xa)
    r = np.sqrt(acc.type(params.get("eps", 1.0)) + b.mean(v * v))
    return v, r, a, b, (1, x.shape[1]) + (1,) * (x.ndim - 2)


def forward(inputs, params):
    v, r, _, _, shape = _parts(inputs, params)
    y = v / r
    if inputs.get("weight") is not None:
        y = y * inputs["weight"].astype(y.dtype).reshape(shape)
    if inputs.get("bias") is not None:
        y = y + inputs["bias"].astype(y.dtype).reshape(shape)
    return {"y": y.astype(inputs["x"].dtype)}


def backward(inputs, params, dy):
    x = inputs["x"]
    v, r, a, b, shape = _parts(inputs, params)
    dy = dy.astype(v.dtype)
    g = dy if inputs.get("weight") is None else dy * inputs["weight"].astype(v.dtype).reshape(shape)
    dv = g / r - v * b.mean_t(g * v / (r * r * r))
    grads = {"x": (dv - a.mean_t(dv)).astype(x.dtype)}
    axes = (0,) + tuple(range(2, x.ndim))
    if inputs.get("weight") is not None:
        grads["weight"] = (dy * (v / r)).sum(axis=axes).astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dy.sum(axis=axes).astype(inputs["bias"].dtype)
    return grads


numpy_kernel("divisive_norm", backward=backward)(forward)
