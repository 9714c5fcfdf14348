"""What the tolerance model needs to know about one case of a mean/variance normalizer."""
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
