"""The NumPy backend: an independent vectorized implementation in the input's dtype.

It shares no code with the spec: statistics are accumulated in float32 for float16 inputs (as
frameworks do) and in the input's dtype otherwise, and gradients come from closed forms written
here. Kernels live in `normspec.impls.numpy_kernels`, one module per family.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

import numpy as np

from normspec.impls.base import Backend, Kernel
from normspec.impls.layout import LAYOUTS, channels_last_order, inverse

NUMPY_KERNELS: dict[str, Kernel] = {}


def numpy_kernel(norm: str, **kwargs):
    """Decorator registering `forward` for `norm`; pass backward= and unsupported= as keywords."""

    def deco(forward):
        NUMPY_KERNELS[norm] = Kernel(forward=forward, **kwargs)
        return forward

    return deco


def accumulation_dtype(dtype: np.dtype) -> np.dtype:
    """float32 for half precision (statistics must not be accumulated in float16), else dtype."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)


def _load_kernels() -> None:
    import normspec.impls.numpy_kernels as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


def lay_out(array: np.ndarray, layout: str) -> np.ndarray:
    """A fresh array with `array`'s values in the requested memory layout."""
    if array.ndim == 0:
        return np.array(array, copy=True)  # ascontiguousarray would make it shape (1,)
    if layout == "contiguous":
        return np.ascontiguousarray(array).copy()
    if layout == "channels_last":
        if array.ndim < 3:
            return np.ascontiguousarray(array).copy()
        order = channels_last_order(array.ndim)
        physical = np.ascontiguousarray(array.transpose(order))
        return physical.transpose(inverse(order))
    if layout == "strided":
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), dtype=array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if layout == "offset":
        buffer = np.zeros(array.size + 1, dtype=array.dtype)
        buffer[1:] = array.reshape(-1)
        return buffer[1:].reshape(array.shape)
    raise ValueError(f"unknown layout {layout!r}")


def empty_call(inputs: Mapping[str, Any], params: Mapping[str, Any], wrt: tuple[str, ...] | None = None) -> dict:
    """A call on an input with no values (a zero-size batch or spatial dim): an empty output, the
    running statistics unchanged (no statistics to update with), or, with `wrt`, an empty input
    gradient and parameter gradients of exactly 0 (sums of nothing)."""
    if wrt is not None:
        return {r: np.zeros_like(inputs[r]) for r in wrt if inputs.get(r) is not None}
    out = {"y": np.array(inputs["x"], copy=True)}
    if params.get("training", True):
        for role in ("running_mean", "running_var"):
            if inputs.get(role) is not None:
                out[role] = np.array(inputs[role], copy=True)
    return out


class NumpyBackend(Backend):
    name = "numpy"
    dtypes = ("float64", "float32", "float16")
    layouts = LAYOUTS

    def __init__(self):
        _load_kernels()
        self.kernels = NUMPY_KERNELS

    def native(self, array: np.ndarray, dtype: str, layout: str = "contiguous") -> np.ndarray:
        if dtype not in self.dtypes:
            raise ValueError(f"numpy backend does not support {dtype}; supported: {self.dtypes}")
        return lay_out(np.asarray(array).astype(np.dtype(dtype)), layout)

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.array(value, dtype=np.float64, copy=True)

    def forward(self, norm: str, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        if inputs.get("x") is not None and inputs["x"].size == 0 and norm in self.kernels:
            return empty_call(inputs, params)
        return super().forward(norm, inputs, params)

    def gradients(self, norm: str, inputs: Mapping[str, Any], params: Mapping[str, Any], dy: Any,
                  wrt: tuple[str, ...]) -> dict[str, Any]:
        if inputs.get("x") is not None and inputs["x"].size == 0:
            return empty_call(inputs, params, wrt)
        grads = self.kernels[norm].backward(inputs, params, dy)
        return {role: g for role, g in grads.items() if role in wrt and inputs.get(role) is not None}
