"""Weight Normalization (Salimans & Kingma 2016, "Weight Normalization: A Simple
Reparameterization to Accelerate Training of Deep Neural Networks", eq. 2).

w = g * v / ||v||, the Euclidean norm taken over every dim of v except `dim` (one g per index of
`dim`, g of v's shape with every other dim set to 1, as `torch._weight_norm`); `dim=None` takes
the norm of the whole tensor (g a scalar). Negative `dim` counts from the end (Python's
convention; PyTorch's `weight_norm` reads dim=-1 as None, see normspec.expected).
"""
from __future__ import annotations

import numpy as np

from normspec.spec.moments import as_float64


def resolve_dim(ndim: int, dim: int | None) -> int | None:
    """`dim` as a non-negative axis of a rank-`ndim` tensor (None stays None)."""
    if dim is None:
        return None
    if ndim < 1:
        raise ValueError("weight normalization needs a tensor of rank >= 1, got a scalar")
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim {dim} is out of range for a weight of rank {ndim}")
    return dim % ndim


def norm_axes(ndim: int, dim: int | None) -> tuple[int, ...]:
    """The axes the norm runs over: all of them except `dim`."""
    d = resolve_dim(ndim, dim)
    return tuple(a for a in range(ndim) if a != d)


def g_shape(shape: tuple[int, ...], dim: int | None) -> tuple[int, ...]:
    """The shape of g: v's shape with every dim except `dim` set to 1; () when dim is None."""
    d = resolve_dim(len(shape), dim)
    if d is None:
        return ()
    return tuple(s if a == d else 1 for a, s in enumerate(shape))


def _check_g(v: np.ndarray, g: np.ndarray, dim) -> np.ndarray:
    want = g_shape(v.shape, dim)
    if g.size != int(np.prod(want)):
        raise ValueError(f"g has shape {g.shape}, but weight_norm(dim={dim}) of v{v.shape} needs shape {want}")
    return g.reshape(want)


def weight_norm(v, g, *, dim: int | None = 0) -> np.ndarray:
    """w = g v / ||v||_2 with the norm over all dims except `dim` (eq. 2)."""
    v, g = as_float64(v), as_float64(g)
    g = _check_g(v, g, dim)
    norm = np.sqrt((v * v).sum(axis=norm_axes(v.ndim, dim), keepdims=True))
    return g * (v / norm)


def weight_norm_backward(dw, v, g, *, dim: int | None = 0) -> dict[str, np.ndarray]:
    """Closed-form gradients {"x": dL/dv, "weight": dL/dg} (Salimans & Kingma 2016, eq. 3-4).

    With n = ||v|| and w_hat = v/n: dg = sum dw * w_hat,  dv = (g/n)(dw - w_hat dg), i.e.
    dv = (g/n)(I - w w^T/g^2) dw: the projection makes dv orthogonal to v exactly.
    """
    dw, v, g = as_float64(dw), as_float64(v), as_float64(g)
    g = _check_g(v, g, dim)
    axes = norm_axes(v.ndim, dim)
    norm = np.sqrt((v * v).sum(axis=axes, keepdims=True))
    w_hat = v / norm
    dg = (dw * w_hat).sum(axis=axes, keepdims=True)
    return {"x": (g / norm) * (dw - w_hat * dg), "weight": dg.reshape(g_shape(v.shape, dim))}
