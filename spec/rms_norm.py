"""Root Mean Square Layer Normalization (Zhang & Sennrich, 2019, "Root Mean Square Layer
Normalization", eq. 4): y = x / RMS(x) * g with RMS(x) = sqrt(mean(x^2) + eps) over the trailing
`normalized_shape` dims. No centering, no bias (PyTorch `nn.RMSNorm`, `F.rms_norm`).

eps=None follows PyTorch 2.13 as measured (not the input dtype's own epsilon, as its docs once
said): torch.finfo(float32).eps for float16, bfloat16 and float32 inputs, finfo(float64).eps for
float64 — the machine epsilon of the dtype the statistics are computed in.

weight_offset (default 0, PyTorch): the gain is (weight_offset + weight). Gemma's RMSNorm stores
w zero-initialized and scales by (1 + w) (Gemma Team 2024, "Gemma: Open Models Based on Gemini
Research and Technology"; Hugging Face transformers `GemmaRMSNorm`: `output * (1.0 + self.weight)`),
so weight_offset=1 is that convention; the gradient with respect to w is unchanged.

axes (instead of normalized_shape): the dims normalized over, with a weight of their sizes; axes=(1,)
is RMSNorm over the channels of (N, C, *S) (timm's RmsNorm2d).
"""
from __future__ import annotations

import numpy as np

from normspec.spec.layer_norm import normalize_axes, param_shape
from normspec.spec.moments import as_float64

FLOAT32_EPS = float(np.finfo(np.float32).eps)
FLOAT64_EPS = float(np.finfo(np.float64).eps)
DEFAULT_EPS = {"float16": FLOAT32_EPS, "bfloat16": FLOAT32_EPS, "float32": FLOAT32_EPS, "float64": FLOAT64_EPS}


def resolve_eps(eps: float | None, dtype: str = "float64") -> float:
    """The eps `F.rms_norm` uses for an input of `dtype` when given `eps` (None: the dtype rule)."""
    if eps is not None:
        return float(eps)
    if dtype not in DEFAULT_EPS:
        raise ValueError(f"no eps=None rule for dtype {dtype!r}; known: {sorted(DEFAULT_EPS)}")
    return DEFAULT_EPS[dtype]


def _axes(x: np.ndarray, normalized_shape, axes=None) -> tuple[int, ...]:
    if axes is not None:
        return normalize_axes(axes, x.ndim)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if k == 0 or x.shape[x.ndim - k:] != normalized_shape:
        raise ValueError(f"normalized_shape {normalized_shape} must be a non-empty suffix of the input shape {x.shape}")
    return tuple(range(x.ndim - k, x.ndim))


def rms(x, normalized_shape, *, eps: float | None = None, dtype: str = "float64", axes=None) -> np.ndarray:
    """r = sqrt(mean(x^2) + eps) over the normalized dims, kept as size-1 dims."""
    x = as_float64(x)
    return np.sqrt(np.mean(x * x, axis=_axes(x, normalized_shape, axes), keepdims=True) + resolve_eps(eps, dtype))


def gain(weight, weight_offset: float = 0.0):
    """The effective gain (weight_offset + weight), None without a weight."""
    return None if weight is None else float(weight_offset) + as_float64(weight)


def rms_norm(x, normalized_shape, weight=None, *, eps: float | None = None, dtype: str = "float64",
             weight_offset: float = 0.0, axes=None) -> np.ndarray:
    """y = (offset + w) * x / sqrt(mean(x^2) + eps); `dtype` is the input dtype the eps=None rule is read for."""
    x = as_float64(x)
    y = x / rms(x, normalized_shape, eps=eps, dtype=dtype, axes=axes)
    if weight is not None:
        y = y * np.reshape(gain(weight, weight_offset), param_shape(x, _axes(x, normalized_shape, axes)))
    return y


def rms_norm_backward(dy, x, normalized_shape, weight=None, *, eps: float | None = None,
                      dtype: str = "float64", weight_offset: float = 0.0, axes=None) -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight}: with xhat = x/r and g = gamma dy (gamma = offset + w),
    dx = (g - xhat * mean(g xhat)) / r and dgamma = sum over the other dims of dy * xhat."""
    x, dy = as_float64(x), as_float64(dy)
    axes = _axes(x, normalized_shape, axes)
    r = rms(x, None, eps=eps, dtype=dtype, axes=axes)
    xhat = x / r
    g = dy if weight is None else dy * np.reshape(gain(weight, weight_offset), param_shape(x, axes))
    dx = (g - xhat * np.mean(g * xhat, axis=axes, keepdims=True)) / r
    return {"x": dx, "weight": (dy * xhat).sum(axis=tuple(a for a in range(x.ndim) if a not in axes))}
