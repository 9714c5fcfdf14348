"""Decorrelated batch norm (ZCA whitening in groups, Huang et al. CVPR 2018) composed from torch
ops: `torch.linalg.eigh` per group, autograd through it. Half types compute in float32.

Autograd through eigh's eigenvectors divides by eigenvalue gaps (documented in
torch.linalg.eigh), so gradients are inaccurate or non-finite for (nearly) repeated
eigenvalues, e.g. fewer samples than group channels: the harness reports that."""
from __future__ import annotations

import torch

from normspec.impls.torch_backend import torch_kernel
from normspec.impls.torch_kernels.common import affine


def forward(inputs, params):
    x = inputs["x"]
    gs = params.get("group_size")
    c = x.shape[1]
    if not isinstance(gs, int) or gs < 1 or c % gs:
        raise ValueError(f"group_size must be a positive divisor of the {c} channels, got {gs!r}")
    rm0, rw0 = inputs.get("running_mean"), inputs.get("running_whitening")
    training = params.get("training", True)
    batch = training or rm0 is None or rw0 is None
    if training and batch and x.numel() // c <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {tuple(x.shape)}")
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    flat = x.to(acc).movedim(1, -1).reshape(-1, c)
    xg = flat.reshape(flat.shape[0], c // gs, gs).transpose(0, 1)  # (G, m, gs)
    out = {}
    if batch:
        first = xg[:, :1].detach()
        mean = first + (xg - first).mean(dim=1, keepdim=True)
        xc = (xg - first) - (mean - first)
        cov = xc.transpose(1, 2) @ xc / xg.shape[1]
        lam, vecs = torch.linalg.eigh(cov)
        phi = (vecs / torch.sqrt(lam.clamp_min(0) + params.get("eps", 1e-5)).unsqueeze(1)) @ vecs.transpose(1, 2)
        if training and rm0 is not None:
            m = params.get("momentum", 0.1)
            f = m if params.get("momentum_style", "new") == "new" else 1.0 - m
            out["running_mean"] = ((1 - f) * rm0.to(acc) + f * mean.detach().reshape(-1)).to(rm0.dtype)
            out["running_whitening"] = ((1 - f) * rw0.to(acc) + f * phi.detach()).to(rw0.dtype)
    else:
        xc = xg - rm0.to(acc).reshape(c // gs, 1, gs)
        phi = rw0.to(acc)
    y = (xc @ phi).transpose(0, 1).reshape(flat.shape)
    y = y.reshape((x.shape[0],) + tuple(x.shape[2:]) + (c,)).movedim(-1, 1)
    shape = (1, c) + (1,) * (x.ndim - 2)
    y = affine(y, inputs, shape, acc)
    out["y"] = y.to(x.dtype)
    return out


torch_kernel("decorrelated_batch_norm")(forward)
