"""Mean-variance normalization in NumPy (Caffe MVNLayer, ONNX MeanVarianceNormalization)."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel


def _axes(x, params):
    if params.get("axes") is not None:  # ONNX's explicit axes (any set, the batch axis included)
        ndim = x.ndim
        axes = sorted({int(a) % ndim for a in params["axes"] if -ndim <= int(a) < ndim})
        if not axes or len(axes) != len(tuple(params["axes"])):
            raise ValueError(f"mvn axes {tuple(params['axes'])} do not fit an input of shape {x.shape}")
        return tuple(axes)
    first = 1 if params.get("across_channels", False) else 2
    if x.ndim <= first:
        raise ValueError(f"mvn over axes {first}.. needs an input with more dims than {x.shape}")
    return tuple(range(first, x.ndim))


def _centred(x, axes):
    """x - mean in the accumulation dtype, shifted by each set's first value (exact 0 for constants)."""
    xa = x.astype(np.dtype(accumulation_dtype(x.dtype)))
    index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    xa -= xa[index].copy()
    xa -= xa.mean(axis=axes, keepdims=True)
    return xa


def _normalized(x, params):
    """(y, sigma) with y = centred / (sigma + eps); sigma None without variance normalization."""
    axes = _axes(x, params)
    c = _centred(x, axes)
    if not params.get("normalize_variance", True):
        return c, None
    sigma = np.sqrt(np.square(c).mean(axis=axes, keepdims=True))
    return c / (sigma + c.dtype.type(params.get("eps", 1e-9))), sigma


def forward(inputs, params):
    x = inputs["x"]
    y, _ = _normalized(x, params)
    return {"y": y.astype(x.dtype)}


def backward(inputs, params, dy):
    x = inputs["x"]
    axes = _axes(x, params)
    y, sigma = _normalized(x, params)
    dy = dy.astype(y.dtype)
    dx = dy - dy.mean(axis=axes, keepdims=True)
    if sigma is not None:
        divisor = sigma + y.dtype.type(params.get("eps", 1e-9))
        with np.errstate(divide="ignore", invalid="ignore"):
            dx = dx / divisor - y * ((dy * y).mean(axis=axes, keepdims=True) / sigma)
    return {"x": dx.astype(x.dtype)}


numpy_kernel("mvn", backward=backward)(forward)
