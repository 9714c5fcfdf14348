"""RMSNorm through `torch.nn.functional.rms_norm` (eps=None passed through: PyTorch's own rule)."""
from __future__ import annotations

import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel


def forward(inputs, params):
    y = F.rms_norm(inputs["x"], tuple(params["normalized_shape"]), inputs.get("weight"), eps=params.get("eps"))
    return {"y": y}


torch_kernel("rms_norm")(forward)
