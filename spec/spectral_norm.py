"""Spectral Normalization (Miyato, Kataoka, Koyama & Yoshida, ICLR 2018, "Spectral
Normalization for Generative Adversarial Networks", Algorithm 1).

W is viewed as the matrix W_mat of shape (W.shape[dim], -1) (`dim` moved to the front). In
training, `n_power_iterations` steps of power iteration update the state (u, v); in eval u and v
are used as given. Then sigma = u^T W_mat v and W_SN = W / sigma, normalize(a) = a / max(||a||, eps).
Two orders of the step exist (`power_iteration_order`, verified in the torch 2.13.0 sources):
- "u_first" (default): u <- normalize(W_mat v), then v <- normalize(W_mat^T u), as
  `torch.nn.utils.parametrizations.spectral_norm` (`_SpectralNorm._power_method`);
- "v_first": v <- normalize(W_mat^T u), then u <- normalize(W_mat v), as the paper's Algorithm 1
  (v~ <- W^T u~ / ||W^T u~||, u~ <- W v~ / ||W v~||, from a random u~) and the legacy
  `torch.nn.utils.spectral_norm` (`SpectralNorm.compute_weight`).
u and v are constants for differentiation (PyTorch computes them without gradient), so only
sigma's direct dependence on W is differentiated.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normspec.spec.moments import as_float64
from normspec.spec.weight_norm import resolve_dim


class SpectralNormResult(NamedTuple):
    y: np.ndarray
    u: np.ndarray
    v: np.ndarray
    sigma: float


def weight_matrix(w: np.ndarray, dim: int = 0) -> np.ndarray:
    """W reshaped to (W.shape[dim], -1) with `dim` moved to the front."""
    if w.ndim < 2:
        raise ValueError(f"spectral_norm here needs a weight of rank >= 2, got shape {w.shape}")
    d = resolve_dim(w.ndim, dim)
    return np.moveaxis(w, d, 0).reshape(w.shape[d], -1)


def _normalize(a: np.ndarray, eps: float) -> np.ndarray:
    return a / max(float(np.sqrt(a @ a)), eps)


POWER_ITERATION_ORDERS = ("u_first", "v_first")


def power_iteration(w_mat: np.ndarray, u: np.ndarray, v: np.ndarray, n: int, eps: float, order: str = "u_first"):
    """n power-iteration steps in `order` ("u_first": the parametrization; "v_first": Algorithm 1
    and the legacy hook); returns the new (u, v)."""
    if order not in POWER_ITERATION_ORDERS:
        raise ValueError(f"power_iteration_order must be one of {POWER_ITERATION_ORDERS}, got {order!r}")
    for _ in range(n):
        if order == "u_first":
            u = _normalize(w_mat @ v, eps)
            v = _normalize(w_mat.T @ u, eps)
        else:
            v = _normalize(w_mat.T @ u, eps)
            u = _normalize(w_mat @ v, eps)
    return u, v


def _check_state(w_mat, u, v):
    if u.shape != (w_mat.shape[0],) or v.shape != (w_mat.shape[1],):
        raise ValueError(f"spectral_norm state u{u.shape}, v{v.shape} does not fit the weight matrix "
                         f"{w_mat.shape}: u needs ({w_mat.shape[0]},), v needs ({w_mat.shape[1]},)")


def spectral_norm(w, u, v, *, dim: int = 0, n_power_iterations: int = 1, eps: float = 1e-12,
                  training: bool = True, power_iteration_order: str = "u_first") -> SpectralNormResult:
    """(W / sigma, new u, new v, sigma) with sigma = u^T W_mat v after the power iteration."""
    if n_power_iterations < 0:
        raise ValueError(f"n_power_iterations must be >= 0, got {n_power_iterations}")
    w, u, v = as_float64(w), as_float64(u), as_float64(v)
    w_mat = weight_matrix(w, dim)
    _check_state(w_mat, u, v)
    if training:
        u, v = power_iteration(w_mat, u, v, n_power_iterations, eps, power_iteration_order)
    elif power_iteration_order not in POWER_ITERATION_ORDERS:
        raise ValueError(f"power_iteration_order must be one of {POWER_ITERATION_ORDERS}, "
                         f"got {power_iteration_order!r}")
    sigma = float(u @ (w_mat @ v))
    return SpectralNormResult(w / sigma, u, v, sigma)


def spectral_norm_backward(dy, w, u, v, *, dim: int = 0, n_power_iterations: int = 1, eps: float = 1e-12,
                           training: bool = True, power_iteration_order: str = "u_first") -> dict[str, np.ndarray]:
    """dL/dW = (dy - <dy, W_SN> u v^T) / sigma, with (u, v) the state after the power iteration
    held constant (d sigma/dW = u v^T, reshaped back to W's layout)."""
    r = spectral_norm(w, u, v, dim=dim, n_power_iterations=n_power_iterations, eps=eps, training=training,
                      power_iteration_order=power_iteration_order)
    dy = as_float64(dy)
    d = resolve_dim(dy.ndim, dim)
    outer = np.outer(r.u, r.v).reshape((dy.shape[d],) + tuple(np.delete(dy.shape, d)))
    outer = np.moveaxis(outer, 0, d)
    return {"x": (dy - (dy * r.y).sum() * outer) / r.sigma}
