"""Weight Normalization through `torch.nn.utils.parametrizations.weight_norm`, driven as a module.

A holder module with a `weight` parameter is parametrized, then evaluated with
`torch.func.functional_call` on the caller's (g, v) as `original0`/`original1`: the same code
path as `nn.Linear` with weight_norm (`torch._weight_norm`), and autograd reaches g and v.
`dim` is passed through unchanged, as a user would; PyTorch reads dim=-1 as None.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from normspec.impls.torch_backend import torch_kernel


class WeightHolder(nn.Module):
    """A module whose only parameter is `weight`; forward returns the (parametrized) weight."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self) -> torch.Tensor:
        return self.weight


def forward(inputs, params):
    v, g = inputs["x"], inputs["weight"]
    holder = weight_norm(WeightHolder(v.detach().clone()), name="weight", dim=params.get("dim", 0))
    w = torch.func.functional_call(
        holder, {"parametrizations.weight.original0": g, "parametrizations.weight.original1": v}, ())
    return {"y": w}


torch_kernel("weight_norm")(forward)
