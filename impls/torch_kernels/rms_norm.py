"""RMSNorm through `torch.nn.functional.rms_norm` (eps=None passed through: PyTorch's own rule).
weight_offset=1 (Gemma, x̂ (1 + w)) passes the gain 1 + w, formed in float32 for half weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel


def forward(inputs, params):
    x, w = inputs["x"], inputs.get("weight")
    offset = params.get("weight_offset", 0.0)
    if w is not None and offset != 0.0:
        if w.dtype in (torch.float16, torch.bfloat16):
            y = F.rms_norm(x.float(), tuple(params["normalized_shape"]), w.float() + offset, eps=params.get("eps"))
            return {"y": y.to(x.dtype)}
        w = w + offset
    return {"y": F.rms_norm(x, tuple(params["normalized_shape"]), w, eps=params.get("eps"))}


torch_kernel("rms_norm")(forward)
