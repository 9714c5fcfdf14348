"""Normalization Propagation (Arpit, Zhou, Kota & Govindaraju, ICML 2016, "Normalization
Propagation: A Parametric Technique for Removing Internal Covariate Shift in Deep Networks",
sec. 3-4), fully connected layer form.

For an input x of shape (N, in) assumed canonical (zero mean, identity covariance), each
pre-activation u_i = gamma_i W_i.x/||W_i||_2 + beta_i has mean beta_i and variance gamma_i^2
without looking at data. After a ReLU the output is re-standardized with the moments of
ReLU(z), z ~ N(0, 1): mean 1/sqrt(2 pi), variance (1 - 1/pi)/2, so
    o_i = (ReLU(u_i) - 1/sqrt(2 pi)) / sqrt((1 - 1/pi)/2).
`activation="identity"` gives o = u (a layer with no nonlinearity after it). The row norm is
the normalization of weight_norm(W, gamma, dim=0). The catalogue marks this layer form
unverified; what is encoded is the derivation above (the paper's sec. 3 moments of a
rectified Gaussian), and any further constant the paper applies (e.g. for the Jacobian) is not.
"""
from __future__ import annotations

import math

import numpy as np

from normspec.spec.moments import as_float64
from normspec.spec.weight_norm import weight_norm, weight_norm_backward

ACTIVATIONS = ("relu", "identity")
RELU_MEAN = 1.0 / math.sqrt(2.0 * math.pi)  # E[max(z, 0)], z ~ N(0, 1)
RELU_STD = math.sqrt(0.5 * (1.0 - 1.0 / math.pi))  # sqrt(Var[max(z, 0)])


def _check(x, w, gamma, beta, activation):
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"norm_prop needs x (N, in) and W (out, in), got x{x.shape} and W{w.shape}")
    for name, a in (("gamma", gamma), ("beta", beta)):
        if a is not None and np.shape(a) != (w.shape[0],):
            raise ValueError(f"{name} has shape {np.shape(a)}, but should be ({w.shape[0]},)")


def _pre_activation(x, w, gamma, beta):
    g = np.ones((w.shape[0], 1)) if gamma is None else as_float64(gamma).reshape(-1, 1)
    w_n = weight_norm(w, g, dim=0)
    u = x @ w_n.T
    return (u if beta is None else u + as_float64(beta)), w_n, g


def norm_prop(x, weight, gamma=None, beta=None, *, activation: str = "relu") -> np.ndarray:
    """o = (ReLU(gamma W x/||W_row|| + beta) - 1/sqrt(2 pi))/sqrt((1 - 1/pi)/2), per output unit."""
    x, w = as_float64(x), as_float64(weight)
    _check(x, w, gamma, beta, activation)
    u, _, _ = _pre_activation(x, w, gamma, beta)
    if activation == "identity":
        return u
    return (np.maximum(u, 0.0) - RELU_MEAN) / RELU_STD


def norm_prop_backward(dy, x, weight, gamma=None, beta=None, *, activation: str = "relu") -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, gamma, bias}: du = dy/RELU_STD on u > 0 (ReLU'(0) = 0,
    as PyTorch), dx = du W_n, dW_n = du^T x, then weight_norm's backward for (W, gamma)."""
    x, w, dy = as_float64(x), as_float64(weight), as_float64(dy)
    _check(x, w, gamma, beta, activation)
    u, w_n, g = _pre_activation(x, w, gamma, beta)
    du = dy if activation == "identity" else np.where(u > 0, dy / RELU_STD, 0.0)
    wn_grads = weight_norm_backward(du.T @ x, w, g, dim=0)
    grads = {"x": du @ w_n, "weight": wn_grads["x"]}
    if gamma is not None:
        grads["gamma"] = wn_grads["weight"].reshape(-1)
    if beta is not None:
        grads["bias"] = du.sum(axis=0)
    return grads
