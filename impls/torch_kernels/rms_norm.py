"""RMSNorm through `torch.nn.functional.rms_norm` (eps=None passed through: PyTorch's own rule).
Over `axes` (channels-first), the dims are moved last and back. weight_offset=1 (Gemma, x̂ (1 + w))
passes the gain 1 + w, formed in float32 for half weights."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel
from normspec.spec.layer_norm import normalize_axes


def forward(inputs, params):
    x, w = inputs["x"], inputs.get("weight")
    if params.get("axes") is not None:  # over the given dims (channels-first): moved last, F.rms_norm, moved back
        axes = list(normalize_axes(params["axes"], x.ndim))
        last = list(range(x.ndim - len(axes), x.ndim))
        moved = x.movedim(axes, last)
        trailing = {k: v for k, v in params.items() if k != "axes"}
        trailing["normalized_shape"] = tuple(moved.shape[x.ndim - len(axes):])
        return {"y": forward({**inputs, "x": moved}, trailing)["y"].movedim(last, axes)}
    offset = params.get("weight_offset", 0.0)
    if w is not None and offset != 0.0:
        if w.dtype in (torch.float16, torch.bfloat16):
            y = F.rms_norm(x.float(), tuple(params["normalized_shape"]), w.float() + offset, eps=params.get("eps"))
            return {"y": y.to(x.dtype)}
        w = w + offset
    return {"y": F.rms_norm(x, tuple(params["normalized_shape"]), w, eps=params.get("eps"))}


torch_kernel("rms_norm")(forward)
