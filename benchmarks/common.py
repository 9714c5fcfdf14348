"""Shared helpers for the asv suite, in the manner of scipy's benchmarks/common.py.

Benchmarks are parametrized by norm (every record in the registry, so new norms are covered
without touching this suite), backend (every entry point in `normspec.backends`, so torch:cuda
and third-party backends appear; one that cannot start here is skipped), shape and dtype.
Unavailable combinations raise `NotImplementedError` in setup, which asv reports as skipped.
"""
from __future__ import annotations

import os
from importlib.metadata import entry_points

from normspec import bench
from normspec.impls.base import available_backends
from normspec.registry import get_norm, norms


def _only(variable: str, names: list[str]) -> list[str]:
    """Names restricted by a comma-separated environment variable (for smoke runs), else all."""
    wanted = [n for n in os.environ.get(variable, "").split(",") if n]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"{variable} names unknown entries {unknown}; known: {names}")
    return [n for n in names if n in wanted] if wanted else names


def _registered() -> set[str]:
    return {ep.name for ep in entry_points(group="normspec.backends")}


NORMS = _only("NORMSPEC_ASV_NORMS", sorted(norms()))
BACKENDS = _only("NORMSPEC_ASV_BACKENDS", sorted(_registered() | {"torch:cuda"}))
# Kept small so that `asv run --quick` over the whole grid takes about 9 minutes on 2 cores:
# the 64 MB shapes (beyond the caches: the bandwidth regime) are measured by `Roofline` only.
SMALL_SHAPES = ["tokens-1MB", "cnn-1MB"]
MEDIUM_SHAPES = ["tokens-8MB"]
LARGE_SHAPES = ["tokens-64MB", "cnn-64MB"]

# asv's forkserver imports the suite once and forks every benchmark from it: loading each
# backend's module here (importing torch alone takes ~1.4 s) means every fork starts with it
# imported. Instances are made in the fork, so no device driver is initialized before forking.
for _ep in entry_points(group="normspec.backends"):
    if _ep.name in BACKENDS:
        try:
            _ep.load()
        except Exception:  # reported when the backend is instantiated, in `backend`
            pass

_BACKENDS: dict = {}


def backend(name: str):
    """The backend instance (one per process), or NotImplementedError (asv: skipped) saying why it is absent."""
    if name not in _BACKENDS:
        usable, absent = available_backends([name]) if name in _registered() else ({}, {name: "not installed"})
        _BACKENDS[name] = usable.get(name) or absent.get(name, "unavailable")
    found = _BACKENDS[name]
    if isinstance(found, str):
        raise NotImplementedError(f"backend {name} unavailable: {found}")
    return found


def prepare(norm: str, backend_name: str, shape: str, dtype: str, pass_: str) -> bench.Prepared:
    """The call to time; NotImplementedError (asv: skipped) when the combination cannot run."""
    b = backend(backend_name)
    _, dims = bench.parse_shape(shape)
    return bench.prepare(get_norm(norm), b, dims, dtype, pass_, warmup=False)


def timed(p: bench.Prepared, repeats: int = 3) -> float:
    """Median seconds of the prepared call (device synchronized), for the track_ benchmarks."""
    seconds, _ = bench.median_iqr(bench.time_call(p.call, p.backend.synchronize, repeats=repeats,
                                                  min_sample_s=0.01))
    return seconds
