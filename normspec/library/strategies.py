"""Hypothesis strategies shared by the norm records and the properties.

Shapes, parameters and the structure of the values (per-group location and spread, the
distribution, constant groups) are drawn by Hypothesis, so they shrink; the bulk values come
from a seeded NumPy generator, in the manner of PyTorch's `make_tensor`, so a case of a few
thousand elements costs one draw instead of thousands.
"""
from __future__ import annotations

from dataclasses import dataclass

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


# ---------------------------------------------------------------- reach: where real kernels break

# Where a kernel's tail mask, its block loop or a size-switched path changes what it computes:
# powers of two (block sizes, warp and vector widths) up to 2^16, the block sizes kernels tile by
# that are not powers of two, and ~100 x 100 spatial maps. Each is tried just below, at and just
# above (n - 1, n, n + 1) in one example.
REACH_POWERS = tuple(2**k for k in range(1, 17))
REACH_BLOCKS = (96, 192, 384, 768, 1000, 1536, 3072, 5120, 12288, 100 * 100)
REACH_LENGTHS = tuple(sorted({b + d for b in REACH_POWERS + REACH_BLOCKS for d in (-1, 0, 1)} - {1}))
# Row counts past CUDA's 65535 grid-dimension limit (and just below it), for many short reductions.
REACH_ROWS = (65535, 65536, 65537)


@dataclass(frozen=True)
class Reach:
    """The geometry and magnitudes of one reach case: `sets` reduction sets (rows, channels,
    groups or instances) of `length` values each. Set i has the std and |mean|/std of
    `magnitudes[i % len(magnitudes)]`, so one call puts every magnitude at the dtype's edge
    through the same kernel path; `eps` replaces the usual draw when not None."""

    length: int
    sets: int
    lengths: tuple[int, ...] = ()  # the lengths this example tries (length is the one laid out now)
    magnitudes: tuple[tuple[str, float, float], ...] = (("unit", 1.0, 0.0),)  # (name, std, |mean|/std)
    eps: float | None = None

    def describe(self) -> str:
        names = "/".join(m[0] for m in self.magnitudes)
        return f"{self.sets} set(s) of {self.length} values, magnitudes {names}" + (
            f", eps={self.eps:g}" if self.eps is not None else "")


# The magnitudes at each dtype's edge, where values and outputs fit but squares, sums or eps do
# not: float16 spreads of 2^8-2^10 square past 65504 (and their sums past it after a few terms),
# 2^-14-2^-12 square below its smallest subnormal 2^-24, and eps = 1e-10 rounds to 0 in it. The
# |mean|/std of the "offset" set is as large as the dtype resolves (at least 8 steps per std, at
# most 0.01/u of the compute dtype, as in the ill-conditioned property): a one-pass variance
# E[x^2] - E[x]^2 loses (|mean|/std)^2 u there, the model allows |mean|/std u sqrt(length).
_EDGES = {
    "float16": {"large": (8.0, 10.0), "tiny": (-14.0, -12.0), "subnormal": (-22.0, -18.0), "offset": (0.9, 1.8),
                "tiny_eps": 1e-10},
    "bfloat16": {"large": (20.0, 40.0), "tiny": (-66.0, -60.0), "subnormal": (-140.0, -130.0), "offset": (0.3, 0.9),
                 "tiny_eps": 1e-12},
    "float32": {"large": (20.0, 40.0), "tiny": (-66.0, -60.0), "subnormal": (-140.0, -130.0), "offset": (4.0, 5.2),
                "tiny_eps": 1e-12},
    "float64": {"large": (20.0, 40.0), "tiny": (-40.0, -30.0), "subnormal": (-40.0, -30.0), "offset": (6.0, 12.0),
                "tiny_eps": 1e-12},
}


