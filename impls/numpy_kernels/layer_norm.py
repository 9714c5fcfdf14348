"""LayerNorm forward/backward in NumPy (Ba, Kiros & Hinton 2016)."""
from __future__ import annotations

from normspec.impls.numpy_backend import numpy_kernel
from normspec.impls.numpy_kernels.moments import affine_backward, apply_affine, normalize, normalize_backward


def _axes(x, params):
    k = len(tuple(params["normalized_shape"]))
    if k == 0 or tuple(x.shape[x.ndim - k:]) != tuple(params["normalized_shape"]):
        raise ValueError(
            f"normalized_shape {tuple(params['normalized_shape'])} must be a suffix of the input shape {x.shape}"
        )
    return tuple(range(x.ndim - k, x.ndim))


def forward(inputs, params):
    x = inputs["x"]
    xhat, *_ = normalize(x, _axes(x, params), params.get("eps", 1e-5))
    return {"y": apply_affine(xhat, inputs).astype(x.dtype)}


def backward(inputs, params, dy):
    x = inputs["x"]
    axes = _axes(x, params)
    xhat, _, _, inv_std = normalize(x, axes, params.get("eps", 1e-5))
    g_hat, grads = affine_backward(dy.astype(xhat.dtype), xhat, inputs, tuple(range(x.ndim - len(axes))))
    return {"x": normalize_backward(g_hat, xhat, inv_std, axes).astype(x.dtype), **grads}


numpy_kernel("layer_norm", backward=backward)(forward)
