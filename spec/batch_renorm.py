"""Batch Renormalization (Ioffe, 2017, "Batch Renormalization: Towards Reducing Minibatch
Dependence in Batch-Normalized Models", Algorithm 1).

Input (N, C, *S); statistics per channel over (N, *S). In training, with the batch's
mu_B and sigma_B = sqrt(var_B + eps) (biased variance, eps inside, as in Algorithm 1) and the
moving mean mu and moving standard deviation sigma:
    r = stop_gradient(clip(sigma_B / sigma, 1/rmax, rmax))
    d = stop_gradient(clip((mu_B - mu) / sigma, -dmax, dmax))
    y = gamma * ((x - mu_B)/sigma_B * r + d) + beta
    mu <- mu + a (mu_B - mu),  sigma <- sigma + a (sigma_B - sigma)
In inference y = gamma (x - mu)/sigma + beta (sigma already contains eps). The paper's state is
the moving *standard deviation*, not a variance. Conventions: momentum_style "new" (a is the
new-value weight, PyTorch style) or "decay" (a = 1 - momentum, Keras/Flax style).
With rmax = 1 and dmax = 0, r = 1 and d = 0 exactly: the layer is BatchNorm (forward and gradient).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normspec.spec.moments import as_float64, moments, moments_backward

MOMENTUM_STYLES = ("new", "decay")


class BatchRenormResult(NamedTuple):
    y: np.ndarray
    running_mean: np.ndarray
    running_std: np.ndarray
    r: np.ndarray | None  # per channel, None in inference
    d: np.ndarray | None


def _geometry(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _check(x, running_mean, running_std, training, rmax, dmax, momentum_style):
    if x.ndim < 2 or x.ndim > 5:
        raise ValueError(f"batch_renorm expects input of shape (N, C, *S) with 0-3 spatial dims, got {x.shape}")
    if running_mean is None or running_std is None:
        raise ValueError("batch_renorm needs running_mean and running_std (the moving statistics r and d use)")
    if np.shape(running_mean) != (x.shape[1],) or np.shape(running_std) != (x.shape[1],):
        raise ValueError(f"running_mean/running_std must have shape ({x.shape[1]},), got "
                         f"{np.shape(running_mean)} and {np.shape(running_std)}")
    if not rmax >= 1.0 or not dmax >= 0.0:
        raise ValueError(f"batch_renorm needs rmax >= 1 and dmax >= 0, got rmax={rmax!r}, dmax={dmax!r}")
    if momentum_style not in MOMENTUM_STYLES:
        raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {momentum_style!r}")
    if training and x.size // x.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")


def renorm_factors(m, running_mean, running_std, rmax, dmax):
    """(r, d) per channel, shaped like the moments: Algorithm 1's clipped corrections."""
    shape = m.mean.shape
    sigma = running_std.reshape(shape)
    r = np.clip(m.std / sigma, 1.0 / rmax, rmax)
    d = np.clip((m.mean - running_mean.reshape(shape)) / sigma, -dmax, dmax)
    return r, d


def batch_renorm(x, weight=None, bias=None, running_mean=None, running_std=None, *, training: bool = True,
                 rmax: float = 3.0, dmax: float = 5.0, momentum: float = 0.1, eps: float = 1e-5,
                 momentum_style: str = "new") -> BatchRenormResult:
    """Batch Renormalization forward (Algorithm 1 in training, its inference rule otherwise)."""
    x = as_float64(x)
    _check(x, running_mean, running_std, training, rmax, dmax, momentum_style)
    axes, shape = _geometry(x)
    rm, rs = as_float64(running_mean), as_float64(running_std)
    if training:
        m = moments(x, axes, eps)
        r, d = renorm_factors(m, rm, rs, rmax, dmax)
        xhat = m.xhat * r + d
        a = momentum if momentum_style == "new" else 1.0 - momentum
        new_rm = rm + a * (m.mean.reshape(-1) - rm)
        new_rs = rs + a * (m.std.reshape(-1) - rs)
        r, d = r.reshape(-1), d.reshape(-1)
    else:
        xhat = (x - rm.reshape(shape)) / rs.reshape(shape)
        new_rm, new_rs, r, d = rm, rs, None, None
    y = xhat
    if weight is not None:
        y = y * as_float64(weight).reshape(shape)
    if bias is not None:
        y = y + as_float64(bias).reshape(shape)
    return BatchRenormResult(y, new_rm, new_rs, r, d)


def batch_renorm_backward(dy, x, weight=None, running_mean=None, running_std=None, *, training: bool = True,
                          rmax: float = 3.0, dmax: float = 5.0, eps: float = 1e-5) -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, bias} (Ioffe 2017, sec. 3: r and d are treated as constants).

    Training: dx = r * BN's moments backward of g = gamma dy; dgamma = sum dy (r xhat + d).
    Inference: dx = gamma dy / sigma.
    """
    x, dy = as_float64(x), as_float64(dy)
    _check(x, running_mean, running_std, training, rmax, dmax, "new")
    axes, shape = _geometry(x)
    gamma = np.ones(shape) if weight is None else as_float64(weight).reshape(shape)
    g_hat = dy * gamma
    rm, rs = as_float64(running_mean), as_float64(running_std)
    if training:
        m = moments(x, axes, eps)
        r, d = renorm_factors(m, rm, rs, rmax, dmax)
        dx = r * moments_backward(g_hat, m, axes)
        xhat = m.xhat * r + d
    else:
        sigma = rs.reshape(shape)
        xhat = (x - rm.reshape(shape)) / sigma
        dx = g_hat / sigma
    return {"x": dx, "weight": (dy * xhat).sum(axis=axes), "bias": dy.sum(axis=axes)}
