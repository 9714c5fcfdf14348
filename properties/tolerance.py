"""The one tolerance model: how far a correct floating-point implementation may stray from the
float64 spec, evaluated on the same (already dtype-rounded) inputs.

The bound is a product of two things and nothing else:
- the dtype's unit roundoff u (2^-p): `storage` for rounding the results, `compute` for the
  arithmetic; half-precision types must accumulate in float32, as frameworks do, so their
  compute roundoff is float32's (an implementation that accumulates in float16 fails);
- the condition of the input: for centering, |mu|/s (digits lost subtracting the mean); for a
  reduction of length m, a growth factor 2 + sqrt(m) (rounding errors of a sum of m terms grow
  like sqrt(m) for random-signed errors and like log m for pairwise sums; Higham, "Accuracy and
  Stability of Numerical Algorithms", 2nd ed., ch. 4).
Multiplied by one global SAFETY factor, never chosen per test. A correct implementation stays
well inside the bound; the realistic bugs (one-pass variance, eps misplaced, biased vs
unbiased, wrong axes) miss it by orders of magnitude, which is what the harness's tests show.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from normspec.registry import Conditioning

SAFETY = 16.0

UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}
# Smallest positive normal number: an absolute floor for results that round to (almost) zero.
TINY = {"float64": 2.2250738585072014e-308, "float32": 1.1754943508222875e-38, "float16": 6.103515625e-05,
        "bfloat16": 1.1754943508222875e-38}


def storage_roundoff(dtype: str) -> float:
    return UNIT_ROUNDOFF[dtype]


def compute_roundoff(dtype: str) -> float:
    """Roundoff of the arithmetic: float32's for half types (float32 accumulation is required)."""
    return min(UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF["float32"])


def growth(count: int) -> float:
    """Error growth of a float reduction of `count` terms (random-signed rounding errors)."""
    return 2.0 + float(np.sqrt(max(count, 1)))


@dataclass(frozen=True)
class Bounds:
    """Elementwise absolute error bounds, by output or gradient name."""

    values: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values


def _mean_over(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return a.mean(axis=axes, keepdims=True) if axes else a


def moment_bounds(c: Conditioning, dtype: str, reference: dict[str, np.ndarray],
                  dy: np.ndarray | None = None, ref_grads: dict[str, np.ndarray] | None = None) -> Bounds:
    """Bounds for a normalizer y = gamma (x - mean)/std + beta and its gradients.

    err(xhat_i) <= u g(m) (1 + |xhat_i| + |mean|/std): the mean is off by u g(m) (|mean| + std),
    the std by a relative u g(m), and the centered value by u |x_i|.
    """
    u, v = compute_roundoff(dtype), storage_roundoff(dtype)
    tiny = TINY[dtype]
    offset = np.abs(c.mean) / c.std
    cond = 1.0 + np.abs(c.xhat) + offset
    err_xhat = SAFETY * u * growth(c.count) * cond
    y = reference["y"]
    out = {"y": np.abs(c.gamma) * err_xhat + SAFETY * v * (np.abs(y) + np.abs(c.beta)) + tiny}

    if "running_mean" in reference:
        g = growth(c.count)
        mean = c.mean.reshape(-1)
        std = c.std.reshape(-1)
        var = (c.std.reshape(-1) ** 2) * c.running_var_scale
        out["running_mean"] = SAFETY * (u * g * (np.abs(mean) + std) + v * np.abs(reference["running_mean"])) + tiny
        out["running_var"] = SAFETY * (u * g * (var + 2 * std * (np.abs(mean) + std))
                                       + v * np.abs(reference["running_var"])) + tiny

    if dy is not None:
        ref_grads = ref_grads or {}
        g_hat = c.gamma * dy
        g = growth(c.count)
        if c.batch_stats:
            spread = _mean_over(np.abs(g_hat) * cond, c.stats_axes)
            dx = SAFETY * u * g * cond * (np.abs(g_hat) + spread) / c.std
        else:
            dx = SAFETY * u * cond * np.abs(g_hat) / c.std
        out["x"] = dx + SAFETY * v * np.abs(ref_grads.get("x", 0.0)) + tiny
        n_param = int(np.prod([dy.shape[a] for a in c.param_axes])) if c.param_axes else 1
        gp = growth(n_param) + g
        absdy = np.abs(dy)
        out["weight"] = SAFETY * (u * gp * (absdy * cond).sum(axis=c.param_axes)
                                  + v * np.abs(ref_grads.get("weight", 0.0))) + tiny
        out["bias"] = SAFETY * (u * gp * absdy.sum(axis=c.param_axes) + v * np.abs(ref_grads.get("bias", 0.0))) + tiny
    return Bounds(out)
