"""Divisive normalization (Ren et al. 2017) composed from torch ops; autograd gives gradients."""
from __future__ import annotations

import torch

from normspec.impls.torch_backend import torch_kernel
from normspec.impls.torch_kernels.lrn import upcast, window_sum


class Field:
    def __init__(self, entries, x: torch.Tensor, border: str):
        if len(entries) != x.dim() or entries[0] not in (1, "all"):
            raise ValueError(f"field {entries!r} does not fit input shape {tuple(x.shape)}")
        self.full = tuple(a for a, e in enumerate(entries) if e == "all")
        self.windows = [(a, (e - 1) // 2, e - 1 - (e - 1) // 2) for a, e in enumerate(entries) if e not in ("all", 1)]
        if border == "zero":
            self.divisor = float(torch.tensor([b + f + 1 for _, b, f in self.windows], dtype=torch.float64).prod())
        else:
            ones = torch.ones_like(x)
            for axis, b, f in self.windows:
                ones = window_sum(ones, axis, b, f)
            self.divisor = ones

    def mean(self, a: torch.Tensor) -> torch.Tensor:
        if self.full:
            a = a.mean(dim=self.full, keepdim=True).expand_as(a)
        for axis, b, f in self.windows:
            a = window_sum(a, axis, b, f)
        return a / self.divisor


def forward(inputs, params):
    x = upcast(inputs["x"])
    border = params.get("border", "exclude")
    v = x - Field(tuple(params["summation"]), x, border).mean(x)
    r = torch.sqrt(params.get("eps", 1.0) + Field(tuple(params["suppression"]), x, border).mean(v * v))
    y = v / r
    shape = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    if inputs.get("weight") is not None:
        y = y * upcast(inputs["weight"]).reshape(shape)
    if inputs.get("bias") is not None:
        y = y + upcast(inputs["bias"]).reshape(shape)
    return {"y": y.to(inputs["x"].dtype)}



torch_kernel("divisive_norm")(forward)
