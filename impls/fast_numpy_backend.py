"""`numpy:fast`: NumPy normalization kernels written for the memory system.

Same contract and numerics as the `numpy` backend (input dtype, float32 accumulation for float16,
closed-form gradients, inputs never written), but an independent implementation that walks the
input tile by tile so that temporaries stay in cache (see `normspec.impls.fast_numpy_kernels`).
Registered as the entry point `numpy:fast`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from normspec.impls import fast_numpy_kernels as k
from normspec.impls.base import Backend, Kernel
from normspec.impls.numpy_backend import lay_out


def _layer_norm_forward(inputs, params):
    return {"y": k.layer_norm_forward(inputs["x"], inputs.get("weight"), inputs.get("bias"),
                                      params["normalized_shape"], params.get("eps", 1e-5))}


def _layer_norm_backward(inputs, params, dy):
    return k.layer_norm_backward(inputs["x"], inputs.get("weight"), dy, params["normalized_shape"],
                                 params.get("eps", 1e-5))


def _rms_norm_forward(inputs, params):
    return {"y": k.rms_norm_forward(inputs["x"], inputs.get("weight"), params["normalized_shape"],
                                    params.get("eps"))}


def _rms_norm_backward(inputs, params, dy):
    return k.rms_norm_backward(inputs["x"], inputs.get("weight"), dy, params["normalized_shape"], params.get("eps"))


FAST_KERNELS: dict[str, Kernel] = {
    "layer_norm": Kernel(forward=_layer_norm_forward, backward=_layer_norm_backward),
    "rms_norm": Kernel(forward=_rms_norm_forward, backward=_rms_norm_backward),
    "batch_norm": Kernel(forward=k.batch_norm_forward, backward=k.batch_norm_backward),
}


class FastNumpyBackend(Backend):
    name = "numpy:fast"
    dtypes = ("float64", "float32", "float16")
    layouts = ("contiguous", "channels_last", "strided")

    def __init__(self):
        self.kernels = FAST_KERNELS

    def native(self, array: np.ndarray, dtype: str, layout: str = "contiguous") -> np.ndarray:
        if dtype not in self.dtypes:
            raise ValueError(f"{self.name} backend does not support {dtype}; supported: {self.dtypes}")
        return lay_out(np.asarray(array).astype(np.dtype(dtype)), layout)

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.array(value, dtype=np.float64, copy=True)

    def gradients(self, norm: str, inputs: Mapping[str, Any], params: Mapping[str, Any], dy: Any,
                  wrt: tuple[str, ...]) -> dict[str, Any]:
        grads = self.kernels[norm].backward(inputs, params, dy)
        out = {}
        for role, g in grads.items():
            if role in wrt and inputs.get(role) is not None:
                out[role] = np.asarray(g).reshape(inputs[role].shape).astype(inputs[role].dtype)
        return out
