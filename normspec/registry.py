"""Norm records: one declarative entry per normalization, in the manner of PyTorch's OpInfo.

A record ties together the spec (reference outputs and gradients), the Hypothesis strategy that
produces cases, the traits that decide which properties apply, the conditioning used by the
tolerance model, and the torch.nn equivalents for validating drop-ins. Adding a normalization is a
spec function plus one module under `normspec/norms/` that calls `register(NormRecord(...))`.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning

# Traits the properties key on: the single vocabulary, name -> meaning. A norm family that
# needs a new trait declares it with `register_trait` in its record module.
TRAITS = {
    "moment_normalizer": "output = gamma * (x - mean_R x)/sqrt(var_R x + eps) + beta over reduction sets R",
    "running_stats": "keeps running mean/variance buffers updated in training, used in eval",
    "batch_dependent": "statistics are taken across the batch dimension",
    "batch_independent": "each sample is normalized by its own statistics only",
    "scale_invariant": "f_eps(a x) = f_{eps/a^2}(x) for a > 0 (eps inside the square root)",
    "shift_invariant": "adding a constant to each reduction set leaves the output unchanged",
    "channel_axis_1": "the channel dimension is axis 1, so channels_last layouts apply",
    "accepts_empty": "a zero-size batch or spatial dimension is a valid input (PyTorch's module accepts it)",
}


def register_trait(name: str, meaning: str) -> str:
    if TRAITS.get(name, meaning) != meaning:
        raise ValueError(f"trait {name!r} already means {TRAITS[name]!r}")
    TRAITS[name] = meaning
    return name


@dataclass(frozen=True)
class NormRecord:
    name: str
    family: str
    paper: str
    reference: Callable[[Case], dict[str, np.ndarray]]
    reference_grad: Callable[[Case, np.ndarray], dict[str, np.ndarray]] | None
    cases: Callable[..., st.SearchStrategy[Case]]
    traits: frozenset[str]
    # Tolerance: mean/variance normalizers give `conditioning` and get the shared moment model;
    # others give `error_model(case, dtype, ref, dy, ref_grads) -> tolerance.Bounds`, written in
    # `normspec.library.tolerance` from the same terms (unit roundoff x condition).
    conditioning: Callable[[Case], Conditioning] | None = None
    error_model: Callable[..., object] | None = None
    differentiable: tuple[str, ...] = ("x", "weight", "bias")
    torch_modules: tuple[str, ...] = ()
    torch_functional: str | None = None
    outputs: tuple[str, ...] = ("y",)
    # A representative call on an activation of `shape` ((N, C, H, W) or (tokens, hidden)), for
    # benchmarks: bench_case(shape, rng) -> Case, or None if the shape does not fit this norm.
    bench_case: Callable[[tuple[int, ...], np.random.Generator], Case | None] | None = None
    # For a moment normalizer whose reduction sets are not axis-aligned in x (GroupNorm's groups of
    # C/G channels): moment_view(case) -> (view shape, Conditioning in that view), the view of x in
    # which each set is axis-aligned. Records with `conditioning` have the identity view.
    moment_view: Callable[[Case], tuple[tuple[int, ...], Conditioning]] | None = None

    def __post_init__(self):
        if (self.conditioning is None) == (self.error_model is None):
            raise ValueError(f"record {self.name!r} needs exactly one of conditioning= or error_model=")
        unknown = set(self.traits) - set(TRAITS)
        if unknown:
            raise ValueError(f"record {self.name!r} has unknown traits {sorted(unknown)}; known: {sorted(TRAITS)}")

    def moment_geometry(self, case: Case) -> tuple[tuple[int, ...], Conditioning]:
        """(view shape, Conditioning in it) of a moment normalizer's case: the view of x in which
        each reduction set is axis-aligned (x's own shape unless the record gives `moment_view`)."""
        if self.moment_view is not None:
            return self.moment_view(case)
        return tuple(case.x.shape), self.conditioning(case)

    def has(self, *traits: str) -> bool:
        return all(t in self.traits for t in traits)


_REGISTRY: dict[str, NormRecord] = {}
_LOADED = False


def register(record: NormRecord) -> NormRecord:
    if record.name in _REGISTRY:
        raise ValueError(f"norm {record.name!r} registered twice")
    _REGISTRY[record.name] = record
    return record


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import normspec.norms as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        importlib.import_module(f"{package.__name__}.{info.name}")


def norms() -> dict[str, NormRecord]:
    """All registered norms by name, sorted by name (stable whatever the import order)."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_norm(name: str) -> NormRecord:
    known = norms()
    if name not in known:
        raise KeyError(f"unknown norm {name!r}; known norms: {', '.join(known)}")
    return known[name]
