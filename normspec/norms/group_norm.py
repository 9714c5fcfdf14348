"""Record: Group Normalization (Wu & He 2018) over (N, C, *S), 0-3 spatial dims, per-channel affine."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning
from normspec.library.strategies import (
    Reach,
    affine_arrays,
    eps_values,
    grouped_values,
    near_square,
    reach_values,
    seeds,
)
from normspec.registry import NormRecord, register
from normspec.spec.group_norm import group_axes, group_norm, group_norm_backward
from normspec.spec.moments import moments


@st.composite
def group_norm_cases(draw, *, num_groups=None, affine=None, spatial_dims=None, allow_constant=True,
                     reach: Reach | None = None):
    """GroupNorm calls: (N, C, *S) with C = G * (channels per group), per-channel affine or none.
    The single input with one value in all (N * C/G * prod(S) = 1) is left to its own property,
    `group_norm_single_value_input`, as BatchNorm's one value per channel is. With allow_constant,
    one whole (n, g) group may be constant (its output must be exactly beta)."""
    nsp = draw(st.integers(0, 3), label="spatial_dims") if spatial_dims is None else spatial_dims
    if reach is not None:
        return draw(_reach_case(nsp, num_groups, affine, reach))
    g = draw(st.integers(1, 4), label="num_groups") if num_groups is None else num_groups
    c = g * draw(st.integers(1, 3), label="channels_per_group")
    sides = tuple(draw(st.integers(1, 4 if nsp < 3 else 3), label="side") for _ in range(nsp))
    n = draw(st.integers(1, 4), label="N")
    if n * (c // g) * math.prod(sides) == 1:
        n = 2  # one value in all: PyTorch raises (its BatchNorm batch-size check); see group_norm_single_value_input
    shape = (n, c) + sides
    x = draw(grouped_values(shape, (0, 1)), label="x")
    if allow_constant and draw(st.booleans(), label="constant_group"):
        rng = np.random.default_rng(draw(seeds, label="constant_seed"))
        view = x.reshape(n, g, -1)
        i, j = int(rng.integers(0, n)), int(rng.integers(0, g))
        view[i, j] = view[i, j, 0]
        x = view.reshape(shape)
    arrays = {"x": x, **affine_arrays(draw, (c,), affine)}
    return Case("group_norm", arrays, {"num_groups": g, "eps": draw(eps_values, label="eps")})


@st.composite
def _reach_case(draw, nsp: int, num_groups, affine, reach: Reach):
    """`reach.sets` (n, g) groups of (C/G) * prod(S) = `reach.length` values: one sample of
    `reach.sets` groups (of 2 channels when the length is even and there are spatial dims)."""
    length = reach.length
    g = reach.sets if num_groups is None else num_groups
    n = max(1, reach.sets // g)
    cpg = length if not nsp else (2 if length % 2 == 0 and length > 2 else 1)
    sides = near_square(length // cpg, nsp) if nsp else ()
    shape = (n, g * cpg) + sides
    rng = np.random.default_rng(draw(seeds, label="seed"))
    x = reach_values(rng, (n, g, cpg) + sides, (0, 1), reach).reshape(shape)
    arrays = {"x": x, **affine_arrays(draw, (shape[1],), affine)}
    eps = reach.eps if reach.eps is not None else draw(eps_values, label="eps")
    return Case("group_norm", arrays, {"num_groups": g, "eps": eps})


def reference(case: Case) -> dict[str, np.ndarray]:
    return {"y": group_norm(case.x, case.params["num_groups"], case.get("weight"), case.get("bias"),
                            eps=case.params.get("eps", 1e-5))}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    grads = group_norm_backward(dy, case.x, case.params["num_groups"], case.get("weight"),
                                eps=case.params.get("eps", 1e-5))
    return case.present(grads)


def grouped_view(case: Case) -> tuple[int, ...]:
    """(N, G, C/G, *S): the view of x in which each (n, g) reduction set is axis-aligned."""
    x, g = case.x, case.params["num_groups"]
    return (x.shape[0], g, x.shape[1] // g) + x.shape[2:]


def grouped_conditioning(case: Case) -> Conditioning:
    """The moment conditioning of a GroupNorm case, in the grouped view."""
    view = grouped_view(case)
    stats_axes, param_axes = group_axes(case.x.ndim)
    m = moments(case.x.reshape(view), stats_axes, case.params.get("eps", 1e-5))
    cshape = (1,) + view[1:3] + (1,) * (len(view) - 3)
    gamma = case.array_or("weight", cshape, 1.0)
    beta = case.array_or("bias", cshape, 0.0)
    return Conditioning(m.xhat, m.mean, m.std, m.count, gamma, beta, stats_axes, param_axes, True, view_shape=view)


def bench_case(shape, rng) -> Case | None:
    """nn.GroupNorm(32, C) (Wu & He's default G = 32) on a CNN activation; None if C % 32 != 0 or no spatial dims."""
    if len(shape) < 3 or shape[1] % 32:
        return None
    c = shape[1]
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, c), "bias": rng.normal(size=c)}
    return Case("group_norm", arrays, {"num_groups": 32, "eps": 1e-5})


register(NormRecord(
    name="group_norm",
    family="group",
    paper="Wu & He 2018, Group Normalization, eq. 1-3",
    reference=reference,
    reference_grad=reference_grad,
    cases=group_norm_cases,
    overrides=frozenset({'affine', 'allow_constant', 'num_groups', 'spatial_dims', 'reach'}),
    conditioning=grouped_conditioning,
    traits=frozenset({"moment_normalizer", "batch_independent", "scale_invariant", "shift_invariant",
                      "channel_axis_1", "accepts_empty"}),
    torch_modules=("torch.nn.GroupNorm",),
    torch_functional="torch.nn.functional.group_norm",
    bench_case=bench_case,
))
