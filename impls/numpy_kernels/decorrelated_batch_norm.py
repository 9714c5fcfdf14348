"""Decorrelated batch norm (ZCA whitening in groups, Huang et al. CVPR 2018) in NumPy: batched
eigh in the accumulation dtype, closed-form backward with the gap-free divided differences."""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel
from normspec.impls.numpy_kernels.moments import apply_affine


def _groups(a, gs, acc):
    """a (N, C, *S) as (G, m, gs) in `acc`."""
    c = a.shape[1]
    flat = np.moveaxis(a, 1, -1).reshape(-1, c).astype(acc)
    return np.ascontiguousarray(flat.reshape(flat.shape[0], c // gs, gs).transpose(1, 0, 2))


def _ungroup(g, shape):
    c = shape[1]
    flat = g.transpose(1, 0, 2).reshape(-1, c)
    return np.moveaxis(flat.reshape((shape[0],) + tuple(shape[2:]) + (c,)), -1, 1)


def _check(x, params, batch):
    gs = params.get("group_size")
    if not isinstance(gs, (int, np.integer)) or gs < 1 or x.shape[1] % gs:
        raise ValueError(f"group_size must be a positive divisor of the {x.shape[1]} channels, got {gs!r}")
    if params.get("training", True) and batch and x.size // x.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape}")


def _state(inputs, params):
    x = inputs["x"]
    has_running = inputs.get("running_mean") is not None and inputs.get("running_whitening") is not None
    batch = params.get("training", True) or not has_running
    _check(x, params, batch)
    gs, acc = params["group_size"], accumulation_dtype(x.dtype)
    xg = _groups(x, gs, acc)
    eps = acc.type(params.get("eps", 1e-5))
    if not batch:
        mean = inputs["running_mean"].astype(acc).reshape(xg.shape[0], 1, gs)
        return x, batch, xg - mean, inputs["running_whitening"].astype(acc), None, None, mean
    shift = xg[:, :1].copy()
    mean = shift + (xg - shift).mean(axis=1, keepdims=True)
    xc = (xg - shift) - (mean - shift)
    cov = np.matmul(xc.transpose(0, 2, 1), xc) / acc.type(xg.shape[1])
    lam, vecs = np.linalg.eigh(cov)
    root = np.sqrt(np.maximum(lam, 0) + eps)
    phi = np.matmul(vecs / root[:, None, :], vecs.transpose(0, 2, 1))
    return x, batch, xc, phi, root, vecs, mean


def forward(inputs, params):
    x, batch, xc, phi, _, _, mean = _state(inputs, params)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    out = {"y": apply_affine(_ungroup(np.matmul(xc, phi), x.shape), inputs, shape).astype(x.dtype)}
    if params.get("training", True) and inputs.get("running_mean") is not None:
        m = params.get("momentum", 0.1)
        f = m if params.get("momentum_style", "new") == "new" else 1.0 - m
        rm, rw = inputs["running_mean"], inputs["running_whitening"]
        out["running_mean"] = ((1 - f) * rm.astype(mean.dtype) + f * mean.reshape(-1)).astype(rm.dtype)
        out["running_whitening"] = ((1 - f) * rw.astype(phi.dtype) + f * phi).astype(rw.dtype)
    return out


def backward(inputs, params, dy):
    x, batch, xc, phi, root, vecs, _ = _state(inputs, params)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    gs = params["group_size"]
    # gamma * dy in the accumulation dtype: rounded to float16 it errs by float16's roundoff,
    # past the model's bound for a float32-accumulating kernel (found by the dev profile)
    acc = xc.dtype
    if inputs.get("weight") is None:
        dyw = dy.astype(acc)
    else:
        dyw = dy.astype(acc) * inputs["weight"].astype(acc).reshape(shape)
    g = _groups(dyw, gs, acc)
    if batch:
        a = np.matmul(xc.transpose(0, 2, 1), g)
        a = (a + a.transpose(0, 2, 1)) * xc.dtype.type(0.5)
        k = -1.0 / (root[:, :, None] * root[:, None, :] * (root[:, :, None] + root[:, None, :]))
        vecs_t = vecs.transpose(0, 2, 1)
        b = np.matmul(np.matmul(vecs, k * np.matmul(np.matmul(vecs_t, a), vecs)), vecs_t)
        dxc = np.matmul(g, phi) + np.matmul(xc, b) * xc.dtype.type(2.0 / xc.shape[1])
        dxg = dxc - dxc.mean(axis=1, keepdims=True)
    else:
        dxg = np.matmul(g, phi.transpose(0, 2, 1))
    grads = {"x": _ungroup(dxg, x.shape).astype(x.dtype)}
    yhat = _ungroup(np.matmul(xc, phi), x.shape)
    if inputs.get("weight") is not None:
        grads["weight"] = (dy.astype(yhat.dtype) * yhat).sum(axis=axes).astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = dy.astype(yhat.dtype).sum(axis=axes).astype(inputs["bias"].dtype)
    return grads


numpy_kernel("decorrelated_batch_norm", backward=backward)(forward)