@st.composite
def reach(draw, dtype: str = "float32", base: int | None = None, many_sets: bool = False):
    """A Reach draw for `dtype`. The budget: one long reduction per magnitude (n - 1, n and n + 1
    values for n a power of two up to 2^16 or a block size, 5 sets), or, one example in four, many
    short ones (65537, 65536 or 65535 sets of 2-4 values), never both, so a call holds at most
    ~3.3e5 values (a millisecond kernel call) and an example makes at most three. Shrinks toward
    short lengths; the magnitudes of a set are drawn log-uniformly inside the dtype's edge band (log2 for spreads,
    log10 for |mean|/std). A sweep point pins the geometry: `base` (n - 1, n, n + 1 values per set)
    or `many_sets` (65537-65535 sets of 2-4 values); the magnitudes are drawn as always."""
    wide = not many_sets and (base is not None or draw(st.integers(0, 3), label="reach_wide") < 3)
    if wide:
        if base is None and draw(st.integers(0, 3), label="reach_block") < 3:
            base = 2 ** draw(st.integers(1, 16), label="reach_log2_length")
        elif base is None:
            base = draw(st.sampled_from(REACH_BLOCKS), label="reach_block_length")
        lengths = tuple(n for n in (base - 1, base, base + 1) if n >= 2)
        sets = 5
    else:
        lengths = (draw(st.integers(2, 4), label="reach_length"),)
        sets = draw(st.sampled_from(REACH_ROWS[::-1]), label="reach_sets")  # past 65535 first
    edges = _EDGES[dtype]
    def band(name, label):
        return float(draw(st.floats(*edges[name]), label=label))
    def ratio(strategy, label):
        return float(draw(strategy, label=label))
    magnitudes = (
        ("unit", 1.0, ratio(st.sampled_from([0.0, 1.0]), "reach_unit_ratio")),
        ("large", 2.0 ** band("large", "reach_log2_large"), ratio(st.floats(1.0, 3.0), "reach_large_ratio")),
        ("offset", 1.0, 10.0 ** band("offset", "reach_log10_offset")),
        ("tiny", 2.0 ** band("tiny", "reach_log2_tiny"), ratio(st.sampled_from([0.0, 1.0]), "reach_tiny_ratio")),
        ("subnormal", 2.0 ** band("subnormal", "reach_log2_subnormal"), 0.0),
    )
    eps = edges["tiny_eps"] if draw(st.booleans(), label="reach_tiny_eps") else None
    return Reach(lengths[0], sets, lengths, magnitudes, eps)


def reach_values(rng: np.random.Generator, shape: tuple[int, ...], set_axes: tuple[int, ...], r: Reach) -> np.ndarray:
    """float64 values of `shape` with each reduction set's std and centre as `r` says (sets indexed
    by `set_axes` in C order; values normal, the centre's sign random per set)."""
    group_shape = tuple(shape[a] if a in set_axes else 1 for a in range(len(shape)))
    count = int(np.prod(group_shape))
    which = np.arange(count) % len(r.magnitudes)
    spread = np.array([m[1] for m in r.magnitudes])[which].reshape(group_shape)
    ratio = np.array([m[2] for m in r.magnitudes])[which].reshape(group_shape)
    scale = spread * rng.uniform(0.75, 1.25, group_shape)
    loc = ratio * scale * rng.choice([-1.0, 1.0], group_shape)
    return loc + scale * rng.standard_normal(shape)


def near_square(length: int, dims: int) -> tuple[int, ...]:
    """`dims` sides whose product is `length`, as square as its divisors allow (a prime length
    gives (1, ..., length))."""
    sides = []
    rest = length
    for d in range(dims, 1, -1):
        target = round(rest ** (1.0 / d))
        side = max((f for f in range(1, target + 1) if rest % f == 0), default=1)
        sides.append(side)
        rest //= side
    return tuple(sides) + (rest,)

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


@st.composite
def channels_first_values(draw, spatial_dims: int, allow_constant: bool = True, reach: Reach | None = None,
                          min_batch: int = 1):
    """x of (N, C, *S) for a norm over the channels (dim 1) only, one reduction set per (n, *s): with a
    reach, `reach.sets` positions of `reach.length` channels at its magnitudes (spatial sizes 1)."""
    if reach is not None:
        rng = np.random.default_rng(draw(seeds, label="seed"))
        rows = reach_values(rng, (reach.sets,) + (1,) * spatial_dims + (reach.length,), (0,), reach)
        return np.ascontiguousarray(np.moveaxis(rows, -1, 1))
    shape = ((draw(st.integers(min_batch, 4), label="batch"), draw(st.integers(1, 8), label="channels"))
             + tuple(draw(st.integers(1, 5), label="spatial") for _ in range(spatial_dims)))
    return draw(grouped_values(shape, tuple(a for a in range(len(shape)) if a != 1), allow_constant=allow_constant),
                label="x")
