"""Spectral Normalization in NumPy (Miyato et al. 2018): power iteration on the (dim, -1) matrix."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel


def _matrix(w: np.ndarray, dim: int) -> tuple[np.ndarray, int]:
    if w.ndim < 2:
        raise ValueError(f"spectral_norm needs a weight of rank >= 2, got shape {w.shape}")
    if not -w.ndim <= dim < w.ndim:
        raise ValueError(f"dim {dim} is out of range for a weight of rank {w.ndim}")
    d = dim % w.ndim
    order = (d,) + tuple(a for a in range(w.ndim) if a != d)
    return np.ascontiguousarray(w.transpose(order)).reshape(w.shape[d], -1), d


def _unit(a: np.ndarray, eps: float) -> np.ndarray:
    return a / max(np.sqrt(np.dot(a, a)), a.dtype.type(eps))


def _state(inputs, params):
    w = inputs["x"]
    acc = accumulation_dtype(w.dtype)
    w_mat, d = _matrix(w.astype(acc), params.get("dim", 0))
    u, v = inputs["u"].astype(acc), inputs["v"].astype(acc)
    if u.shape != (w_mat.shape[0],) or v.shape != (w_mat.shape[1],):
        raise ValueError(f"state u{u.shape}, v{v.shape} does not fit the weight matrix {w_mat.shape}")
    if params.get("training", True):
        eps = params.get("eps", 1e-12)
        v_first = params.get("power_iteration_order", "u_first") == "v_first"  # Algorithm 1, legacy hook
        for _ in range(params.get("n_power_iterations", 1)):
            if v_first:
                v = _unit(w_mat.T @ u, eps).astype(inputs["v"].dtype).astype(acc)
            u = _unit(w_mat @ v, eps).astype(inputs["u"].dtype).astype(acc)
            if not v_first:
                v = _unit(w_mat.T @ u, eps).astype(inputs["v"].dtype).astype(acc)
    sigma = np.dot(u, w_mat @ v)
    return w_mat, d, u, v, sigma


def forward(inputs, params):
    w = inputs["x"]
    _, _, u, v, sigma = _state(inputs, params)
    return {"y": (w.astype(u.dtype) / sigma).astype(w.dtype),
            "u": u.astype(inputs["u"].dtype), "v": v.astype(inputs["v"].dtype)}


def backward(inputs, params, dy):
    w = inputs["x"]
    w_mat, d, u, v, sigma = _state(inputs, params)
    dy_mat, _ = _matrix(dy.astype(u.dtype), d)
    inner = np.sum(dy_mat * w_mat) / sigma
    grad_mat = (dy_mat - inner * np.outer(u, v)) / sigma
    others = tuple(s for a, s in enumerate(w.shape) if a != d)
    grad = np.moveaxis(grad_mat.reshape((w.shape[d],) + others), 0, d)
    return {"x": grad.astype(w.dtype)}


numpy_kernel("spectral_norm", backward=backward)(forward)
