"""Memory layouts shared by the array backends: the same values, different strides."""
from __future__ import annotations


def channels_last_order(ndim: int) -> tuple[int, ...]:
    """Axis order (N, *S, C) in which a channels-last tensor is laid out physically."""
    return (0,) + tuple(range(2, ndim)) + (1,)


def inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(order)
    for i, o in enumerate(order):
        inv[o] = i
    return tuple(inv)
