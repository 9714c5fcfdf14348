"""Sliding windows along array axes: the reduction shared by the response normalizations.

A window of `size` positions around index i covers [i - before, i + after] with
before + after = size - 1; positions outside the axis contribute nothing (zero padding).
Two placements exist for even sizes: PyTorch's `F.local_response_norm` puts the extra position
*before* i (before = size // 2), ONNX, TensorFlow's SAME padding and MatConvNet put it *after*
(before = (size - 1) // 2). For odd sizes both are centred.
"""
from __future__ import annotations

import numpy as np

PLACEMENTS = ("leading", "trailing")  # where the extra position of an even window goes


def window_extent(size: int, placement: str) -> tuple[int, int]:
    """(before, after) for a window of `size`: "leading" = PyTorch, "trailing" = ONNX/TF/MatConvNet."""
    if int(size) != size or size < 1:
        raise ValueError(f"window size must be a positive integer, got {size!r}")
    if placement == "leading":
        before = size // 2
    elif placement == "trailing":
        before = (size - 1) // 2
    else:
        raise ValueError(f"window placement must be one of {PLACEMENTS}, got {placement!r}")
    return before, size - 1 - before


def window_sum(a: np.ndarray, axis: int, before: int, after: int) -> np.ndarray:
    """out[i] = sum of a[j] for j in [i - before, i + after] within the axis (zero padded)."""
    a = np.asarray(a, dtype=np.float64)
    length = a.shape[axis]
    out = np.zeros_like(a)
    for offset in range(-before, after + 1):
        lo, hi = max(0, -offset), min(length, length - offset)  # i with 0 <= i + offset < length
        if lo >= hi:
            continue
        dst = [slice(None)] * a.ndim
        src = [slice(None)] * a.ndim
        dst[axis] = slice(lo, hi)
        src[axis] = slice(lo + offset, hi + offset)
        out[tuple(dst)] += a[tuple(src)]
    return out


def window_sum_transpose(g: np.ndarray, axis: int, before: int, after: int) -> np.ndarray:
    """The adjoint of `window_sum`: the window mirrored (before and after swapped)."""
    return window_sum(g, axis, after, before)
