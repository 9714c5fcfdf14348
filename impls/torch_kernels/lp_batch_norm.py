"""Lp batch normalization composed from torch ops (PyTorch has none): the Lp scale through
`torch.linalg.vector_norm`, top-k with evenly shared ties. Half types compute in float32."""
from __future__ import annotations

import math

import torch

from normspec.impls.torch_backend import torch_kernel


def _constant(p, count, given):
    if given is not None:
        return float(given)
    if math.isinf(p):
        # Hoffer et al.'s reference code (norm_matters, models/lp_norm.py TopkBatchNorm2d)
        return 0.5 * (1.0 + math.sqrt(math.pi * math.log(4.0))) / math.sqrt(2.0 * math.log(count))
    return math.exp(-((p / 2) * math.log(2.0) + math.lgamma((p + 1) / 2) - 0.5 * math.log(math.pi)) / p)


def _scale(z, p, k, c):
    """S per row of z (C, m)."""
    m = z.shape[1]
    if math.isinf(p) and k > 1:
        a = z.abs()
        kth = torch.topk(a.detach(), k, dim=1).values[:, k - 1:k]
        above, tied = a.detach() > kth, a.detach() == kth
        n_above = above.sum(dim=1, keepdim=True)
        tied_mean = (a * tied).sum(dim=1, keepdim=True) / tied.sum(dim=1, keepdim=True)
        return c * ((a * above).sum(dim=1, keepdim=True) + (k - n_above) * tied_mean) / k
    if math.isinf(p):
        return c * torch.linalg.vector_norm(z, ord=math.inf, dim=1, keepdim=True)
    return c * torch.linalg.vector_norm(z, ord=p, dim=1, keepdim=True) / m ** (1.0 / p)


def forward(inputs, params):
    x = inputs["x"]
    p, k = params.get("p", 1.0), params.get("k", 1)
    rm0, rs0 = inputs.get("running_mean"), inputs.get("running_scale")
    training = params.get("training", True)
    batch = training or rm0 is None or rs0 is None
    count = x.numel() // x.shape[1]
    if not p >= 1.0:
        raise ValueError(f"lp_batch_norm needs p >= 1, got {p!r}")
    if math.isinf(p) and not 1 <= k <= count:
        raise ValueError(f"top-k needs 1 <= k <= {count}, got k={k!r}")
    if training and batch and count <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    rows = x.to(acc).movedim(1, 0).reshape(x.shape[1], -1)
    eps = params.get("eps", 1e-5)
    outside = params.get("eps_placement", "outside") == "outside"
    out = {}
    if batch:
        first = rows[:, :1].detach()
        mean = first + (rows - first).mean(dim=1, keepdim=True)
        z = (rows - first) - (mean - first)
        s = _scale(z, p, k, _constant(p, count, params.get("constant")))
        if training and rm0 is not None:
            m = params.get("momentum", 0.1)
            f = m if params.get("momentum_style", "new") == "new" else 1.0 - m
            out["running_mean"] = ((1 - f) * rm0.to(acc) + f * mean.detach()[:, 0]).to(rm0.dtype)
            out["running_scale"] = ((1 - f) * rs0.to(acc) + f * s.detach()[:, 0]).to(rs0.dtype)
    else:
        z = rows - rm0.to(acc)[:, None]
        s = rs0.to(acc)[:, None]
    yr = z / (s + eps if outside else torch.sqrt(s * s + eps))
    if inputs.get("weight") is not None:
        yr = yr * inputs["weight"].to(acc)[:, None]
    if inputs.get("bias") is not None:
        yr = yr + inputs["bias"].to(acc)[:, None]
    moved = (x.shape[1], x.shape[0]) + tuple(x.shape[2:])
    out["y"] = yr.reshape(moved).movedim(0, 1).to(x.dtype)
    return out


torch_kernel("lp_batch_norm")(forward)
