"""LRN (five conventions) and MatConvNet cross-channel / spatial normalization in NumPy.

Window sums come from a zero-padded `sliding_window_view`, in float32 for float16 inputs;
the backward is the closed form dx = dy d^-beta - 2 scale beta x W^T(dy x d^(-beta-1)).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel


def _sum(a, axis, before, after):
    pad = [(0, 0)] * a.ndim
    pad[axis] = (before, after)
    return sliding_window_view(np.pad(a, pad), before + after + 1, axis=axis).sum(axis=-1)


def _extent(size, trailing):
    before = (size - 1) // 2 if trailing else size // 2
    return before, size - 1 - before


def _plan(norm, shape, params):
    """(windows [(axis, before, after)], scale, offset, average, beta)."""
    if norm == "local_response_norm":
        size, convention = params["size"], params.get("convention", "pytorch")
        alpha, beta, k = params.get("alpha", 1e-4), params.get("beta", 0.75), params.get("k", 1.0)
        if len(shape) < 3:
            raise ValueError(f"local_response_norm needs a 3-D or higher input, got shape {shape}")
        if convention in ("caffe_across", "caffe_within", "tensorflow") and size % 2 == 0:
            raise ValueError(f"{convention} LRN supports odd sizes only, got {size}")
        if convention == "caffe_within":
            nsp = len(shape) - 2
            b, a = _extent(size, True)
            return [(ax, b, a) for ax in range(2, len(shape))], alpha / size**nsp, 1.0, False, beta
        b, a = _extent(size, convention != "pytorch")
        return [(1, b, a)], alpha if convention == "tensorflow" else alpha / size, k, False, beta
    if norm == "matconvnet_cross_channel":
        b, a = _extent(params.get("size", 5), True)
        return [(1, b, a)], params.get("alpha", 1e-4), params.get("kappa", 1.0), False, params.get("beta", 0.75)
    sizes = params.get("size", (2, 2))
    windows = [(2 + i, *_extent(s, True)) for i, s in enumerate(sizes)]
    return windows, params.get("alpha", 10.0), 1.0, params.get("reduction", "mean") == "mean", params.get("beta", 2.0)


def _reduce(a, windows, transpose=False):
    for axis, before, after in (reversed(windows) if transpose else windows):
        a = _sum(a, axis, after, before) if transpose else _sum(a, axis, before, after)
    return a


def _denominator(norm, x, params):
    windows, scale, offset, average, beta = _plan(norm, x.shape, params)
    acc = accumulation_dtype(x.dtype)
    xa = x.astype(acc)
    total = _reduce(xa * xa, windows)
    count = _reduce(np.ones(x.shape, acc), windows) if average else acc.type(1)
    return xa, acc.type(offset) + acc.type(scale) * (total / count), count, acc.type(scale), acc.type(beta), windows


def _forward(norm):
    def forward(inputs, params):
        x = inputs["x"]
        xa, d, *_, beta, _ = _denominator(norm, x, params)
        return {"y": (xa * d ** (-beta)).astype(x.dtype)}
    return forward


def _backward(norm):
    def backward(inputs, params, dy):
        x = inputs["x"]
        xa, d, count, scale, beta, windows = _denominator(norm, x, params)
        g = dy.astype(xa.dtype)
        inner = g * xa * d ** (-beta - 1) / count
        dx = g * d ** (-beta) - 2 * scale * beta * xa * _reduce(inner, windows, transpose=True)
        return {"x": dx.astype(x.dtype)}
    return backward


for _norm in ("local_response_norm", "matconvnet_cross_channel", "matconvnet_spatial"):
    numpy_kernel(_norm, backward=_backward(_norm))(_forward(_norm))
