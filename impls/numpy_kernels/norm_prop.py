"""Normalization Propagation layer in NumPy (Arpit et al. 2016), with its own backward."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel
from normspec.spec.norm_prop import RELU_MEAN, RELU_STD

# the mean and std of max(0, z), z ~ N(0, 1): constants of the paper, stated once in the spec
_MEAN, _STD = RELU_MEAN, RELU_STD


def _parts(inputs, params):
    x, w = inputs["x"], inputs["weight"]
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"norm_prop needs x (N, in) and W (out, in), got x{x.shape} and W{w.shape}")
    acc = accumulation_dtype(x.dtype)
    wa = w.astype(acc)
    inv_r = 1.0 / np.sqrt(np.square(wa).sum(axis=1, keepdims=True))
    gamma = np.ones((w.shape[0], 1), acc) if inputs.get("gamma") is None else inputs["gamma"].astype(acc)[:, None]
    w_n = wa * (gamma * inv_r)
    u = x.astype(acc) @ w_n.T
    if inputs.get("bias") is not None:
        u += inputs["bias"].astype(acc)
    return x.astype(acc), wa, inv_r, gamma, w_n, u


def forward(inputs, params):
    *_, u = _parts(inputs, params)
    y = u if params.get("activation", "relu") == "identity" else (np.maximum(u, 0) - _MEAN) / _STD
    return {"y": y.astype(inputs["x"].dtype)}


def backward(inputs, params, dy):
    xa, wa, inv_r, gamma, w_n, u = _parts(inputs, params)
    dy = dy.astype(u.dtype)
    du = dy if params.get("activation", "relu") == "identity" else np.where(u > 0, dy / u.dtype.type(_STD), 0)
    grads = {"x": (du @ w_n).astype(inputs["x"].dtype)}
    big_g = du.T @ xa  # dL/dW_n
    w_hat = wa * inv_r
    dgamma = (big_g * w_hat).sum(axis=1, keepdims=True)
    grads["weight"] = ((gamma * inv_r) * (big_g - w_hat * dgamma)).astype(inputs["weight"].dtype)
    if inputs.get("gamma") is not None:
        grads["gamma"] = dgamma[:, 0].astype(inputs["gamma"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = du.sum(axis=0).astype(inputs["bias"].dtype)
    return grads


numpy_kernel("norm_prop", backward=backward)(forward)
