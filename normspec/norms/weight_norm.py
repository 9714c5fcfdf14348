"""Record: Weight Normalization (Salimans & Kingma 2016): w = g v/||v||, any dim or None."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library import tolerance
from normspec.library.case import Case
from normspec.library.strategies import affine_vector, centre_ratios, seeds, spreads, standard_values
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.weight_norm import g_shape, weight_norm, weight_norm_backward

WEIGHT_REPARAMETRIZATION = register_trait(
    "weight_reparametrization",
    "x is a weight tensor (direction v or matrix W) normalized without data; not an activation",
)


@st.composite
def weight_shapes(draw, *, min_rank=1, max_rank=4):
    """Weight shapes: (n,), (out, in), (out, in, k), (out, in, kh, kw), at most ~200 elements."""
    rank = draw(st.integers(min_rank, max_rank), label="rank")
    side = 8 if rank <= 2 else 4
    return tuple(draw(st.integers(1, side), label="side") for _ in range(rank))


def dims_for(rank: int, *, allow_none=True):
    """Every valid dim of a rank-`rank` weight, negative ones included, and None."""
    choices = list(range(rank)) + list(range(-rank, 0))
    return st.sampled_from(([None] if allow_none else []) + choices)


@st.composite
def weight_values(draw, shape, group_axes, *, centred=True):
    """Weights with an independent spread (and, unless `centred`, a mean offset) per index of
    `group_axes`: the rows of a layer differ in scale; never an all-zero group."""
    rng = np.random.default_rng(draw(seeds, label="seed"))
    distribution = draw(st.sampled_from(["normal", "uniform", "outliers"]), label="distribution")
    group_shape = tuple(shape[a] if a in group_axes else 1 for a in range(len(shape)))
    scale = draw(spreads, label="spread") * rng.uniform(0.5, 2.0, group_shape)
    ratio = 0.0 if centred else draw(centre_ratios, label="centre_ratio")
    values = ratio * scale * rng.uniform(0.5, 1.5, group_shape) + scale * standard_values(rng, shape, distribution)
    return np.where(values == 0, scale, values)


@st.composite
def weight_norm_cases(draw, *, dim="draw", min_rank=1):
    """weight_norm calls: v of rank 1-4, any dim (negative ones and None), a random g."""
    shape = draw(weight_shapes(min_rank=min_rank), label="shape")
    dim = draw(dims_for(len(shape)), label="dim") if dim == "draw" else dim
    axes = () if dim is None else (dim % len(shape),)
    v = draw(weight_values(shape, axes, centred=draw(st.booleans(), label="centred")), label="v")
    g = draw(affine_vector(g_shape(shape, dim), kind="weight"), label="g")
    return Case("weight_norm", {"x": v, "weight": np.asarray(g)}, {"dim": dim})


def reference(case: Case) -> dict[str, np.ndarray]:
    return {"y": weight_norm(case.x, case.get("weight"), dim=case.params.get("dim", 0))}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    return weight_norm_backward(dy, case.x, case.get("weight"), dim=case.params.get("dim", 0))


def layer_weight_shape(shape) -> tuple[int, ...]:
    """A layer weight with about as many elements as an activation of `shape`: (out, in) for a
    (tokens, hidden) activation, (C, in, 3, 3) for (N, C, H, W)."""
    if len(shape) == 2:
        return (shape[1], shape[0])
    c = shape[1]
    return (c, max(1, math.prod(shape) // (9 * c)), 3, 3)


def bench_case(shape, rng) -> Case | None:
    """weight_norm(dim=0) of a layer weight the size of the activation (the nn.Linear/Conv2d default)."""
    w_shape = layer_weight_shape(shape)
    v = rng.standard_normal(w_shape)
    g = rng.uniform(0.5, 2.0, g_shape(w_shape, 0))
    return Case("weight_norm", {"x": v, "weight": g}, {"dim": 0})


register(NormRecord(
    name="weight_norm",
    family="weight",
    paper="Salimans & Kingma 2016, Weight Normalization, eq. 2-4",
    reference=reference,
    reference_grad=reference_grad,
    cases=weight_norm_cases,
    overrides=frozenset({'dim', 'min_rank'}),
    error_model=tolerance.weight_norm_bounds,
    traits=frozenset({WEIGHT_REPARAMETRIZATION}),
    differentiable=("x", "weight"),
    torch_modules=("torch.nn.utils.parametrizations.weight_norm",),
    torch_functional="torch._weight_norm",
    bench_case=bench_case,
))
