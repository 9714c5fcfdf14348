"""Normalization by reparametrization composed from torch ops: the whitened layer (Desjardins et al.
2015), the mean-normalized layer (Wiesler et al. 2014), Raiko et al.'s transformed tanh units (2012).
PyTorch has no module for them. At a refresh these kernels compute y through the refreshed parameters
(the statistics under no_grad, the compensating update inside autograd), so the gradients with respect
to the parameters the call received flow through the compensation. Half types compute in float32
(torch.linalg.eigh has no half kernels)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel


def _due(params) -> bool:
    interval, step = params.get("interval", 1), params.get("step", 0)
    if not isinstance(interval, int) or interval < 1 or not isinstance(step, int) or step < 0:
        raise ValueError(f"interval must be a positive integer and step a non-negative one, got {interval!r}, {step!r}")
    return bool(params.get("training", True)) and step % interval == 0


def _upcast(inputs, roles):
    x = inputs["x"]
    if x.ndim != 2:
        raise ValueError(f"expected x of shape (N, in_features), got {tuple(x.shape)}")
    compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    return x.dtype, [inputs[r].to(compute) for r in roles]


def _down(out, dtype):
    return {k: v.to(dtype) for k, v in out.items()}


def _whitening(x, eps, method):
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    if method not in ("pca", "zca"):
        raise ValueError(f"method must be 'pca' or 'zca', got {method!r}")
    mean = x.mean(dim=0)
    centred = x - mean
    cov = centred.T @ centred / x.shape[0]
    lam, vecs = torch.linalg.eigh((cov + cov.T) / 2)
    scale = torch.sqrt(lam.clamp(min=0) + eps)
    if method == "zca":
        return mean, (vecs / scale) @ vecs.T, (vecs * scale) @ vecs.T
    vecs, scale = vecs.flip(-1), scale.flip(-1)
    pivot = vecs.abs().argmax(dim=0)
    sign = torch.where(vecs.gather(0, pivot[None, :])[0] < 0, -1.0, 1.0).to(vecs.dtype)
    vecs = vecs * sign
    return mean, vecs.T / scale[:, None], vecs * scale


@torch_kernel("whitened_linear")
def whitened_forward(inputs, params):
    dtype, (x, v, d, c, u) = _upcast(inputs, ("x", "weight", "bias", "running_mean", "whitening"))
    if not _due(params):
        return _down({"y": F.linear(F.linear(x - c, u), v, d)}, dtype)
    with torch.no_grad():
        mean, u_new, u_inv = _whitening(x, params.get("eps", 1e-5), params.get("method", "pca"))
    w = v @ u
    v_new = w @ u_inv
    d_new = d + w @ (mean - c)
    y = F.linear(F.linear(x - mean, u_new), v_new, d_new)
    return _down({"y": y, "running_mean": mean, "whitening": u_new, "new_weight": v_new, "new_bias": d_new}, dtype)


@torch_kernel("mean_normalized_linear")
def mean_forward(inputs, params):
    dtype, (x, w, b, mu) = _upcast(inputs, ("x", "weight", "bias", "running_mean"))
    if not _due(params):
        return _down({"y": F.linear(x - mu, w, b)}, dtype)
    m = params.get("momentum", 1.0)
    if not 0 < m <= 1:
        raise ValueError(f"momentum must lie in (0, 1], got {m!r}")
    with torch.no_grad():
        mu_new = torch.lerp(mu, x.mean(dim=0), m)
    b_new = b + w @ (mu_new - mu)
    return _down({"y": F.linear(x - mu_new, w, b_new), "running_mean": mu_new, "new_bias": b_new}, dtype)


@torch_kernel("raiko_tanh")
def raiko_forward(inputs, params):
    roles = ("x", "weight", "bias", "out_weight", "shortcut", "out_bias", "alpha", "beta")
    dtype, (x, bw, b, aw, cw, e, al, be) = _upcast(inputs, roles)
    pre = F.linear(x, bw, b)
    if not _due(params):
        return _down({"y": F.linear(torch.tanh(pre) - al * pre - be, aw) + F.linear(x, cw, e)}, dtype)
    with torch.no_grad():
        slope = 1 - torch.tanh(pre) ** 2
        al_new = slope.mean(dim=0)
        be_new = torch.tanh(pre).mean(dim=0) - al_new * pre.mean(dim=0)
    d_al, d_be = al_new - al, be_new - be
    c_new = cw + (aw * d_al) @ bw
    e_new = e + aw @ (d_al * b + d_be)
    y = F.linear(torch.tanh(pre) - al_new * pre - be_new, aw) + F.linear(x, c_new, e_new)
    return _down({"y": y, "alpha": al_new, "beta": be_new, "new_shortcut": c_new, "new_out_bias": e_new}, dtype)
