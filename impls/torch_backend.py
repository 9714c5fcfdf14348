"""The PyTorch backends, `torch:cpu` and `torch:cuda`: the library's own ops, autograd for gradients.

Kernels live in `normspec.impls.torch_kernels`, one module per family; they call the
`torch.nn.functional` op (or compose torch ops where PyTorch has none) and must not modify
their inputs (functional ops that update running statistics in place get clones).
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

import numpy as np
import torch

from normspec.impls.base import Backend, BackendUnavailable, Kernel
from normspec.impls.layout import EXPANDED, LAYOUTS, channels_last_order, expandable, inverse

TORCH_KERNELS: dict[str, Kernel] = {}

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_kernel(norm: str, **kwargs):
    """Decorator registering a torch forward for `norm` (gradients come from autograd)."""

    def deco(forward):
        TORCH_KERNELS[norm] = Kernel(forward=forward, **kwargs)
        return forward

    return deco


def _load_kernels() -> None:
    import normspec.impls.torch_kernels as package

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")


class TorchBackend(Backend):
    dtypes = tuple(TORCH_DTYPES)
    layouts = LAYOUTS
    extra_layouts = (EXPANDED,)
    device = "cpu"

    def __init__(self):
        _load_kernels()
        self.kernels = TORCH_KERNELS

    def native(self, array: np.ndarray, dtype: str, layout: str = "contiguous") -> torch.Tensor:
        t = torch.from_numpy(np.array(array, dtype=np.float64, copy=True)).to(self.device, TORCH_DTYPES[dtype])
        if layout == "contiguous" or t.ndim == 0:
            return t.contiguous()
        if layout == "channels_last":
            if t.ndim < 3:
                return t.contiguous()
            order = channels_last_order(t.ndim)
            return t.permute(order).contiguous().permute(inverse(order))
        if layout == "strided":
            wide = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
            wide[..., ::2] = t
            return wide[..., ::2]
        if layout == "offset":
            buffer = torch.zeros(t.numel() + 1, dtype=t.dtype, device=t.device)
            buffer[1:] = t.reshape(-1)
            return buffer[1:].view(t.shape)
        if layout == EXPANDED:
            if not expandable(np.asarray(array)):
                raise ValueError("the expanded layout needs values that repeat along axis 0")
            return t[:1].clone().expand(t.shape)
        raise ValueError(f"unknown layout {layout!r}")

    def to_numpy(self, value: Any) -> np.ndarray:
        return value.detach().to("cpu", torch.float64).numpy().copy()

    def gradients(self, norm: str, inputs: Mapping[str, Any], params: Mapping[str, Any], dy: Any,
                  wrt: tuple[str, ...]) -> dict[str, Any]:
        leaves = {}
        for role, t in inputs.items():
            if t is not None and role in wrt:
                leaves[role] = t.detach().requires_grad_(True)  # same storage and strides, fresh leaf
            else:
                leaves[role] = t
        with torch.enable_grad():
            y = self.kernels[norm].forward(leaves, params)["y"]
            targets = [leaves[r] for r in wrt if r in leaves and leaves[r] is not None]
            grads = torch.autograd.grad(y, targets, grad_outputs=dy, allow_unused=True)
        roles = [r for r in wrt if r in leaves and leaves[r] is not None]
        return {r: (g if g is not None else torch.zeros_like(leaves[r])) for r, g in zip(roles, grads)}

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


class TorchCPUBackend(TorchBackend):
    name = "torch:cpu"
    device = "cpu"


class TorchCUDABackend(TorchBackend):
    name = "torch:cuda"
    device = "cuda"

    def __init__(self):
        if not torch.cuda.is_available():
            raise BackendUnavailable("CUDA is not available (torch.cuda.is_available() is False)")
        super().__init__()
