"""Norm records: one declarative entry per normalization, in the manner of PyTorch's OpInfo.

A record ties together the spec (reference outputs and gradients), the Hypothesis strategy that
produces cases, the traits that decide which properties apply, the conditioning used by the
tolerance model, and the torch.nn equivalents for validating drop-ins. Adding a normalization is a
spec function plus one module under `normspec/norms/` that calls `register(NormRecord(...))`.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
from dataclasses import dataclass
from typing import Callable

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning
from normspec.library.tolerance import BoundFn, Bounds, moment_model, overflow_allowed

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


class UnknownOverride(ValueError):
    """A caller asked a record's cases() for an override the record does not declare."""


def keyword_parameters(cases: Callable) -> frozenset[str] | None:
    """The keyword-only parameters of a cases strategy (None where the signature is hidden, as in
    a wrapper taking **overrides that forwards them)."""
    func = getattr(cases, "__wrapped__", cases)
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class NormRecord:
    name: str
    family: str
    paper: str
    reference: Callable[[Case], dict[str, np.ndarray]]
    reference_grad: Callable[[Case, np.ndarray], dict[str, np.ndarray]] | None
    cases: Callable[..., st.SearchStrategy[Case]]
    traits: frozenset[str]
    # The keyword overrides `cases(**overrides)` takes, declared (checked against the signature of
    # `cases` at registration): properties and validate narrow the draws only through these.
    overrides: frozenset[str] = frozenset()
    # Tolerance: mean/variance normalizers give `conditioning` (what the moment model needs about a
    # case; the statistics properties read it too); the others give `error_model`, a bound function
    # of `normspec.library.tolerance` (signature `tolerance.BoundFn`). A record giving only
    # `conditioning` gets `tolerance.moment_model(conditioning)`: the one place the model is chosen.
    conditioning: Callable[[Case], Conditioning] | None = None
    error_model: BoundFn | None = None
    differentiable: tuple[str, ...] = ("x", "weight", "bias")
    torch_modules: tuple[str, ...] = ()
    torch_functional: str | None = None
    outputs: tuple[str, ...] = ("y",)
    # A representative call on an activation of `shape` ((N, C, H, W) or (tokens, hidden)), for
    # benchmarks: bench_case(shape, rng) -> Case, or None if the shape does not fit this norm.
    bench_case: Callable[[tuple[int, ...], np.random.Generator], Case | None] | None = None

    def __post_init__(self):
        if self.conditioning is None and self.error_model is None:
            raise ValueError(f"record {self.name!r} needs conditioning= or error_model=")
        if self.error_model is None:
            object.__setattr__(self, "error_model", moment_model(self.conditioning))
        unknown = set(self.traits) - set(TRAITS)
        if unknown:
            raise ValueError(f"record {self.name!r} has unknown traits {sorted(unknown)}; known: {sorted(TRAITS)}")
        object.__setattr__(self, "overrides", frozenset(self.overrides))
        taken = keyword_parameters(self.cases)
        if taken is not None and taken != self.overrides:
            raise ValueError(f"record {self.name!r} declares the overrides {sorted(self.overrides)}, but its "
                             f"cases() takes {sorted(taken)}")

    def takes(self, *overrides: str) -> bool:
        """Whether `cases()` accepts each of these keyword overrides (the declared contract)."""
        return all(name in self.overrides for name in overrides)

    def draw_cases(self, **overrides) -> st.SearchStrategy[Case]:
        """`cases(**overrides)`, refusing an override the record does not declare."""
        unknown = sorted(set(overrides) - self.overrides)
        if unknown:
            raise UnknownOverride(f"{self.name} cases() take no override {', '.join(unknown)}; "
                                  f"they take: {', '.join(sorted(self.overrides)) or 'none'}")
        return self.cases(**overrides)

    def bounds(self, case: Case, dtype: str, reference: dict[str, np.ndarray], dy: np.ndarray | None = None,
               ref_grads: dict[str, np.ndarray] | None = None) -> Bounds:
        """Elementwise error bounds of a `dtype` run of `case` against the spec's `reference`
        (and `ref_grads` for upstream `dy`): the one entry point to the tolerance model."""
        b = self.error_model(case, dtype, reference, dy, ref_grads)
        # wherever the exact value lies past the dtype's largest finite value, a correct result is +-inf:
        # applied here once, for every record's model (a float16 gradient of -70263 rounds to -inf)
        exact = {**reference, **(ref_grads or {})}
        return Bounds({k: overflow_allowed(v, exact.get(k), dtype) for k, v in b.values.items()})

    def moment_geometry(self, case: Case) -> tuple[tuple[int, ...], Conditioning]:
        """(view shape, Conditioning in it) of a moment normalizer's case: the view of x in which
        each reduction set is axis-aligned (x's own shape unless the conditioning has a view_shape,
        as GroupNorm's (N, G, C/G, *S))."""
        c = self.conditioning(case)
        return tuple(c.view_shape or case.x.shape), c

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
