"""GroupNorm through `torch.nn.functional.group_norm`."""
from __future__ import annotations

import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel


def forward(inputs, params):
    y = F.group_norm(inputs["x"], params["num_groups"], inputs.get("weight"), inputs.get("bias"),
                     eps=params.get("eps", 1e-5))
    return {"y": y}


torch_kernel("group_norm")(forward)
