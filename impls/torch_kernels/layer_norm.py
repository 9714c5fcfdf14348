"""LayerNorm through `torch.nn.functional.layer_norm`."""
from __future__ import annotations

import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel


def forward(inputs, params):
    y = F.layer_norm(
        inputs["x"], tuple(params["normalized_shape"]), inputs.get("weight"), inputs.get("bias"),
        eps=params.get("eps", 1e-5),
    )
    return {"y": y}


torch_kernel("layer_norm")(forward)
