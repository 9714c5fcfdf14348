"""BatchNorm through `torch.nn.functional.batch_norm`, conventions mapped onto PyTorch's."""
from __future__ import annotations

import torch.nn.functional as F

from normspec.impls.running import momentum_factor
from normspec.impls.torch_backend import torch_kernel


def unsupported(params):
    if params.get("running_var_style", "unbiased") != "unbiased":
        return "torch.nn.functional.batch_norm feeds the running variance the unbiased estimate only"
    return None


def forward(inputs, params):
    training = params.get("training", True)
    rm, rv = inputs.get("running_mean"), inputs.get("running_var")
    # F.batch_norm updates running stats in place: hand it clones, return them as the new state.
    rm = None if rm is None else rm.detach().clone()
    rv = None if rv is None else rv.detach().clone()
    momentum = momentum_factor(params)  # momentum=None: 1/num_batches_tracked, as nn.BatchNorm does
    y = F.batch_norm(
        inputs["x"], rm, rv, inputs.get("weight"), inputs.get("bias"),
        training=training or rm is None, momentum=momentum, eps=params.get("eps", 1e-5),
    )
    out = {"y": y}
    if training and rm is not None:
        out["running_mean"], out["running_var"] = rm, rv
    return out


torch_kernel("batch_norm", unsupported=unsupported)(forward)
