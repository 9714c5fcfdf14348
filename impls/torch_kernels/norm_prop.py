"""Normalization Propagation layer composed from torch ops (Arpit et al. 2016)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel
from normspec.spec.norm_prop import RELU_MEAN, RELU_STD

# the mean and std of max(0, z), z ~ N(0, 1): constants of the paper, stated once in the spec
_MEAN, _STD = RELU_MEAN, RELU_STD


def forward(inputs, params):
    x, w = inputs["x"], inputs["weight"]
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"norm_prop needs x (N, in) and W (out, in), got x{tuple(x.shape)} and W{tuple(w.shape)}")
    # half inputs are computed in float32: in float16 the backward of the row norm overflowed to
    # inf in dweight for one-element rows (a dev-profile draw of norm_prop_rectangular)
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xa, wa = x.to(acc), w.to(acc)
    scale = 1.0 / torch.linalg.vector_norm(wa, dim=1, keepdim=True)
    if inputs.get("gamma") is not None:
        scale = inputs["gamma"].to(acc).unsqueeze(1) * scale
    bias = inputs.get("bias")
    u = F.linear(xa, wa * scale, None if bias is None else bias.to(acc))
    if params.get("activation", "relu") == "identity":
        return {"y": u.to(x.dtype)}
    return {"y": ((torch.relu(u) - _MEAN) / _STD).to(x.dtype)}


torch_kernel("norm_prop")(forward)
