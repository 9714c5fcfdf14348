"""Recurrent batch norm over (N, T, F) composed from torch ops (PyTorch has no recurrent BN):
frame-wise or sequence-wise statistics, per-step population statistics (steps past T_max reuse
the last). Half types compute in float32."""
from __future__ import annotations

import torch

from normspec.impls.torch_backend import torch_kernel


def forward(inputs, params):
    x = inputs["x"]
    if x.ndim != 3:
        raise ValueError(f"recurrent_batch_norm expects input of shape (N, T, F), got {tuple(x.shape)}")
    statistics = params.get("statistics", "frame")
    if statistics not in ("frame", "sequence"):
        raise ValueError(f"statistics must be 'frame' or 'sequence', got {statistics!r}")
    frame = statistics == "frame"
    dims = (0,) if frame else (0, 1)
    rm0, rv0 = inputs.get("running_mean"), inputs.get("running_var")
    training = params.get("training", True)
    batch = training or rm0 is None or rv0 is None
    n, t, f = x.shape
    if rm0 is not None and frame and (rm0.ndim != 2 or rm0.shape[1] != f):
        raise ValueError(f"frame-wise running statistics must have shape (T_max, {f}), got {tuple(rm0.shape)}")
    if rm0 is not None and not frame and tuple(rm0.shape) != (f,):
        raise ValueError(f"sequence-wise running statistics must have shape ({f},), got {tuple(rm0.shape)}")
    count = n if frame else n * t
    if training and count <= 1:
        raise ValueError(f"Expected more than 1 value per feature when training, got input of shape {tuple(x.shape)}")
    if training and rm0 is not None and frame and t > rm0.shape[0]:
        raise ValueError(f"training on T={t} steps needs T_max >= T, got T_max={rm0.shape[0]}")
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xa = x.to(acc)
    eps = params.get("eps", 1e-5)
    out = {}
    if batch:
        first = (xa[:1] if frame else xa[:1, :1]).detach()
        mean = first + (xa - first).mean(dim=dims, keepdim=True)
        xc = (xa - first) - (mean - first)
        var = (xc * xc).mean(dim=dims, keepdim=True)
        xhat = xc / torch.sqrt(var + eps)
        if training and rm0 is not None:
            m = params.get("momentum", 0.1)
            a = m if params.get("momentum_style", "new") == "new" else 1.0 - m
            if params.get("running_var_style", "unbiased") == "unbiased":
                var = var * (count / (count - 1))
            rm, rv = rm0.to(acc).clone(), rv0.to(acc).clone()
            rows = slice(0, t) if frame else slice(None)
            rm[rows] = (1 - a) * rm[rows] + a * mean.detach().reshape(rm[rows].shape)
            rv[rows] = (1 - a) * rv[rows] + a * var.detach().reshape(rv[rows].shape)
            out["running_mean"], out["running_var"] = rm.to(rm0.dtype), rv.to(rv0.dtype)
    else:
        if frame:
            steps = torch.arange(t, device=x.device).clamp(max=rm0.shape[0] - 1)
            mean, var = rm0.to(acc)[steps].unsqueeze(0), rv0.to(acc)[steps].unsqueeze(0)
        else:
            mean, var = rm0.to(acc).reshape(1, 1, f), rv0.to(acc).reshape(1, 1, f)
        xhat = (xa - mean) / torch.sqrt(var + eps)
    y = xhat
    if inputs.get("weight") is not None:
        y = y * inputs["weight"].to(acc)
    if inputs.get("bias") is not None:
        y = y + inputs["bias"].to(acc)
    out["y"] = y.to(x.dtype)
    return out


torch_kernel("recurrent_batch_norm")(forward)
