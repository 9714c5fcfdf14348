"""LayerNorm through `torch.nn.functional.layer_norm`, or `torch.native_layer_norm` when the saved
statistics (mean, rstd) are asked for. Keras' `axes` (any set of axes) are moved to the end
(torch normalizes a suffix), normalized there and moved back."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel


def _axes(x, params):
    axes = params["axes"]
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    out = sorted({int(a) % x.ndim for a in axes if -x.ndim <= int(a) < x.ndim})
    if not out or len(out) != len(axes):
        raise ValueError(f"layer_norm axes {axes} do not fit an input of shape {tuple(x.shape)}")
    return out


def forward(inputs, params):
    x, w, b, eps = inputs["x"], inputs.get("weight"), inputs.get("bias"), params.get("eps", 1e-5)
    order = None
    if params.get("axes") is not None:
        axes = _axes(x, params)
        order = [d for d in range(x.ndim) if d not in axes] + axes
        x = x.permute(order)
        shape = tuple(x.shape[x.ndim - len(axes):])
    else:
        shape = tuple(params["normalized_shape"])
    if params.get("saved_statistics"):
        y, mean, rstd = torch.native_layer_norm(x, shape, w, b, eps)
        out = {"y": y, "mean": mean, "rstd": rstd}
    else:
        out = {"y": F.layer_norm(x, shape, w, b, eps=eps)}
    if order is not None:
        inverse = [order.index(d) for d in range(len(order))]
        out = {k: v.permute(inverse) for k, v in out.items()}
    return out


torch_kernel("layer_norm")(forward)
