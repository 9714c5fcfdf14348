"""Decorrelated Batch Normalization: ZCA whitening in groups (Huang, Yang, Lang & Deng, CVPR 2018,
"Decorrelated Batch Normalization", Algorithm 1, eqs. 5-8; backward sec. 3.4).

Input (N, C, *S); the features are the C channels, the m = N * prod(S) positions are the samples.
The channels are split into G = C / group_size contiguous groups; for each group, with the
centered data Xc (m x g):
    Sigma = Xc^T Xc / m            (biased covariance)
    Sigma = D diag(lambda) D^T     (eigendecomposition)
    Phi   = D diag(lambda + eps)^(-1/2) D^T = (Sigma + eps I)^(-1/2)
    y     = Xc Phi, then the per-channel affine gamma * y + beta.
State: running_mean (C,) and running_whitening (G, g, g), updated in training like BatchNorm's
(momentum as the new-value weight, or "decay" style); inference: y = (x - running_mean) Phi_run.
Exact facts: cov(y) = Phi Sigma Phi = D diag(lambda/(lambda + eps)) D^T = I - eps (Sigma + eps I)^-1;
ZCA(X Q^T) = ZCA(X) Q^T for orthogonal Q (PCA whitening is not); group_size 1 is BatchNorm.

Backward (the Daleckii-Krein form of the paper's eigendecomposition backward): with
A = sym(Xc^T dY), K_ij = (f(l_i) - f(l_j))/(l_i - l_j) (f'(l_i) on the diagonal) for
f(l) = (l + eps)^(-1/2), B = D (K o (D^T A D)) D^T, dXc = dY Phi + 2 Xc B / m and dX = dXc - mean(dXc).
K_ij = -1/(s_i s_j (s_i + s_j)), s = sqrt(l + eps), needs no eigenvalue gap, unlike 1/(l_i - l_j).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normspec.spec.moments import affine, as_float64

MOMENTUM_STYLES = ("new", "decay")


class DecorrelatedResult(NamedTuple):
    y: np.ndarray
    running_mean: np.ndarray | None
    running_whitening: np.ndarray | None


def check(x_shape, group_size, training, batch, momentum_style="new"):
    if len(x_shape) < 2 or len(x_shape) > 5:
        raise ValueError(f"decorrelated_batch_norm expects input of shape (N, C, *S), got {x_shape}")
    c = x_shape[1]
    if not isinstance(group_size, (int, np.integer)) or group_size < 1 or c % group_size:
        raise ValueError(f"group_size must be a positive divisor of the {c} channels, got {group_size!r}")
    if momentum_style not in MOMENTUM_STYLES:
        raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {momentum_style!r}")
    if training and batch and int(np.prod(x_shape)) // max(c, 1) <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x_shape}")


def grouped(x, group_size):
    """x (N, C, *S) as (G, m, g): groups of contiguous channels, samples along axis 1."""
    flat = np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    return flat.reshape(flat.shape[0], -1, group_size).transpose(1, 0, 2)


def ungrouped(yg, x_shape):
    flat = yg.transpose(1, 0, 2).reshape(yg.shape[1], -1)
    moved = (x_shape[0],) + tuple(x_shape[2:]) + (x_shape[1],)
    return np.moveaxis(flat.reshape(moved), -1, 1)


class Whitening(NamedTuple):
    mean: np.ndarray  # (G, 1, g)
    xc: np.ndarray  # (G, m, g)
    sigma: np.ndarray  # (G, g, g) biased covariance
    lam: np.ndarray  # (G, g) eigenvalues of sigma, ascending
    vecs: np.ndarray  # (G, g, g) eigenvectors (columns)
    phi: np.ndarray  # (G, g, g)


def whitening(xg, eps):
    """The batch whitening of grouped data xg (G, m, g), in float64."""
    mean = xg.mean(axis=1, keepdims=True)
    xc = xg - mean
    sigma = np.einsum("gmi,gmj->gij", xc, xc) / xg.shape[1]
    sigma = (sigma + sigma.transpose(0, 2, 1)) / 2
    lam, vecs = np.linalg.eigh(sigma)
    lam = np.maximum(lam, 0.0)  # the covariance is positive semidefinite; eigh may return -u|Sigma|
    phi = np.einsum("gij,gj,gkj->gik", vecs, 1.0 / np.sqrt(lam + eps), vecs)
    return Whitening(mean, xc, sigma, lam, vecs, phi)


def decorrelated_batch_norm(x, weight=None, bias=None, running_mean=None, running_whitening=None, *,
                            group_size: int, training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                            momentum_style: str = "new") -> DecorrelatedResult:
    """ZCA-whitening batch norm forward (Algorithm 1 in training; running statistics in inference)."""
    x = as_float64(x)
    has_running = running_mean is not None and running_whitening is not None
    batch = training or not has_running
    check(x.shape, group_size, training, batch, momentum_style)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    xg = grouped(x, group_size)
    new_rm = None if running_mean is None else as_float64(running_mean)
    new_rw = None if running_whitening is None else as_float64(running_whitening)
    if batch:
        w = whitening(xg, eps)
        yg = np.einsum("gmi,gij->gmj", w.xc, w.phi)
        if training and has_running:
            f = momentum if momentum_style == "new" else 1.0 - momentum
            new_rm = (1.0 - f) * new_rm + f * w.mean.reshape(-1)
            new_rw = (1.0 - f) * new_rw + f * w.phi
    else:
        mean = new_rm.reshape(xg.shape[0], 1, group_size)
        yg = np.einsum("gmi,gij->gmj", xg - mean, new_rw)
    return DecorrelatedResult(affine(ungrouped(yg, x.shape), weight, bias, shape), new_rm, new_rw)


def divided_differences(lam, eps):
    """K_ij = (f(l_i) - f(l_j))/(l_i - l_j), f(l) = (l + eps)^(-1/2), in the gap-free form."""
    s = np.sqrt(lam + eps)
    return -1.0 / (s[:, :, None] * s[:, None, :] * (s[:, :, None] + s[:, None, :]))


def decorrelated_batch_norm_backward(dy, x, weight=None, running_mean=None, running_whitening=None, *,
                                     group_size: int, training: bool = True,
                                     eps: float = 1e-5) -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, bias} (sec. 3.4, in the Daleckii-Krein form above)."""
    x, dy = as_float64(x), as_float64(dy)
    has_running = running_mean is not None and running_whitening is not None
    batch = training or not has_running
    check(x.shape, group_size, training, batch)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    gamma = np.ones(shape) if weight is None else as_float64(weight).reshape(shape)
    xg = grouped(x, group_size)
    gg = grouped(dy * gamma, group_size)
    if batch:
        w = whitening(xg, eps)
        a = np.einsum("gmi,gmj->gij", w.xc, gg)
        a = (a + a.transpose(0, 2, 1)) / 2
        inner = np.einsum("gki,gkl,glj->gij", w.vecs, a, w.vecs) * divided_differences(w.lam, eps)
        b = np.einsum("gik,gkl,gjl->gij", w.vecs, inner, w.vecs)
        dxc = np.einsum("gmi,gij->gmj", gg, w.phi) + 2.0 * np.einsum("gmi,gij->gmj", w.xc, b) / xg.shape[1]
        dxg = dxc - dxc.mean(axis=1, keepdims=True)
        yhat = np.einsum("gmi,gij->gmj", w.xc, w.phi)
    else:
        phi = as_float64(running_whitening)
        dxg = np.einsum("gmi,gji->gmj", gg, phi)
        yhat = np.einsum("gmi,gij->gmj", xg - as_float64(running_mean).reshape(xg.shape[0], 1, group_size), phi)
    yhat = ungrouped(yhat, x.shape)
    return {"x": ungrouped(dxg, x.shape), "weight": (dy * yhat).sum(axis=axes), "bias": dy.sum(axis=axes)}
