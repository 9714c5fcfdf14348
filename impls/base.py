"""The backend contract, and discovery through the `normspec.backends` entry-point group.

A backend owns its native array type. The harness hands it float64 NumPy arrays and asks for a
dtype and a memory layout (`native`), runs kernels on native arrays (`forward`, `gradients`) and
reads results back as float64 NumPy (`to_numpy`). Kernels are registered per norm name.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, Mapping

import numpy as np

DTYPES = ("float64", "float32", "float16", "bfloat16")
LAYOUTS = ("contiguous", "channels_last", "strided")


class BackendUnavailable(RuntimeError):
    """Raised by a backend's constructor when it cannot run here (e.g. no CUDA device)."""


@dataclass(frozen=True)
class Kernel:
    """One norm on one backend.

    forward(inputs, params) -> {"y": ..., plus any updated state such as "running_mean"}.
    backward(inputs, params, dy) -> {role: gradient} for the differentiable roles present;
    None when the backend differentiates `forward` itself (autograd).
    unsupported(params) -> a reason string when these parameters are outside what this
    backend implements (a convention it does not offer), else None.
    """

    forward: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]]
    backward: Callable[[Mapping[str, Any], Mapping[str, Any], Any], dict[str, Any]] | None = None
    unsupported: Callable[[Mapping[str, Any]], str | None] = lambda params: None


class Backend(abc.ABC):
    """Base class for backends. Subclasses set `name`, `dtypes`, `layouts`, `kernels`."""

    name: str = "?"
    dtypes: tuple[str, ...] = ("float64",)
    layouts: tuple[str, ...] = ("contiguous",)
    # layouts a backend builds only for values that allow them (normspec.impls.layout.EXPANDED)
    extra_layouts: tuple[str, ...] = ()
    kernels: Mapping[str, Kernel] = {}
    # An opt-in backend runs only when named (`--backend NAME`): too slow for the default matrix
    # (torch:inductor and jax compile per guard/shape); the default run lists it as skipped.
    opt_in: bool = False
    # False for forward-only engines: properties that need gradients are skipped, saying so.
    differentiates: bool = True
    # An opt-in engine's norms, declared on the class so the catalogue can list them without starting it.
    native_norms: tuple[str, ...] = ()

    def implements(self, norm: str) -> bool:
        return norm in self.kernels

    def unsupported(self, norm: str, params: Mapping[str, Any], dtype: str = "float64",
                    layout: str = "contiguous") -> str | None:
        """Why this backend cannot run `norm` with these parameters, dtype and layout, or None."""
        if norm not in self.kernels:
            return f"{self.name} has no implementation of {norm}"
        if dtype not in self.dtypes:
            return f"{self.name} does not support {dtype}"
        if layout not in self.layouts and layout not in self.extra_layouts:
            return f"{self.name} does not support the {layout} layout"
        return self.kernels[norm].unsupported(params)

    @abc.abstractmethod
    def native(self, array: np.ndarray, dtype: str, layout: str = "contiguous") -> Any:
        """A new native array holding `array` rounded to `dtype`, laid out as `layout`."""

    @abc.abstractmethod
    def to_numpy(self, value: Any) -> np.ndarray:
        """A float64 NumPy copy of a native array (exact for every supported dtype)."""

    def forward(self, norm: str, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        return self.kernels[norm].forward(inputs, params)

    @abc.abstractmethod
    def gradients(self, norm: str, inputs: Mapping[str, Any], params: Mapping[str, Any], dy: Any,
                  wrt: tuple[str, ...]) -> dict[str, Any]:
        """Gradients of <y, dy> with respect to the roles in `wrt` present in `inputs`."""

    def notes(self) -> list[str]:
        """Lines for the end of a run (e.g. compile time spent); none by default."""
        return []

    def synchronize(self) -> None:
        """Wait for queued device work (benchmarks call this); a no-op for host backends."""

    def shares_memory(self, a: Any, b: Any) -> bool:
        """Whether two native arrays overlap in memory: NumPy arrays by `np.shares_memory`, tensors
        (anything with `untyped_storage`) by the byte ranges of their storages. Backends whose
        arrays are neither override this."""
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
            return bool(np.shares_memory(a, b))
        if hasattr(a, "untyped_storage") and hasattr(b, "untyped_storage"):
            sa, sb = a.untyped_storage(), b.untyped_storage()
            if getattr(sa, "device", None) != getattr(sb, "device", None):
                return False
            a0, b0 = sa.data_ptr(), sb.data_ptr()
            return a0 < b0 + sb.nbytes() and b0 < a0 + sa.nbytes() and sa.nbytes() > 0 and sb.nbytes() > 0
        return False

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


def available_backends(names: list[str] | None = None) -> tuple[dict[str, Backend], dict[str, str]]:
    """Instantiate the backends registered under `normspec.backends`.

    Returns (usable backends by name, reasons by name for those that could not start here).
    Unknown requested names raise KeyError listing the registered ones. Without names, opt-in
    backends are not started: they are listed as absent with how to select them.
    """
    registered = {ep.name: ep for ep in entry_points(group="normspec.backends")}
    if names:
        unknown = [n for n in names if n not in registered]
        if unknown:
            raise KeyError(
                f"unknown backend(s) {', '.join(unknown)}; known (registered) backends: {', '.join(sorted(registered))}"
            )
        registered = {n: registered[n] for n in names}
    usable: dict[str, Backend] = {}
    absent: dict[str, str] = {}
    for name, ep in registered.items():
        try:
            factory = ep.load()
            if not names and getattr(factory, "opt_in", False):
                absent[name] = f"opt-in (not in the default selection): select it with --backend {name}"
                continue
            backend = factory()
        except BackendUnavailable as exc:
            absent[name] = str(exc)
            continue
        except Exception as exc:  # a broken third-party backend must not take the run down
            absent[name] = f"failed to load: {type(exc).__name__}: {exc}"
            continue
        backend.name = name
        usable[name] = backend
    return usable, absent
