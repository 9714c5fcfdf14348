"""Spectral Normalization through `torch.nn.utils.parametrizations.spectral_norm` (power
iteration u first) or, for power_iteration_order="v_first", the legacy hook
`torch.nn.utils.spectral_norm` (v first, as Miyato et al.'s Algorithm 1), as a module.

The state (u, v) is handed in as the `_u`/`_v` (legacy: `weight_u`/`weight_v`) buffers (clones,
which the power iteration updates in place) with `torch.func.functional_call`, the module is put
in train or eval mode, and the buffers are read back as the new state.
"""
from __future__ import annotations

import torch
from torch.nn.utils import spectral_norm as legacy_spectral_norm
from torch.nn.utils.parametrizations import spectral_norm

from normspec.impls.torch_backend import torch_kernel
from normspec.impls.torch_kernels.weight_norm import WeightHolder


def unsupported(params):
    if params.get("dim", 0) is None:
        return "spectral_norm's dim=None picks 0 or 1 from the module type; give an explicit dim"
    if params.get("n_power_iterations", 1) < 1:
        return "torch.nn.utils.parametrizations.spectral_norm requires n_power_iterations >= 1"
    return None


def _legacy(inputs, params):
    """v first: the legacy forward pre-hook, whose state is weight_orig, weight_u, weight_v."""
    w = inputs["x"]
    dim = params.get("dim", 0) % w.ndim  # the legacy hook permutes by dim and needs it non-negative
    with torch.random.fork_rng(devices=[]):
        holder = legacy_spectral_norm(WeightHolder(w.detach().clone()), name="weight",
                                      n_power_iterations=params.get("n_power_iterations", 1),
                                      eps=params.get("eps", 1e-12), dim=dim)
    holder.train(params.get("training", True))
    u = inputs["u"].detach().clone(memory_format=torch.contiguous_format)
    v = inputs["v"].detach().clone(memory_format=torch.contiguous_format)
    y = torch.func.functional_call(holder, {"weight_orig": w, "weight_u": u, "weight_v": v}, ())
    return {"y": y, "u": u, "v": v}


def forward(inputs, params):
    if params.get("power_iteration_order", "u_first") == "v_first":
        return _legacy(inputs, params)
    w = inputs["x"]
    with torch.random.fork_rng(devices=[]):  # registration draws a random u, v: keep the caller's RNG untouched
        holder = spectral_norm(WeightHolder(w.detach().clone()), name="weight",
                               n_power_iterations=params.get("n_power_iterations", 1),
                               eps=params.get("eps", 1e-12), dim=params.get("dim", 0))
    holder.train(params.get("training", True))
    u = inputs["u"].detach().clone(memory_format=torch.contiguous_format)
    v = inputs["v"].detach().clone(memory_format=torch.contiguous_format)
    y = torch.func.functional_call(holder, {"parametrizations.weight.original": w,
                                            "parametrizations.weight.0._u": u,
                                            "parametrizations.weight.0._v": v}, ())
    return {"y": y, "u": u, "v": v}


torch_kernel("spectral_norm", unsupported=unsupported)(forward)
