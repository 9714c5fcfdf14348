"""Record: Lp batch normalization (Hoffer et al. 2018; Santurkar et al. 2018) over (N, C, *S)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.strategies import affine_arrays, channel_shape, eps_values, grouped_values, mode, seeds
from normspec.library.tolerance import lp_batch_norm_bounds
from normspec.norms.batch_renorm import EXACT_SCALE, POPULATION
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.lp_batch_norm import lp_batch_norm, lp_batch_norm_backward

LP_SCALE = register_trait("lp_scale",
                          "BatchNorm with the standard deviation replaced by an Lp estimate; p = 2 is BatchNorm")
P_VALUES = (1.0, 1.5, 2.0, 3.0, 4.0, math.inf)


@st.composite
def lp_batch_norm_cases(draw, *, training=None, track_running_stats=None, affine=None, spatial_dims=None,
                        conventions=True, allow_constant=True, p=None, eps_placement=None, constant=None):
    """Lp batch norm calls: p in {1, 1.5, 2, 3, 4, inf (top-k)}, eps outside or inside, with or
    without running statistics."""
    n, c, sides = channel_shape(draw, spatial_dims)
    training, running = mode(draw, training, track_running_stats)
    if (training or not running) and n * math.prod(sides) < 2:
        n = -(-2 // math.prod(sides))
    shape = (n, c) + sides
    x = draw(grouped_values(shape, (1,), allow_constant=allow_constant), label="x")
    arrays = {"x": x, **affine_arrays(draw, (c,), affine)}
    p = draw(st.sampled_from(P_VALUES), label="p") if p is None else p
    params = {"p": p, "training": training, "eps": draw(eps_values, label="eps")}
    if math.isinf(p):
        params["k"] = draw(st.integers(1, min(4, x.size // c)), label="k")
    params["eps_placement"] = (draw(st.sampled_from(["outside", "inside"]), label="eps_placement")
                               if eps_placement is None else eps_placement)
    if constant is not None or draw(st.booleans(), label="explicit_constant"):
        params["constant"] = 1.0 if constant is None else constant
    if running:
        rng = np.random.default_rng(draw(seeds, label="running_seed"))
        axes = (0,) + tuple(range(2, x.ndim))
        spread = x.std(axis=axes) + 1e-3
        arrays["running_mean"] = x.mean(axis=axes) + spread * rng.normal(0.0, 0.5, c)
        arrays["running_scale"] = spread * rng.uniform(0.3, 3.0, c)
        params["momentum"] = draw(st.one_of(st.just(0.1), st.floats(0.0, 1.0)), label="momentum")
        if conventions:
            params["momentum_style"] = draw(st.sampled_from(["new", "decay"]), label="momentum_style")
    return Case("lp_batch_norm", arrays, params)


_KEYS = ("p", "k", "constant", "training", "momentum", "eps", "eps_placement", "momentum_style")


def reference(case: Case) -> dict[str, np.ndarray]:
    r = lp_batch_norm(case.x, case.get("weight"), case.get("bias"), case.get("running_mean"),
                      case.get("running_scale"), **case.kwargs(*_KEYS))
    out = {"y": r.y}
    if case.params.get("training", True) and r.running_mean is not None:
        out["running_mean"], out["running_scale"] = r.running_mean, r.running_scale
    return out


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    keys = ("p", "k", "constant", "training", "eps", "eps_placement")
    grads = lp_batch_norm_backward(dy, case.x, case.get("weight"), case.get("running_mean"),
                                   case.get("running_scale"), **case.kwargs(*keys))
    return case.present(grads)


def bench_case(shape, rng) -> Case | None:
    """L1 batch norm (Hoffer et al.'s half-precision-friendly variant), a training step."""
    c = shape[1]
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, c), "bias": rng.normal(size=c),
              "running_mean": np.zeros(c), "running_scale": np.ones(c)}
    return Case("lp_batch_norm", arrays, {"p": 1.0, "training": True, "momentum": 0.1, "eps": 1e-5})


register(NormRecord(
    name="lp_batch_norm",
    family="batch",
    paper="Hoffer et al. 2018, Norm matters, sec. 5 (L1, L-inf batch norm); Santurkar et al. 2018, sec. 3.3",
    reference=reference,
    reference_grad=reference_grad,
    cases=lp_batch_norm_cases,
    overrides=frozenset({'affine', 'allow_constant', 'constant', 'conventions', 'eps_placement', 'p', 'spatial_dims',
                         'track_running_stats', 'training'}),
    error_model=lp_batch_norm_bounds,
    traits=frozenset({"batch_dependent", "channel_axis_1", LP_SCALE, POPULATION, EXACT_SCALE}),
    outputs=("y", "running_mean", "running_scale"),
    bench_case=bench_case,
))
