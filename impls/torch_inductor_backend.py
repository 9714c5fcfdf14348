"""`torch:inductor`: the torch kernels under `torch.compile` (TorchInductor), on CPU (and CUDA).

Each norm's torch kernel (`normspec.impls.torch_kernels`) is compiled once with `dynamic=True`
and `fullgraph=True`: shapes are symbolic, so the property matrix does not recompile for every
drawn shape (a new dtype, layout, training flag or None-vs-tensor parameter still does), and a
graph break is an error rather than a silent fall-back to eager. Past the recompile limit torch
would also fall back to eager silently; here that raises instead, so every verdict is Inductor's.
Gradients are AOTAutograd's compiled backward. Compile time is counted per norm (`compile_log`).

Inductor generates its own reductions and fusions, so it is a different implementation from
`torch:cpu`, not a wrapper: its deviations are its own findings (`normspec/expected.py`).
"""
from __future__ import annotations

import time

import torch

from normspec.impls.base import BackendUnavailable, Kernel
from normspec.impls.torch_backend import TORCH_KERNELS, TorchBackend, _load_kernels

# The norms PyTorch has as native ops (one ATen op or a documented module); the composed kernels
# (MVN, Batch Renorm, ...) are normspec's own torch code and are not Inductor's to answer for.
NATIVE = ("batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm",
          "weight_norm")
# Recompiles allowed per kernel: dtype x rank x layout x which parameters are None stays under
# this (layer_norm in the dev profile needed more than 64 graphs); past it, raise rather than run eager.
RECOMPILE_LIMIT = 1024


def _weight_norm(inputs, params):
    """w = g * v / ||v|| through `torch._weight_norm` (what the weight_norm parametrization calls)."""
    dim = params.get("dim", 0)
    return {"y": torch._weight_norm(inputs["x"], inputs["weight"], -1 if dim is None else dim)}


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledKernel:
    """A torch kernel's forward under torch.compile, with the time spent compiling recorded."""

    def __init__(self, norm: str, forward, log: dict):
        self.norm, self.log = norm, log
        self.compiled = torch.compile(forward, dynamic=True, fullgraph=True, backend="inductor")

    def __call__(self, inputs, params):
        before, start = _graphs(), time.perf_counter()
        # An absent optional input and one passed as None are the same call to the kernel (it reads
        # them with .get), but Dynamo guards on the dict's keys: dropping the Nones keeps the two
        # from compiling separate graphs (layer_norm: weight/bias absent vs None doubled its graphs).
        out = self.compiled({k: v for k, v in inputs.items() if v is not None}, dict(params))
        new = _graphs() - before
        if new:
            entry = self.log.setdefault(self.norm, [0, 0.0])
            entry[0] += new
            entry[1] += time.perf_counter() - start
        return out


class TorchInductorBackend(TorchBackend):
    """torch:inductor (CPU); opt-in: it compiles for minutes, so `normspec check` runs it when named."""

    device = "cpu"
    opt_in = True
    native_norms = NATIVE

    def __init__(self):
        try:
            import torch._dynamo  # noqa: F401
            import torch._inductor  # noqa: F401
        except Exception as exc:  # pragma: no cover - a torch build without the compiler stack
            raise BackendUnavailable(f"torch.compile is unavailable in this torch build: {exc}") from None
        _load_kernels()
        cfg = torch._dynamo.config
        cfg.recompile_limit = max(getattr(cfg, "recompile_limit", 8), RECOMPILE_LIMIT)
        cfg.accumulated_recompile_limit = max(getattr(cfg, "accumulated_recompile_limit", 256), 4096)
        cfg.fail_on_recompile_limit_hit = True  # never run eager silently under this backend's name
        self.compile_log: dict[str, list] = {}  # norm -> [graphs compiled, seconds of the compiling calls]
        sources = {n: TORCH_KERNELS[n] for n in NATIVE if n in TORCH_KERNELS}
        sources["weight_norm"] = Kernel(forward=_weight_norm)
        self.kernels = {n: Kernel(forward=CompiledKernel(n, k.forward, self.compile_log), unsupported=k.unsupported)
                        for n, k in sources.items()}

    def notes(self) -> list[str]:
        """One line per norm: graphs compiled and the seconds the compiling calls took."""
        return [f"{self.name} compiled {n} graph(s) for {norm} in {s:.1f}s"
                for norm, (n, s) in sorted(self.compile_log.items())]


class TorchInductorCUDABackend(TorchInductorBackend):
    device = "cuda"

    def __init__(self):
        if not torch.cuda.is_available():
            raise BackendUnavailable("CUDA is not available (torch.cuda.is_available() is False)")
        super().__init__()
