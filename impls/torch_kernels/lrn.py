"""LRN through `torch.nn.functional.local_response_norm` (the "pytorch" convention); the other
LRN conventions and MatConvNet's normalizations composed from torch ops (pad + unfold window sums)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel


def window_sum(t: torch.Tensor, axis: int, before: int, after: int) -> torch.Tensor:
    """out[i] = sum t[i - before .. i + after] along `axis`, zero padded."""
    moved = t.movedim(axis, -1)
    summed = F.pad(moved, (before, after)).unfold(-1, before + after + 1, 1).sum(-1)
    return summed.movedim(-1, axis)


def _extent(size: int, trailing: bool) -> tuple[int, int]:
    before = (size - 1) // 2 if trailing else size // 2
    return before, size - 1 - before


HALF = (torch.float16, torch.bfloat16)


def upcast(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors: composed kernels compute in float32, as PyTorch's own
    half kernels accumulate in float32; the result is cast back to the input's dtype."""
    return t.float() if t.dtype in HALF else t


def response(x_in, windows, scale, offset, beta, average=False):
    x = upcast(x_in)
    total = x * x
    for axis, before, after in windows:
        total = window_sum(total, axis, before, after)
    if average:
        count = torch.ones_like(x)
        for axis, before, after in windows:
            count = window_sum(count, axis, before, after)
        total = total / count
    return (x * (offset + scale * total).pow(-beta)).to(x_in.dtype)


def lrn_unsupported(params):
    if (params.get("convention", "pytorch") in ("caffe_across", "caffe_within", "tensorflow")
            and params["size"] % 2 == 0):
        return f"the {params['convention']} LRN convention has odd sizes only"
    return None


def lrn_forward(inputs, params):
    x = inputs["x"]
    size, convention = params["size"], params.get("convention", "pytorch")
    alpha, beta, k = params.get("alpha", 1e-4), params.get("beta", 0.75), params.get("k", 1.0)
    if convention == "pytorch":
        return {"y": F.local_response_norm(x, size, alpha=alpha, beta=beta, k=k)}
    if x.dim() < 3:
        raise ValueError(f"local_response_norm needs a 3-D or higher input, got {x.dim()}-D")
    if convention == "caffe_within":
        before, after = _extent(size, True)
        windows = [(a, before, after) for a in range(2, x.dim())]
        return {"y": response(x, windows, alpha / size ** (x.dim() - 2), 1.0, beta)}
    before, after = _extent(size, True)
    scale = alpha if convention == "tensorflow" else alpha / size
    return {"y": response(x, [(1, before, after)], scale, k, beta)}


def matconvnet_cross_channel_forward(inputs, params):
    before, after = _extent(params.get("size", 5), True)
    return {"y": response(inputs["x"], [(1, before, after)], params.get("alpha", 1e-4), params.get("kappa", 1.0),
                          params.get("beta", 0.75))}


def matconvnet_spatial_forward(inputs, params):
    windows = [(2 + i, *_extent(s, True)) for i, s in enumerate(params.get("size", (2, 2)))]
    return {"y": response(inputs["x"], windows, params.get("alpha", 10.0), 1.0, params.get("beta", 2.0),
                          average=params.get("reduction", "mean") == "mean")}


torch_kernel("local_response_norm", unsupported=lrn_unsupported)(lrn_forward)
torch_kernel("matconvnet_cross_channel")(matconvnet_cross_channel_forward)
torch_kernel("matconvnet_spatial")(matconvnet_spatial_forward)
