"""Vectorized centered moments and their backward, in the accumulation dtype."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype


def _first_of_each_set(xa: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    index = tuple(slice(0, 1) if a in axes else slice(None) for a in range(xa.ndim))
    return xa[index].copy()


def normalize(x: np.ndarray, axes: tuple[int, ...], eps: float):
    """(xhat, mean, biased var, 1/sqrt(var + eps)) in the accumulation dtype.

    Shifted two-pass algorithm (Chan, Golub & LeVeque 1983): subtract each set's first value
    before averaging, so a constant set centres to exactly 0 (and its output is exactly beta),
    then subtract the mean of the shifted values.
    """
    acc = accumulation_dtype(x.dtype)
    xa = x.astype(acc)  # always a copy: the caller's x is never written
    shift = _first_of_each_set(xa, axes)
    xa -= shift
    shifted_mean = xa.mean(axis=axes, keepdims=True)
    xa -= shifted_mean
    mean = shift + shifted_mean
    var = np.square(xa).mean(axis=axes, keepdims=True)
    inv_std = 1.0 / np.sqrt(var + acc.type(eps))
    xa *= inv_std
    return xa, mean, var, inv_std


def normalize_backward(g_hat: np.ndarray, xhat: np.ndarray, inv_std: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """dx for xhat = (x - mean) * inv_std with batch statistics: inv_std * (g - mean g - xhat mean(g xhat))."""
    mean_g = g_hat.mean(axis=axes, keepdims=True)
    mean_gx = (g_hat * xhat).mean(axis=axes, keepdims=True)
    return inv_std * (g_hat - mean_g - xhat * mean_gx)


def _param(inputs, role: str, dtype, shape):
    a = inputs.get(role)
    if a is None:
        return None
    a = a.astype(dtype)
    return a if shape is None else a.reshape(shape)


def apply_affine(xhat: np.ndarray, inputs, shape=None) -> np.ndarray:
    """gamma * xhat + beta with the optional `weight`/`bias` inputs (reshaped to `shape` if given)."""
    gamma, beta = _param(inputs, "weight", xhat.dtype, shape), _param(inputs, "bias", xhat.dtype, shape)
    y = xhat if gamma is None else xhat * gamma
    return y if beta is None else y + beta


def affine_backward(dy: np.ndarray, xhat: np.ndarray, inputs, param_axes: tuple[int, ...], shape=None):
    """(g_hat = gamma * dy, {weight: sum dy xhat, bias: sum dy} for the affine inputs present)."""
    gamma = _param(inputs, "weight", xhat.dtype, shape)
    grads = {}
    if gamma is not None:
        grads["weight"] = (dy * xhat).sum(axis=param_axes).astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dy.sum(axis=param_axes).astype(inputs["bias"].dtype)
    return (dy if gamma is None else dy * gamma), grads
