"""Layer Normalization (Ba, Kiros & Hinton, 2016, "Layer Normalization", eq. 4).

Statistics per sample over the trailing `normalized_shape` dims; the affine parameters have
that shape (PyTorch's `elementwise_affine`, with `bias` optional since PyTorch 2.1).

`axes` (instead of normalized_shape) normalizes over any set of axes, as Keras'
`LayerNormalization(axis=...)` (an int or a list; the default -1 is the last axis): gamma and beta
then have the shape (x.shape[a] for a in sorted axes) and broadcast along those axes (Keras' param
shape lists the axes in the order given; it coincides for sorted axes).

`layer_norm_statistics` gives the saved statistics (mean, rstd = 1/sqrt(var + eps)), with the
normalized dims kept as size 1: what `torch.native_layer_norm` returns as its 2nd and 3rd outputs
and ONNX LayerNormalization (opset 17) as its optional outputs Mean and InvStdDev (its `axis` is the
first normalized dim: a suffix, like normalized_shape).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from normspec.spec.moments import as_float64, moments, moments_backward


def normalize_axes(axes, ndim: int) -> tuple[int, ...]:
    """Keras' axis argument (an int or a list, negative from the end) as sorted distinct axes."""
    axes = (axes,) if isinstance(axes, (int, np.integer)) else tuple(axes)
    out = []
    for a in axes:
        if int(a) != a or not -ndim <= a < ndim:
            raise ValueError(f"layer_norm axes {axes!r} out of range for an input of {ndim} dims")
        out.append(int(a) % ndim)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"layer_norm axes must be a non-empty set of distinct axes, got {axes!r}")
    return tuple(sorted(out))


def param_shape(x: np.ndarray, axes: tuple[int, ...]) -> tuple[int, ...]:
    """The broadcast shape of gamma/beta over `axes`: their sizes there, 1 elsewhere."""
    return tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))


def _resolve(x: np.ndarray, normalized_shape, axes) -> tuple[int, ...]:
    if axes is None:
        return _axes(x, normalized_shape)
    if normalized_shape is not None:
        raise ValueError("give layer_norm either normalized_shape (PyTorch) or axes (Keras), not both")
    return normalize_axes(axes, x.ndim)


def _param(p, x, axes):
    """An affine tensor of shape (x.shape[a] for a in axes), broadcast over x."""
    p = as_float64(p)
    want = tuple(x.shape[a] for a in axes)
    if p.shape != want:
        raise ValueError(f"layer_norm weight/bias over axes {axes} must have shape {want}, got {p.shape}")
    return p.reshape(param_shape(x, axes))


def _axes(x: np.ndarray, normalized_shape) -> tuple[int, ...]:
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if k == 0 or x.shape[x.ndim - k:] != normalized_shape:
        raise ValueError(
            f"normalized_shape {normalized_shape} must be a non-empty suffix of the input shape {x.shape}"
        )
    return tuple(range(x.ndim - k, x.ndim))


class LayerNormResult(NamedTuple):
    """What `layer_norm(..., saved_statistics=True)` returns: torch.native_layer_norm's three outputs."""
    y: np.ndarray
    mean: np.ndarray
    rstd: np.ndarray


def layer_norm(x, normalized_shape=None, weight=None, bias=None, *, eps: float = 1e-5, axes=None,
               saved_statistics: bool = False):
    """y = gamma (x - mu)/sqrt(sigma^2 + eps) + beta, mu and sigma^2 over the last dims (or `axes`);
    with saved_statistics, LayerNormResult(y, mean, rstd) (see `layer_norm_statistics`)."""
    x = as_float64(x)
    red = _resolve(x, normalized_shape, axes)
    m = moments(x, red, eps)
    y = m.xhat
    if weight is not None:
        y = y * _param(weight, x, red)
    if bias is not None:
        y = y + _param(bias, x, red)
    return LayerNormResult(y, m.mean, 1.0 / m.std) if saved_statistics else y


def layer_norm_statistics(x, normalized_shape=None, *, eps: float = 1e-5, axes=None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, rstd = 1/sqrt(biased var + eps)) over the normalized dims, kept as size-1 dims
    (torch.native_layer_norm's saved mean and rstd; ONNX LayerNormalization's Mean and InvStdDev)."""
    x = as_float64(x)
    m = moments(x, _resolve(x, normalized_shape, axes), eps)
    return m.mean, 1.0 / m.std


def layer_norm_backward(dy, x, normalized_shape=None, weight=None, *, eps: float = 1e-5,
                        axes=None) -> dict[str, np.ndarray]:
    """Closed-form gradients {x, weight, bias} of `layer_norm` (weight and bias: summed over the
    dims not normalized, shaped like the parameters)."""
    x, dy = as_float64(x), as_float64(dy)
    red = _resolve(x, normalized_shape, axes)
    m = moments(x, red, eps)
    g_hat = dy if weight is None else dy * _param(weight, x, red)
    others = tuple(a for a in range(x.ndim) if a not in red)
    want = tuple(x.shape[a] for a in red)
    return {
        "x": moments_backward(g_hat, m, red),
        "weight": (dy * m.xhat).sum(axis=others).reshape(want),
        "bias": dy.sum(axis=others).reshape(want),
    }
