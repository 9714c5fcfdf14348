"""Lp batch normalization: BatchNorm with the standard deviation replaced by an Lp estimate of it
(Hoffer, Banner, Golan & Soudry 2018, "Norm matters: efficient and accurate normalization schemes
in deep networks", sec. 5, eqs. for L1 and L-infinity batch norm; Santurkar et al. 2018, "How
Does Batch Normalization Help Optimization?", sec. 3.3, l_p normalization).

Per channel over (N, *S), with z = x - mu_B and m the reduction length:
    S = C_p * (mean |z|^p)^(1/p)              finite p >= 1
    S = C_inf(m) * mean(top_k |z|)             p = inf (k = 1: the max |z|)
    y = gamma * z / h(S) + beta,   h(S) = S + eps ("outside", Hoffer's L1 form, the default)
                                   or sqrt(S^2 + eps) ("inside", BatchNorm's placement)
C_p makes S an unbiased-scale estimate of sigma for Gaussian data: C_p = (E|g|^p)^(-1/p) with
E|g|^p = 2^(p/2) Gamma((p+1)/2)/sqrt(pi); C_1 = sqrt(pi/2), C_2 = 1. For p = inf the default is the
paper's reference code (github.com/eladhoffer/norm_matters, models/lp_norm.py, `TopkBatchNorm2d`
and `GhostTopkBatchNorm2d`, commit 3b103aa): C_inf(m) = 0.5 (1 + sqrt(pi ln 4)) / sqrt(2 ln m),
the mean of the reciprocals of the bounds sqrt(2 ln m) and sqrt(ln m / (pi ln 2)) on E max of m
Gaussians; `linf_constant(m, "extreme_value")` = 1/sqrt(2 ln m) is 1.5434 times smaller. m is the
number of values per channel (their `A.size(0)`). The constant is also a plain parameter.
(That code also keeps a running 1/(S + eps) with running <- momentum*running + (1-momentum)*new;
here the running state is S itself, with PyTorch's momentum convention by default.)
State: running_mean and running_scale (a moving estimate of S); inference uses
(x - running_mean)/h(running_scale). Ties in top-k share the gradient evenly (the symmetric
subgradient, as torch.amax does); d S/dz is 0 where mean |z|^p = 0.
p = 2 with eps "inside" and C = 1 is BatchNorm's training forward exactly.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from normspec.spec.moments import as_float64

EPS_PLACEMENTS = ("outside", "inside")
MOMENTUM_STYLES = ("new", "decay")


class LpBatchNormResult(NamedTuple):
    y: np.ndarray
    running_mean: np.ndarray | None
    running_scale: np.ndarray | None


LINF_CONSTANTS = ("norm_matters", "extreme_value")


def linf_constant(count: int, kind: str = "norm_matters") -> float:
    """C_inf(m): Hoffer et al.'s reference code 0.5 (1 + sqrt(pi ln 4))/sqrt(2 ln m), or 1/sqrt(2 ln m)."""
    if kind not in LINF_CONSTANTS:
        raise ValueError(f"linf constant must be one of {LINF_CONSTANTS}, got {kind!r}")
    base = 1.0 / math.sqrt(2.0 * math.log(count))
    return base * 0.5 * (1.0 + math.sqrt(math.pi * math.log(4.0))) if kind == "norm_matters" else base


def gaussian_constant(p: float, count: int) -> float:
    """C_p = (E|g|^p)^(-1/p) for finite p; `linf_constant(m)` (norm_matters' code) for p = inf."""
    if math.isinf(p):
        return linf_constant(count)
    log_moment = (p / 2) * math.log(2.0) + math.lgamma((p + 1) / 2) - 0.5 * math.log(math.pi)
    return math.exp(-log_moment / p)


def _geometry(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def check_params(x_shape, p, k, eps_placement, momentum_style, training, batch):
    if len(x_shape) < 2 or len(x_shape) > 5:
        raise ValueError(f"lp_batch_norm expects input of shape (N, C, *S) with 0-3 spatial dims, got {x_shape}")
    if not (p >= 1.0):
        raise ValueError(f"lp_batch_norm needs p >= 1 (or inf), got p={p!r}")
    count = math.prod(x_shape) // x_shape[1] if x_shape[1] else 0
    if math.isinf(p) and not (isinstance(k, int) and 1 <= k <= max(count, 1)):
        raise ValueError(f"top-k needs an integer 1 <= k <= {count} (values per channel), got k={k!r}")
    if eps_placement not in EPS_PLACEMENTS:
        raise ValueError(f"eps_placement must be one of {EPS_PLACEMENTS}, got {eps_placement!r}")
    if momentum_style not in MOMENTUM_STYLES:
        raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {momentum_style!r}")
    if training and batch and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x_shape}")


