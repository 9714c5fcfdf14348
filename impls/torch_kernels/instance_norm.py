"""InstanceNorm through `torch.nn.functional.instance_norm`, with nn.InstanceNorm's module logic."""
from __future__ import annotations

import torch.nn.functional as F

from normspec.impls.torch_backend import torch_kernel


def forward(inputs, params):
    training = params.get("training", True)
    rm, rv = inputs.get("running_mean"), inputs.get("running_var")
    # F.instance_norm updates running stats in place: hand it clones, return them as the new state.
    rm = None if rm is None else rm.detach().clone()
    rv = None if rv is None else rv.detach().clone()
    momentum = params.get("momentum", 0.1)
    use_input_stats = training or rm is None or rv is None
    y = F.instance_norm(
        inputs["x"], rm, rv, inputs.get("weight"), inputs.get("bias"), use_input_stats=use_input_stats,
        momentum=0.0 if momentum is None else momentum,  # as nn.InstanceNorm does for momentum=None
        eps=params.get("eps", 1e-5),
    )
    out = {"y": y}
    if use_input_stats and rm is not None and rv is not None:
        out["running_mean"], out["running_var"] = rm, rv
    return out


torch_kernel("instance_norm")(forward)
