"""LayerNorm forward/backward in NumPy (Ba, Kiros & Hinton 2016): over the trailing normalized_shape
(PyTorch) or over Keras' `axes`, with the saved statistics (mean, rstd) when asked for."""
from __future__ import annotations

from normspec.impls.numpy_backend import numpy_kernel
from normspec.impls.numpy_kernels.moments import affine_backward, apply_affine, normalize, normalize_backward


def _axes(x, params):
    if params.get("axes") is not None:  # Keras' axis: any set of axes, negative from the end
        axes = params["axes"]
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        out = sorted({int(a) % x.ndim for a in axes if -x.ndim <= int(a) < x.ndim})
        if not out or len(out) != len(axes):
            raise ValueError(f"layer_norm axes {axes} do not fit an input of shape {x.shape}")
        return tuple(out)
    k = len(tuple(params["normalized_shape"]))
    if k == 0 or tuple(x.shape[x.ndim - k:]) != tuple(params["normalized_shape"]):
        raise ValueError(
            f"normalized_shape {tuple(params['normalized_shape'])} must be a suffix of the input shape {x.shape}"
        )
    return tuple(range(x.ndim - k, x.ndim))


def _shape(x, axes):
    """gamma/beta's broadcast shape: their sizes on the normalized axes, 1 elsewhere."""
    return tuple(x.shape[a] if a in axes else 1 for a in range(x.ndim))


def forward(inputs, params):
    x = inputs["x"]
    axes = _axes(x, params)
    xhat, mean, _, inv_std = normalize(x, axes, params.get("eps", 1e-5))
    out = {"y": apply_affine(xhat, inputs, _shape(x, axes)).astype(x.dtype)}
    if params.get("saved_statistics"):  # torch.native_layer_norm's mean and rstd, keepdims
        out["mean"], out["rstd"] = mean.astype(x.dtype), inv_std.astype(x.dtype)
    return out


def backward(inputs, params, dy):
    x = inputs["x"]
    axes = _axes(x, params)
    xhat, _, _, inv_std = normalize(x, axes, params.get("eps", 1e-5))
    others = tuple(a for a in range(x.ndim) if a not in axes)
    g_hat, grads = affine_backward(dy.astype(xhat.dtype), xhat, inputs, others, _shape(x, axes))
    return {"x": normalize_backward(g_hat, xhat, inv_std, axes).astype(x.dtype), **grads}


numpy_kernel("layer_norm", backward=backward)(forward)