def _topk_weights(a: np.ndarray, k: int) -> np.ndarray:
    """w with mean(top_k a) = sum(w a) per column of a (rows = the reduction); ties share evenly."""
    t = -np.sort(-a, axis=0)[k - 1:k]  # the k-th largest
    greater = a > t
    equal = a == t
    n_gt = greater.sum(axis=0, keepdims=True)
    n_eq = equal.sum(axis=0, keepdims=True)
    return (greater + equal * (k - n_gt) / n_eq) / k


def _flat(x):
    """x as (m, C): the reduction along axis 0."""
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def lp_scale(x, p, k=1, constant=None):
    """(mu_B, S, dS/dx-free pieces) per channel: returns mean (C,), z (m, C), S (C,), dS/dz (m, C)."""
    flat = _flat(as_float64(x))
    mean = flat.mean(axis=0)
    z = flat - mean
    count = flat.shape[0]
    c = gaussian_constant(p, count) if constant is None else float(constant)
    a = np.abs(z)
    if math.isinf(p):
        w = _topk_weights(a, k)
        s = c * (w * a).sum(axis=0)
        ds = c * w * np.sign(z)
    else:
        mp = (a**p).mean(axis=0)
        s = c * mp ** (1.0 / p)
        with np.errstate(divide="ignore", invalid="ignore"):
            ds = c * np.where(mp > 0, mp ** (1.0 / p - 1.0), 0.0) * a ** (p - 1) * np.sign(z) / count
    return mean, z, s, ds


def _denominator(s, eps, placement):
    return s + eps if placement == "outside" else np.sqrt(s * s + eps)


def _ddenominator(s, eps, placement):
    return np.ones_like(s) if placement == "outside" else s / np.sqrt(s * s + eps)


def _unflat(flat, x_shape):
    moved = (x_shape[0],) + tuple(x_shape[2:]) + (x_shape[1],)
    return np.moveaxis(flat.reshape(moved), -1, 1)


def lp_batch_norm(x, weight=None, bias=None, running_mean=None, running_scale=None, *, p: float = 1.0, k: int = 1,
                  constant: float | None = None, training: bool = True, momentum: float = 0.1, eps: float = 1e-5,
                  eps_placement: str = "outside", momentum_style: str = "new") -> LpBatchNormResult:
    """Lp batch norm forward; running statistics (if given) are updated in training and used in eval."""
    x = as_float64(x)
    has_running = running_mean is not None and running_scale is not None
    batch = training or not has_running
    check_params(x.shape, p, k, eps_placement, momentum_style, training, batch)
    _, shape = _geometry(x)
    new_rm = None if running_mean is None else as_float64(running_mean)
    new_rs = None if running_scale is None else as_float64(running_scale)
    if batch:
        mean, z, s, _ = lp_scale(x, p, k, constant)
        y = _unflat(z / _denominator(s, eps, eps_placement), x.shape)
        if training and has_running:
            f = momentum if momentum_style == "new" else 1.0 - momentum
            new_rm = (1.0 - f) * new_rm + f * mean
            new_rs = (1.0 - f) * new_rs + f * s
    else:
        y = (x - new_rm.reshape(shape)) / _denominator(new_rs, eps, eps_placement).reshape(shape)
    if weight is not None:
        y = y * as_float64(weight).reshape(shape)
    if bias is not None:
        y = y + as_float64(bias).reshape(shape)
    return LpBatchNormResult(y, new_rm, new_rs)


def lp_batch_norm_backward(dy, x, weight=None, running_mean=None, running_scale=None, *, p: float = 1.0, k: int = 1,
                           constant: float | None = None, training: bool = True, eps: float = 1e-5,
                           eps_placement: str = "outside") -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, bias}.

    With D = h(S): dz = g/D - z * h'(S) * dS/dz * sum(g z)/D^2 (g = gamma dy); dx = dz - mean(dz).
    """
    x, dy = as_float64(x), as_float64(dy)
    axes, shape = _geometry(x)
    gamma = np.ones(shape) if weight is None else as_float64(weight).reshape(shape)
    g = dy * gamma
    has_running = running_mean is not None and running_scale is not None
    if training or not has_running:
        mean, z, s, ds = lp_scale(x, p, k, constant)
        den = _denominator(s, eps, eps_placement)
        gf = _flat(g)
        dz = gf / den - ds * _ddenominator(s, eps, eps_placement) * (gf * z).sum(axis=0) / den**2
        dx = _unflat(dz - dz.mean(axis=0), x.shape)
        xhat = _unflat(z / den, x.shape)
    else:
        den = _denominator(as_float64(running_scale), eps, eps_placement).reshape(shape)
        xhat = (x - as_float64(running_mean).reshape(shape)) / den
        dx = g / den
    return {"x": dx, "weight": (dy * xhat).sum(axis=axes), "bias": dy.sum(axis=axes)}
