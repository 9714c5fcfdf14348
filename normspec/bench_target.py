"""The user's own implementation as a bench backend (`normspec bench --target TARGET`).

TARGET has validate's syntax (`package.module:attr` or `path/to/file.py:attr`; a torch.nn drop-in
module or a torch.nn.functional drop-in; `--as`/`--kind` as in validate). The candidate is loaded
in this process, not in validate's supervised child, so that its calls are timed like any other
backend's: a module is constructed once per (shape, parameters) with the call's constructor
arguments, parameters and buffers (as validate's adapters do), then called directly.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from normspec.impls.base import Kernel
from normspec.impls.torch_backend import TorchBackend
from normspec.validate import adapters


class TargetError(ValueError):
    """The target cannot be benchmarked as given (a usage error)."""


def target_contract(obj, given):
    """The contract the candidate is timed under: the one declared beside it (NORMSPEC_CONTRACT or @contract),
    with the command line's fields (--ctor, --convention) over it, as validate merges them; None if neither."""
    from normspec.validate.contract import Contract

    declared = adapters.find_contract(obj)
    if declared is None and given is None:
        return None
    return (declared or Contract()).merged(given)


class TargetBackend(TorchBackend):
    """One kernel: the candidate, for the norm it implements."""

    layouts = ("contiguous", "channels_last", "strided")

    def __init__(self, target: str, as_norm: str | None = None, kind: str | None = None, compile: bool | str = False,
                 contract=None):
        if ":" not in target or not target.rsplit(":", 1)[1]:
            raise TargetError(f"TARGET {target!r} must be 'package.module:attr' or 'path/to/file.py:attr'")
        try:
            obj = adapters.load_target(target)
        except Exception as exc:
            raise TargetError(f"cannot import {target}: {type(exc).__name__}: {exc}") from None
        found, norm, *_ = adapters.classify(obj)
        if found is None:
            raise TargetError(f"{target} is a {type(obj).__name__}: expected a torch.nn.Module subclass or a "
                              f"torch.nn.functional drop-in")
        norm = as_norm or norm
        if norm is None or norm not in adapters.ADAPTED_NORMS:
            raise TargetError(f"cannot tell which normalization {target} implements; pass --as NORM, one of: "
                              f"{', '.join(adapters.ADAPTED_NORMS)}")
        if found == "function":
            found = kind or "functional"
        if found not in ("module", "functional"):
            raise TargetError("bench --target times torch drop-ins (a module or a functional); a NumPy "
                              "spec-signature function is not a speed peer")
        self.contract = target_contract(obj, contract)
        if self.contract is not None and self.contract.axes == "channels":  # its rows said skipped, exit 0 (red team)
            raise TargetError(f"{target} normalizes over the channels (axes=channels): bench times the trailing-dim "
                              f"call the registered backends make, so it cannot time a channels-first norm beside "
                              f"them yet")
        wire = self.contract.to_wire() if self.contract is not None else None
        self.wire = wire
        shapes = adapters.compile_shapes(compile)
        self.obj = adapters.compiled(obj, shapes) if shapes else obj
        self.kind, self.norm = found, norm
        self.name = f"target:{target.rsplit(':', 1)[1]}" + (
            "" if not shapes else " (compiled)" if shapes == "dynamic" else " (compiled, static shapes)")
        self.modules: dict[tuple, torch.nn.Module] = {}
        self.kernels = {norm: Kernel(forward=self._forward,
                                     unsupported=lambda p: adapters.unsupported(norm, found, dict(p), wire))}

    def _module(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> torch.nn.Module:
        x = inputs["x"]
        key = (tuple(x.shape), x.dtype, tuple(sorted((k, str(v)) for k, v in params.items())),
               tuple(sorted(id(v) for v in inputs.values() if v is not None)))
        if key not in self.modules:
            t = {r: v for r, v in inputs.items() if v is not None}
            module = adapters.construct(self.norm, self.obj, tuple(x.shape), t, dict(params), self.wire)
            module = module.to(x.device, x.dtype)
            adapters.load_state(self.norm, module, t, dict(params))
            module.train(bool(params.get("training", True)))
            self.modules.clear()  # one module alive at a time (the bench keeps one call prepared)
            self.modules[key] = module
        return self.modules[key]

    def _forward(self, inputs, params, grad: bool = False):
        t = {r: v for r, v in inputs.items() if v is not None}
        with torch.enable_grad() if grad else torch.no_grad():
            if self.kind == "module":
                module = self._module(inputs, params)
                y = module(t["x"])
                state = adapters.state_outputs(self.norm, module, t, dict(params))
            else:
                y, state = adapters.call_functional(self.norm, self.obj, t, dict(params))
        return {"y": y, **state}

    def gradients(self, norm, inputs, params, dy, wrt):
        if self.kind == "functional":
            leaves = {r: (t.detach().requires_grad_(True) if t is not None and r in wrt else t)
                      for r, t in inputs.items()}
            y = self._forward(leaves, params, grad=True)["y"]
            roles = [r for r in wrt if leaves.get(r) is not None]
            got = torch.autograd.grad(y, [leaves[r] for r in roles], grad_outputs=dy, allow_unused=True)
            return {r: (g if g is not None else torch.zeros_like(leaves[r])) for r, g in zip(roles, got)}
        x = inputs["x"].detach().requires_grad_("x" in wrt)
        module = self._module(inputs, params)
        y = self._forward({**inputs, "x": x}, params, grad=True)["y"]
        leaves = {"x": x, "weight": getattr(module, "weight", None), "bias": getattr(module, "bias", None)}
        roles = [r for r in wrt if leaves.get(r) is not None and inputs.get(r) is not None]
        got = torch.autograd.grad(y, [leaves[r] for r in roles], grad_outputs=dy, allow_unused=True)
        return {r: (g if g is not None else torch.zeros_like(leaves[r])) for r, g in zip(roles, got)}
