"""Pieces the torch kernels share (no kernel registers here)."""
from __future__ import annotations


def affine(y, inputs, shape, dtype):
    """gamma * y + beta with the optional weight/bias inputs in `dtype`, reshaped to `shape`."""
    if inputs.get("weight") is not None:
        y = y * inputs["weight"].to(dtype).reshape(shape)
    if inputs.get("bias") is not None:
        y = y + inputs["bias"].to(dtype).reshape(shape)
    return y
