"""Divisive Normalization (Ren, Liao, Urtasun, Sinz & Zemel, ICLR 2017, "Normalizing the
Normalizers: Comparing and Extending Network Normalization Schemes", eqs. 1-2):

    v_j = z_j - mean_{i in A_j} z_i                 (A_j: the summation field of unit j)
    y_j = gamma * v_j / sqrt(sigma^2 + mean_{i in B_j} v_i^2) + beta   (B_j: the suppression field)

A field is given per axis of the input (N, C, *S): "all" (the whole axis), or an integer window
size w (positions [i - floor((w-1)/2), i + ceil((w-1)/2)], TensorFlow's SAME placement, as in
the authors' code). 1 means the unit alone along that axis; windows over the batch axis are
refused (a batch has no order). `eps` is sigma^2. gamma and beta are per channel.
At the borders, `border="exclude"` averages over the in-range positions (|A_j| in eq. 1);
`border="zero"` divides by the full window size, as the authors' TensorFlow code does (a SAME
convolution with a 1/|window| kernel). BatchNorm is A = B = ("all", 1, "all", ...) and LayerNorm
over (C, *S) is A = B = (1, "all", ...): with eps = sigma^2 both are exact special cases.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from normspec.spec.moments import as_float64
from normspec.spec.windows import window_extent, window_sum

BORDERS = ("exclude", "zero")


@dataclass(frozen=True)
class Field:
    """The averaging operator M of a field over an input shape: M a = mean over the field."""

    entries: tuple
    shape: tuple[int, ...]
    border: str

    def _windows(self):
        for axis, entry in enumerate(self.entries):
            if entry != "all" and entry != 1:
                yield axis, *window_extent(int(entry), "trailing")

    def _full_axes(self) -> tuple[int, ...]:
        return tuple(a for a, e in enumerate(self.entries) if e == "all")

    def _divisor(self) -> np.ndarray:
        count = np.ones(self.shape)
        if self.border == "exclude":
            for axis, before, after in self._windows():
                count = window_sum(count, axis, before, after)
        else:
            for axis, before, after in self._windows():
                count = count * (before + after + 1)
        return count

    def mean(self, a: np.ndarray) -> np.ndarray:
        full = self._full_axes()
        if full:
            a = np.broadcast_to(a.mean(axis=full, keepdims=True), self.shape)
        for axis, before, after in self._windows():
            a = window_sum(a, axis, before, after)
        return a / self._divisor()

    def mean_transpose(self, g: np.ndarray) -> np.ndarray:
        g = g / self._divisor()
        for axis, before, after in self._windows():
            g = window_sum(g, axis, after, before)
        full = self._full_axes()
        if full:
            g = np.broadcast_to(g.mean(axis=full, keepdims=True), self.shape)
        return np.array(g)


def make_field(entries, shape: tuple[int, ...], border: str, name: str) -> Field:
    if border not in BORDERS:
        raise ValueError(f"border must be one of {BORDERS}, got {border!r}")
    entries = tuple(entries)
    if len(entries) != len(shape):
        raise ValueError(f"{name} field {entries!r} must have one entry per axis of the input shape {tuple(shape)}")
    for axis, e in enumerate(entries):
        if e != "all" and (isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < 1):
            raise ValueError(f"{name} field entry {e!r} on axis {axis} must be 'all' or a window size >= 1")
    if entries[0] not in ("all", 1):
        raise ValueError(f"{name} field may not take a window over the batch axis: "
                         f"entry {entries[0]!r} must be 1 or 'all'")
    return Field(entries, tuple(shape), border)


@dataclass(frozen=True)
class DivisiveParts:
    v: np.ndarray  # z - mean_A z
    r: np.ndarray  # sqrt(eps + mean_B v^2)
    summation: Field
    suppression: Field


def divisive_parts(x, summation, suppression, eps: float, border: str) -> DivisiveParts:
    x = as_float64(x)
    if x.ndim < 2:
        raise ValueError(f"divisive_norm expects input (N, C, *S), got shape {x.shape}")
    a = make_field(summation, x.shape, border, "summation")
    b = make_field(suppression, x.shape, border, "suppression")
    v = x - a.mean(x)
    return DivisiveParts(v, np.sqrt(eps + b.mean(v * v)), a, b)


def _channel(p, x):
    return None if p is None else as_float64(p).reshape((1, x.shape[1]) + (1,) * (x.ndim - 2))


def divisive_norm(x, weight=None, bias=None, *, summation, suppression, eps: float = 1.0,
                  border: str = "exclude") -> np.ndarray:
    """y = gamma v/sqrt(eps + mean_B v^2) + beta with v = x - mean_A x (Ren et al. 2017, eqs. 1-2);
    eps = sigma^2 defaults to the authors' code (1.0)."""
    x = as_float64(x)
    p = divisive_parts(x, summation, suppression, eps, border)
    y = p.v / p.r
    if weight is not None:
        y = y * _channel(weight, x)
    if bias is not None:
        y = y + _channel(bias, x)
    return y


def divisive_norm_backward(dy, x, weight=None, *, summation, suppression, eps: float = 1.0,
                           border: str = "exclude") -> dict[str, np.ndarray]:
    """dv = g/r - v M_B^T(g v / r^3), dx = dv - M_A^T dv, with g = gamma dy (M the field averages)."""
    x, dy = as_float64(x), as_float64(dy)
    p = divisive_parts(x, summation, suppression, eps, border)
    g = dy if weight is None else dy * _channel(weight, x)
    dv = g / p.r - p.v * p.suppression.mean_transpose(g * p.v / p.r**3)
    axes = (0,) + tuple(range(2, x.ndim))
    return {"x": dv - p.summation.mean_transpose(dv), "weight": (dy * p.v / p.r).sum(axis=axes),
            "bias": dy.sum(axis=axes)}
