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

form="keras": Keras' BatchNormalization(renorm=True) (Keras 3, keras/src/layers/normalization/
batch_normalization.py; tf.keras 2 alike), which differs from Algorithm 1 in four ways:
- two sets of moving statistics: (running_mean, running_std) are Keras' renorm_mean/renorm_stddev,
  used for r and d and updated with `renorm_momentum`; (moving_mean, moving_std) are its
  moving_mean/moving_stddev, updated with `momentum` and used in inference only;
- r = clip(sigma_B / max(running_std, sqrt(eps)), rmin, rmax), d = clip((mu_B - running_mean) /
  max(running_std, sqrt(eps)), -dmax, dmax): the denominator is floored at sqrt(eps), and r's lower
  clip rmin is independent of rmax (renorm_clipping's missing keys: rmin 0, rmax inf, dmax inf);
- inference reads moving_variance = relu(moving_std^2 - eps) and divides by sqrt(moving_variance + eps);
- Keras' momenta are decay-style (momentum_style="decay" reads them so; 0.99 each by default).
Ioffe's form is rmin = 1/rmax (the default rmin=None) with one set of statistics.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normspec.spec.moments import as_float64, moments, moments_backward

MOMENTUM_STYLES = ("new", "decay")
FORMS = ("ioffe", "keras")


class BatchRenormResult(NamedTuple):
    y: np.ndarray
    running_mean: np.ndarray
    running_std: np.ndarray
    r: np.ndarray | None  # per channel, None in inference
    d: np.ndarray | None
    moving_mean: np.ndarray | None = None  # form="keras" only: the inference statistics
    moving_std: np.ndarray | None = None


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
    if not rmax >= 0.0 or not dmax >= 0.0:
        raise ValueError(f"batch_renorm needs rmax >= 0 and dmax >= 0, got rmax={rmax!r}, dmax={dmax!r}")
    if momentum_style not in MOMENTUM_STYLES:
        raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {momentum_style!r}")
    if training and x.size // x.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")


def renorm_factors(m, running_mean, running_std, rmax, dmax, rmin=None, form="ioffe", eps=0.0):
    """(r, d) per channel, shaped like the moments: Algorithm 1's clipped corrections (Keras' form:
    the moving std floored at sqrt(eps), r clipped to [rmin, rmax])."""
    shape = m.mean.shape
    sigma = running_std.reshape(shape)
    if form == "keras":
        sigma = np.maximum(sigma, np.sqrt(eps))
    r = np.clip(m.std / sigma, 1.0 / rmax if rmin is None else rmin, rmax)
    d = np.clip((m.mean - running_mean.reshape(shape)) / sigma, -dmax, dmax)
    return r, d


def _check_keras(form, rmin, rmax, moving_mean, moving_std, c):
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if rmin is not None and not 0.0 <= rmin <= rmax:
        raise ValueError(f"batch_renorm needs 0 <= rmin <= rmax, got rmin={rmin!r}, rmax={rmax!r}")
    if form == "keras" and (moving_mean is None or moving_std is None
                            or np.shape(moving_mean) != (c,) or np.shape(moving_std) != (c,)):
        raise ValueError(f"form='keras' needs moving_mean and moving_std of shape ({c},) (the inference statistics)")


def batch_renorm(x, weight=None, bias=None, running_mean=None, running_std=None, *, training: bool = True,
                 rmax: float = 3.0, dmax: float = 5.0, momentum: float = 0.1, eps: float = 1e-5,
                 momentum_style: str = "new", form: str = "ioffe", rmin: float | None = None,
                 renorm_momentum: float | None = None, moving_mean=None, moving_std=None) -> BatchRenormResult:
    """Batch Renormalization forward (Algorithm 1 in training, its inference rule otherwise; or
    Keras' form, see the module docstring: renorm_momentum defaults to momentum)."""
    x = as_float64(x)
    _check(x, running_mean, running_std, training, rmax, dmax, momentum_style)
    if rmin is None and rmax < 1.0:
        raise ValueError(f"batch_renorm needs rmax >= 1 when rmin = 1/rmax, got rmax={rmax!r}")
    _check_keras(form, rmin, rmax, moving_mean, moving_std, x.shape[1])
    axes, shape = _geometry(x)
    rm, rs = as_float64(running_mean), as_float64(running_std)
    keras = form == "keras"
    mm = as_float64(moving_mean) if keras else None
    ms = as_float64(moving_std) if keras else None

    def weight_of(m):
        return m if momentum_style == "new" else 1.0 - m

    if training:
        m = moments(x, axes, eps)
        r, d = renorm_factors(m, rm, rs, rmax, dmax, rmin, form, eps)
        xhat = m.xhat * r + d
        a = weight_of(momentum if renorm_momentum is None or not keras else renorm_momentum)
        new_rm = rm + a * (m.mean.reshape(-1) - rm)
        new_rs = rs + a * (m.std.reshape(-1) - rs)
        if keras:
            b = weight_of(momentum)
            mm = mm + b * (m.mean.reshape(-1) - mm)
            ms = ms + b * (m.std.reshape(-1) - ms)
        r, d = r.reshape(-1), d.reshape(-1)
    else:
        if keras:  # Keras' inference: moving_variance = relu(moving_stddev^2 - eps), then + eps
            xhat = (x - mm.reshape(shape)) / np.sqrt(np.maximum(ms * ms - eps, 0.0) + eps).reshape(shape)
        else:
            xhat = (x - rm.reshape(shape)) / rs.reshape(shape)
        new_rm, new_rs, r, d = rm, rs, None, None
    y = xhat
    if weight is not None:
        y = y * as_float64(weight).reshape(shape)
    if bias is not None:
        y = y + as_float64(bias).reshape(shape)
    return BatchRenormResult(y, new_rm, new_rs, r, d, mm, ms)


def batch_renorm_backward(dy, x, weight=None, running_mean=None, running_std=None, *, training: bool = True,
                          rmax: float = 3.0, dmax: float = 5.0, eps: float = 1e-5, form: str = "ioffe",
                          rmin: float | None = None, moving_mean=None, moving_std=None) -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, bias} (Ioffe 2017, sec. 3: r and d are treated as constants;
    Keras applies ops.stop_gradient to them alike).

    Training: dx = r * BN's moments backward of g = gamma dy; dgamma = sum dy (r xhat + d).
    Inference: dx = gamma dy / sigma (Keras: sigma = sqrt(relu(moving_std^2 - eps) + eps)).
    """
    x, dy = as_float64(x), as_float64(dy)
    _check(x, running_mean, running_std, training, rmax, dmax, "new")
    _check_keras(form, rmin, rmax, moving_mean, moving_std, x.shape[1])
    axes, shape = _geometry(x)
    gamma = np.ones(shape) if weight is None else as_float64(weight).reshape(shape)
    g_hat = dy * gamma
    rm, rs = as_float64(running_mean), as_float64(running_std)
    if training:
        m = moments(x, axes, eps)
        r, d = renorm_factors(m, rm, rs, rmax, dmax, rmin, form, eps)
        dx = r * moments_backward(g_hat, m, axes)
        xhat = m.xhat * r + d
    else:
        if form == "keras":
            ms = as_float64(moving_std)
            mean = as_float64(moving_mean).reshape(shape)
            sigma = np.sqrt(np.maximum(ms * ms - eps, 0.0) + eps).reshape(shape)
        else:
            mean, sigma = rm.reshape(shape), rs.reshape(shape)
        xhat = (x - mean) / sigma
        dx = g_hat / sigma
    return {"x": dx, "weight": (dy * xhat).sum(axis=axes), "bias": dy.sum(axis=axes)}
