"""Batch Renormalization composed from torch ops (PyTorch has no op for it): r and d are
`.detach()`ed, the stop-gradient of Ioffe 2017, Algorithm 1. Half types compute in float32."""
from __future__ import annotations

import torch

from normspec.impls.torch_backend import torch_kernel


def _compute_dtype(t):
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def forward(inputs, params):
    x = inputs["x"]
    rm0, rs0 = inputs.get("running_mean"), inputs.get("running_std")
    if rm0 is None or rs0 is None:
        raise ValueError("batch_renorm needs running_mean and running_std")
    rmax, dmax = params.get("rmax", 3.0), params.get("dmax", 5.0)
    if rmax < 1.0 or dmax < 0.0:
        raise ValueError(f"batch_renorm needs rmax >= 1 and dmax >= 0, got {rmax}, {dmax}")
    training = params.get("training", True)
    if training and x.numel() // x.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    acc = _compute_dtype(x)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    xa = x.to(acc)
    rm, rs = rm0.to(acc).reshape(shape), rs0.to(acc).reshape(shape)
    out = {}
    if training:
        first = xa[(slice(0, 1), slice(None)) + (slice(0, 1),) * (x.ndim - 2)].detach()
        mean = first + (xa - first).mean(dim=axes, keepdim=True)
        xc = (xa - first) - (mean - first)
        sigma_b = torch.sqrt((xc * xc).mean(dim=axes, keepdim=True) + params.get("eps", 1e-5))
        r = (sigma_b / rs).clamp(1.0 / rmax, rmax).detach()
        d = ((mean - rm) / rs).clamp(-dmax, dmax).detach()
        xr = xc / sigma_b * r + d
        m = params.get("momentum", 0.1)
        a = m if params.get("momentum_style", "new") == "new" else 1.0 - m
        out["running_mean"] = (rm + a * (mean.detach() - rm)).reshape(-1).to(rm0.dtype)
        out["running_std"] = (rs + a * (sigma_b.detach() - rs)).reshape(-1).to(rs0.dtype)
    else:
        xr = (xa - rm) / rs
    if inputs.get("weight") is not None:
        xr = xr * inputs["weight"].to(acc).reshape(shape)
    if inputs.get("bias") is not None:
        xr = xr + inputs["bias"].to(acc).reshape(shape)
    out["y"] = xr.to(x.dtype)
    return out


torch_kernel("batch_renorm")(forward)
