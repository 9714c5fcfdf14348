"""Memory layouts shared by the array backends: the same values, different strides."""
from __future__ import annotations


def channels_last_order(ndim: int) -> tuple[int, ...]:
    """Axis order (N, *S, C) in which a channels-last tensor is laid out physically."""
    return (0,) + tuple(range(2, ndim)) + (1,)


# Layouts every array backend should take, beyond the contiguous one:
#   channels_last  the channel axis innermost in memory (N, *S, C), for inputs of 3 or more dims
#   strided        every other element of a buffer twice as wide (a non-contiguous view)
#   offset         a contiguous view that starts one element into its buffer (storage offset 1,
#                  so the first element is misaligned for vector loads)
# and one only for arrays whose values repeat along axis 0 (an upstream gradient broadcast over
# the batch):
#   expanded       the first index of axis 0 expanded to the full shape (stride 0 on axis 0)
LAYOUTS = ("contiguous", "channels_last", "strided", "offset")
EXPANDED = "expanded"


def expandable(values) -> bool:
    """Whether `values` (a NumPy array) repeat along axis 0, so the expanded layout can hold them."""
    return values.ndim >= 1 and values.shape[0] >= 1 and bool((values == values[:1]).all())


def inverse(order: tuple[int, ...]) -> tuple[int, ...]:
    inv = [0] * len(order)
    for i, o in enumerate(order):
        inv[o] = i
    return tuple(inv)
