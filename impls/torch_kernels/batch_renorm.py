"""Batch Renormalization composed from torch ops (PyTorch has no op for it): r and d are
`.detach()`ed, the stop-gradient of Ioffe 2017, Algorithm 1. Half types compute in float32."""
from __future__ import annotations

import torch

from normspec.impls.torch_backend import torch_kernel
from normspec.impls.torch_kernels.common import affine


def _compute_dtype(t):
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def forward(inputs, params):
    x = inputs["x"]
    rm0, rs0 = inputs.get("running_mean"), inputs.get("running_std")
    if rm0 is None or rs0 is None:
        raise ValueError("batch_renorm needs running_mean and running_std")
    rmax, dmax = params.get("rmax", 3.0), params.get("dmax", 5.0)
    keras = params.get("form", "ioffe") == "keras"
    rmin = 1.0 / rmax if params.get("rmin") is None else params["rmin"]
    if rmax < (1.0 if params.get("rmin") is None else rmin) or dmax < 0.0 or rmin < 0.0:
        raise ValueError(f"batch_renorm needs rmax >= max(rmin, 1 without rmin) and dmax >= 0, "
                         f"got {rmin}, {rmax}, {dmax}")
    if keras and (inputs.get("moving_mean") is None or inputs.get("moving_std") is None):
        raise ValueError("batch_renorm form='keras' needs moving_mean and moving_std")
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
        eps = params.get("eps", 1e-5)
        sigma_b = torch.sqrt((xc * xc).mean(dim=axes, keepdim=True) + eps)
        denom = rs.clamp(min=eps ** 0.5) if keras else rs
        r = (sigma_b / denom).clamp(rmin, rmax).detach()
        d = ((mean - rm) / denom).clamp(-dmax, dmax).detach()
        xr = xc / sigma_b * r + d
        new_style = params.get("momentum_style", "new") == "new"
        m = params.get("momentum", 0.1)
        rn = params.get("renorm_momentum") if keras and params.get("renorm_momentum") is not None else m
        a = rn if new_style else 1.0 - rn
        out["running_mean"] = (rm + a * (mean.detach() - rm)).reshape(-1).to(rm0.dtype)
        out["running_std"] = (rs + a * (sigma_b.detach() - rs)).reshape(-1).to(rs0.dtype)
        if keras:
            b = m if new_style else 1.0 - m
            mm, ms = inputs["moving_mean"].to(acc).reshape(shape), inputs["moving_std"].to(acc).reshape(shape)
            out["moving_mean"] = (mm + b * (mean.detach() - mm)).reshape(-1).to(inputs["moving_mean"].dtype)
            out["moving_std"] = (ms + b * (sigma_b.detach() - ms)).reshape(-1).to(inputs["moving_std"].dtype)
    elif keras:  # Keras' inference: moving_variance = relu(moving_std^2 - eps), normalized with + eps
        eps = params.get("eps", 1e-5)
        mm, ms = inputs["moving_mean"].to(acc).reshape(shape), inputs["moving_std"].to(acc).reshape(shape)
        xr = (xa - mm) / torch.sqrt(torch.relu(ms * ms - eps) + eps)
    else:
        xr = (xa - rm) / rs
    xr = affine(xr, inputs, shape, acc)
    out["y"] = xr.to(x.dtype)
    return out


torch_kernel("batch_renorm")(forward)
