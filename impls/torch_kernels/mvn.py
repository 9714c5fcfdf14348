"""Mean-variance normalization composed from torch ops (PyTorch has no MVN op).

Statistics in float32 for half inputs; the mean is taken after subtracting each set's first
value, so a constant set centres to exactly 0 (as Caffe's and ONNX's eps=1e-9 would otherwise
turn a rounding residue of the mean into an output of order 1)."""
from __future__ import annotations

import torch

from normspec.impls.torch_backend import torch_kernel


def forward(inputs, params):
    x = inputs["x"]
    if params.get("axes") is not None:  # ONNX's explicit axes
        dims = tuple(sorted({d % x.ndim for d in params["axes"] if -x.ndim <= d < x.ndim}))
        if not dims or len(dims) != len(tuple(params["axes"])):
            raise ValueError(f"mvn axes {tuple(params['axes'])} do not fit an input of shape {tuple(x.shape)}")
    else:
        first = 1 if params.get("across_channels", False) else 2
        if x.ndim <= first:
            raise ValueError(f"mvn over dims {first}.. needs an input with more dims than {tuple(x.shape)}")
        dims = tuple(range(first, x.ndim))
    xa = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    index = tuple(slice(0, 1) if d in dims else slice(None) for d in range(x.ndim))
    shifted = xa - xa[index]
    c = shifted - shifted.mean(dim=dims, keepdim=True)
    if params.get("normalize_variance", True):
        sigma = torch.sqrt(c.square().mean(dim=dims, keepdim=True))
        c = c / (sigma + params.get("eps", 1e-9))
    return {"y": c.to(x.dtype)}


torch_kernel("mvn")(forward)
