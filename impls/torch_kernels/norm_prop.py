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
    scale = 1.0 / torch.linalg.vector_norm(w, dim=1, keepdim=True)
    if inputs.get("gamma") is not None:
        scale = inputs["gamma"].unsqueeze(1) * scale
    u = F.linear(x, w * scale, inputs.get("bias"))
    if params.get("activation", "relu") == "identity":
        return {"y": u}
    return {"y": (torch.relu(u) - _MEAN) / _STD}


torch_kernel("norm_prop")(forward)
