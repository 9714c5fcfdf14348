"""`numpy:fast`: NumPy normalization kernels written for the memory system.

Same contract and numerics as the `numpy` backend (input dtype, float32 accumulation for float16,
closed-form gradients, inputs never written), but an independent implementation that walks the
input tile by tile so that temporaries stay in cache (see the package `normspec.impls.fast_numpy`).
Registered as the entry point `numpy:fast`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from normspec.impls.base import Kernel
from normspec.impls.fast_numpy import batch_norm, row_norms
from normspec.impls.numpy_backend import NumpyBackend, empty_call


def _layer_norm_forward(inputs, params):
    return {"y": row_norms.layer_norm_forward(inputs["x"], inputs.get("weight"), inputs.get("bias"),
                                              params["normalized_shape"], params.get("eps", 1e-5))}


def _layer_norm_backward(inputs, params, dy):
    return row_norms.layer_norm_backward(inputs["x"], inputs.get("weight"), dy, params["normalized_shape"],
                                         params.get("eps", 1e-5))


def _rms_norm_forward(inputs, params):
    return {"y": row_norms.rms_norm_forward(inputs["x"], inputs.get("weight"), params["normalized_shape"],
                                            params.get("eps"))}


def _rms_norm_backward(inputs, params, dy):
    return row_norms.rms_norm_backward(inputs["x"], inputs.get("weight"), dy, params["normalized_shape"],
                                       params.get("eps"))


def _layer_norm_unsupported(params):
    if params.get("axes") is not None:
        return "numpy:fast's layer_norm normalizes a trailing normalized_shape only (not Keras' axes)"
    if params.get("saved_statistics"):
        return "numpy:fast's layer_norm does not return the saved statistics (mean, rstd)"
    return None


def _rms_norm_unsupported(params):
    if params.get("weight_offset", 0.0) != 0.0:
        return "numpy:fast's rms_norm takes the gain as given (no Gemma weight_offset)"
    if params.get("axes") is not None:
        return "numpy:fast's rms_norm normalizes a trailing normalized_shape only (not channels-first axes)"
    return None


FAST_KERNELS: dict[str, Kernel] = {
    "layer_norm": Kernel(forward=_layer_norm_forward, backward=_layer_norm_backward,
                         unsupported=_layer_norm_unsupported),
    "rms_norm": Kernel(forward=_rms_norm_forward, backward=_rms_norm_backward, unsupported=_rms_norm_unsupported),
    "batch_norm": Kernel(forward=batch_norm.batch_norm_forward, backward=batch_norm.batch_norm_backward),
}


class FastNumpyBackend(NumpyBackend):
    """The NumPy backend's array handling (dtypes, layouts, conversions) with the fast kernels."""

    name = "numpy:fast"

    def __init__(self):
        self.kernels = FAST_KERNELS

    def gradients(self, norm: str, inputs: Mapping[str, Any], params: Mapping[str, Any], dy: Any,
                  wrt: tuple[str, ...]) -> dict[str, Any]:
        if inputs.get("x") is not None and inputs["x"].size == 0:
            return empty_call(inputs, params, wrt)
        grads = self.kernels[norm].backward(inputs, params, dy)
        return {role: np.asarray(g).reshape(inputs[role].shape).astype(inputs[role].dtype)
                for role, g in grads.items() if role in wrt and inputs.get(role) is not None}
