"""What the tolerance model needs to know about one case: a condition object per model.

A record describes each case by one of these (computed from the float64 spec's intermediates);
the matching core in `normspec.library.tolerance` turns it into bounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Conditioning:
    """What the tolerance model needs about one case (see `normspec.library.tolerance`).

    All arrays broadcast against the input x. `count` is the length of the statistics'
    reduction (1 when the statistics are given, e.g. eval-mode running stats);
    `param_axes` are the axes summed to form the weight/bias gradients.
    """

    xhat: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: int
    gamma: np.ndarray
    beta: np.ndarray
    stats_axes: tuple[int, ...]
    param_axes: tuple[int, ...]
    batch_stats: bool
    running_var_scale: float = 1.0  # n/(n-1) when the running variance is fed the unbiased estimate
    # A view of x in which the reduction sets are axis-aligned (GroupNorm's (N, G, C/G, *S)); the
    # arrays above are in that view, and bounds come back in x's shape. None: x's own shape.
    view_shape: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ResponseCondition:
    """A response normalization y = x d^-beta, d = offset + scale W(x^2): the number of terms of
    the window sum W, the exponent, and (for gradients) the sum of the absolute terms of the
    backward formula."""

    window_terms: int
    beta: float
    grad_magnitude: np.ndarray | None = None


@dataclass(frozen=True)
class DivisiveCondition:
    """Divisive normalization y = gamma v/r + beta (Ren et al. 2017): v/r, the centering's lost
    digits `offset` = mean_A|z|/r, the affine, the larger field's count, the axes summed for the
    parameter gradients, and (for gradients) the absolute terms of the backward formula."""

    xhat: np.ndarray
    offset: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    count: int
    param_axes: tuple[int, ...]
    grad_magnitude: np.ndarray | None = None


@dataclass(frozen=True)
class MvnCondition:
    """Mean-variance normalization y = (x - mu)/(sigma + eps) (eps None: y = x - mu): the centred
    values, mu, the biased sigma, the reduction's length and axes."""

    centred: np.ndarray
    mean: np.ndarray
    sigma: np.ndarray
    eps: float | None
    count: int
    stats_axes: tuple[int, ...]
