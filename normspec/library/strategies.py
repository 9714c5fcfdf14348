"""Hypothesis strategies shared by the norm records and the properties.

Shapes, parameters and the structure of the values (per-group location and spread, the
distribution, constant groups) are drawn by Hypothesis, so they shrink; the bulk values come
from a seeded NumPy generator, in the manner of PyTorch's `make_tensor`, so a case of a few
thousand elements costs one draw instead of thousands.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

DISTRIBUTIONS = ("normal", "uniform", "integers", "outliers")

seeds = st.integers(0, 2**32 - 1)
# The magnitude of each group's location relative to its spread: mostly well conditioned,
# sometimes |mean| >> std (the ill_conditioned property pushes this to the dtype's limit).
centre_ratios = st.one_of(st.just(0.0), st.floats(-3.0, 3.0), st.sampled_from([-100.0, 50.0, 1e3]))
spreads = st.floats(-2.0, 2.0).map(lambda e: float(10.0**e))  # std of each group: 1e-2 .. 1e2
eps_values = st.sampled_from([1e-5, 1e-3, 1e-1, 1e-8, 0.5])
# Running-statistics momentum: PyTorch's default, None (cumulative average), any, and 1 (keep the last batch's)
momenta = st.one_of(st.just(0.1), st.none(), st.floats(0.0, 1.0), st.just(1.0))


def standard_values(rng: np.random.Generator, shape: tuple[int, ...], distribution: str) -> np.ndarray:
    """Zero-centred values of unit-order spread drawn from `distribution`."""
    if distribution == "normal":
        return rng.standard_normal(shape)
    if distribution == "uniform":
        return rng.uniform(-1.7, 1.7, shape)
    if distribution == "integers":
        return rng.integers(-4, 5, shape).astype(np.float64)
    if distribution == "outliers":
        z = rng.standard_normal(shape)
        mask = rng.random(shape) < 0.05
        return np.where(mask, 30.0 * z, z)
    raise ValueError(f"unknown distribution {distribution!r}")


@st.composite
def grouped_values(draw, shape: tuple[int, ...], group_axes: tuple[int, ...], *, allow_constant: bool = False):
    """float64 values of `shape` with an independent location and spread per index of
    `group_axes` (the channel axis for BatchNorm, the batch axes for LayerNorm)."""
    seed = draw(seeds, label="seed")
    distribution = draw(st.sampled_from(DISTRIBUTIONS), label="distribution")
    rng = np.random.default_rng(seed)
    group_shape = tuple(shape[a] if a in group_axes else 1 for a in range(len(shape)))
    spread = draw(spreads, label="spread")
    ratio = draw(centre_ratios, label="centre_ratio")
    scale = spread * rng.uniform(0.5, 2.0, group_shape)
    loc = ratio * scale * rng.uniform(0.5, 1.5, group_shape)
    values = loc + scale * standard_values(rng, shape, distribution)
    if allow_constant and draw(st.booleans(), label="constant_group"):
        index = tuple(rng.integers(0, shape[a]) if a in group_axes else slice(None) for a in range(len(shape)))
        values[index] = values[index].flat[0]  # one whole group constant: its output must be exactly beta
    return values


@st.composite
def affine_vector(draw, shape: tuple[int, ...], *, kind: str):
    """Random affine parameters: weights of either sign away from 0, biases of any sign."""
    rng = np.random.default_rng(draw(seeds, label=f"{kind}_seed"))
    if kind == "weight":
        magnitude = rng.uniform(0.25, 3.0, shape)
        return magnitude * rng.choice([-1.0, 1.0], shape, p=[0.2, 0.8])
    return rng.normal(0.0, 2.0, shape)


def gradient_for(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """An upstream gradient dy of unit-order values."""
    return np.random.default_rng(seed).standard_normal(shape)


@st.composite
def channel_running_stats(draw, x: np.ndarray):
    """Running mean and variance per channel (axis 1) near the batch's own statistics, randomized
    rather than left at their initial 0 / 1, as a model mid-training has them."""
    rng = np.random.default_rng(draw(seeds, label="running_seed"))
    axes = (0,) + tuple(range(2, x.ndim))
    c = x.shape[1]
    spread = x.std(axis=axes) + 1e-3
    return x.mean(axis=axes) + spread * rng.normal(0.0, 0.5, c), (spread**2) * rng.uniform(0.3, 3.0, c)


# ---------------------------------------------------------------- pieces of the records' case strategies
# Plain functions of `draw` (not composites), so that a record calling them draws exactly the
# values, labels and order it would draw inline.

def flag(draw, value: bool | None, label: str) -> bool:
    """`value` where the caller pinned it (a record override), else a drawn boolean."""
    return draw(st.booleans(), label=label) if value is None else value


def mode(draw, training: bool | None, track_running_stats: bool | None) -> tuple[bool, bool]:
    """(training, track_running_stats) of a call with running statistics, each drawn unless pinned."""
    return flag(draw, training, "training"), flag(draw, track_running_stats, "track_running_stats")


def affine_arrays(draw, shape: tuple[int, ...], affine: bool | None, label: str = "affine") -> dict[str, np.ndarray]:
    """{"weight", "bias"} of `shape` (random, not their initial values), or {} without affine."""
    if not flag(draw, affine, label):
        return {}
    return {"weight": draw(affine_vector(shape, kind="weight")), "bias": draw(affine_vector(shape, kind="bias"))}


def channel_shape(draw, spatial_dims: int | None, *, dims: tuple[int, int] = (0, 3), channels: int = 5,
                  side: int = 5, side_3d: int = 3, batch: int = 6) -> tuple[int, int, tuple[int, ...]]:
    """(N, C, S) of an (N, C, *S) input: the number of spatial dims (unless pinned), C, each side
    (at most `side_3d` with three spatial dims, to bound the size) and N, drawn in that order."""
    nsp = draw(st.integers(*dims), label="spatial_dims") if spatial_dims is None else spatial_dims
    c = draw(st.integers(1, channels), label="C")
    sides = tuple(draw(st.integers(1, side if nsp < 3 else side_3d), label="side") for _ in range(nsp))
    n = draw(st.integers(1, batch), label="N")
    return n, c, sides


def batch_norm_running_state(draw, x: np.ndarray, arrays: dict, params: dict, conventions: bool) -> None:
    """BatchNorm's running state, added to `arrays` and `params`: random running statistics near
    the batch's own, a momentum, num_batches_tracked, and (with `conventions`) the momentum and
    running-variance conventions, PyTorch's twice as often as the others."""
    arrays["running_mean"], arrays["running_var"] = draw(channel_running_stats(x))
    params["momentum"] = draw(momenta, label="momentum")
    params["num_batches_tracked"] = draw(st.integers(0, 5), label="num_batches_tracked")
    if conventions:
        params["momentum_style"] = draw(st.sampled_from(["new", "new", "decay"]), label="momentum_style")
        params["running_var_style"] = draw(st.sampled_from(["unbiased", "unbiased", "biased"]),
                                           label="running_var_style")
