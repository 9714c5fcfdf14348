"""Record: Decorrelated Batch Normalization, ZCA whitening in channel groups (Huang et al. CVPR 2018)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.strategies import affine_arrays, eps_values, grouped_values, mode, seeds
from normspec.library.tolerance import zca_bounds
from normspec.norms.batch_renorm import POPULATION
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.decorrelated_batch_norm import decorrelated_batch_norm, decorrelated_batch_norm_backward

WHITENING = register_trait(
    "whitening", "ZCA whitening of channel groups: decorrelates, rotation-equivariant, group size 1 is BatchNorm")


def _spd(rng, gs, scale):
    q, _ = np.linalg.qr(rng.standard_normal((gs, gs)))
    return (q * np.exp(rng.uniform(-1.0, 1.0, gs))) @ q.T / scale


@st.composite
def decorrelated_cases(draw, *, training=None, track_running_stats=None, affine=None, spatial_dims=None,
                       conventions=True, allow_constant=True, group_size=None):
    """ZCA batch norm calls: C = groups x group_size (1-4), channels mixed within each group so that
    they are correlated; m = N * prod(S) samples, sometimes fewer than the group size (singular Sigma)."""
    nsp = draw(st.integers(0, 2), label="spatial_dims") if spatial_dims is None else spatial_dims
    gs = draw(st.integers(1, 4), label="group_size") if group_size is None else group_size
    groups = draw(st.integers(1, 2), label="groups")
    c = gs * groups
    sides = tuple(draw(st.integers(1, 4), label="side") for _ in range(nsp))
    n = draw(st.integers(1, 8), label="N")
    training, running = mode(draw, training, track_running_stats)
    if (training or not running) and n * math.prod(sides) < 2:
        n = -(-2 // math.prod(sides))
    shape = (n, c) + sides
    x = draw(grouped_values(shape, (1,), allow_constant=allow_constant), label="x")
    rng = np.random.default_rng(draw(seeds, label="mix_seed"))
    if gs > 1 and draw(st.booleans(), label="correlated"):
        mix = np.eye(c)
        for g in range(groups):
            block = slice(g * gs, (g + 1) * gs)
            mix[block, block] = np.eye(gs) + rng.normal(0.0, 0.7, (gs, gs))
        x = np.moveaxis(np.moveaxis(x, 1, -1) @ mix, -1, 1)
    arrays = {"x": x, **affine_arrays(draw, (c,), affine)}
    params = {"group_size": gs, "training": training, "eps": draw(eps_values, label="eps")}
    if running:
        axes = (0,) + tuple(range(2, x.ndim))
        spread = x.std(axis=axes) + 1e-3
        arrays["running_mean"] = x.mean(axis=axes) + spread * rng.normal(0.0, 0.5, c)
        arrays["running_whitening"] = np.stack(
            [_spd(rng, gs, spread[g * gs:(g + 1) * gs].mean()) for g in range(groups)])
        params["momentum"] = draw(st.one_of(st.just(0.1), st.floats(0.0, 1.0)), label="momentum")
        if conventions:
            params["momentum_style"] = draw(st.sampled_from(["new", "decay"]), label="momentum_style")
    return Case("decorrelated_batch_norm", arrays, params)


_KEYS = ("group_size", "training", "momentum", "eps", "momentum_style")


def reference(case: Case) -> dict[str, np.ndarray]:
    r = decorrelated_batch_norm(case.x, case.get("weight"), case.get("bias"), case.get("running_mean"),
                                case.get("running_whitening"), **case.kwargs(*_KEYS))
    out = {"y": r.y}
    if case.params.get("training", True) and r.running_mean is not None:
        out["running_mean"], out["running_whitening"] = r.running_mean, r.running_whitening
    return out


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    keys = ("group_size", "training", "eps")
    grads = decorrelated_batch_norm_backward(dy, case.x, case.get("weight"), case.get("running_mean"),
                                             case.get("running_whitening"),
                                             **case.kwargs(*keys))
    return case.present(grads)


def bench_case(shape, rng) -> Case | None:
    """DBN training step with groups of 16 channels (the paper's default group size) where C allows."""
    c = shape[1]
    gs = math.gcd(c, 16)
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, c), "bias": rng.normal(size=c),
              "running_mean": np.zeros(c), "running_whitening": np.stack([np.eye(gs)] * (c // gs))}
    return Case("decorrelated_batch_norm", arrays, {"group_size": gs, "training": True, "momentum": 0.1, "eps": 1e-5})


register(NormRecord(
    name="decorrelated_batch_norm",
    family="batch",
    paper="Huang et al. CVPR 2018, Decorrelated Batch Normalization, Algorithm 1",
    reference=reference,
    reference_grad=reference_grad,
    cases=decorrelated_cases,
    overrides=frozenset({'affine', 'allow_constant', 'conventions', 'group_size', 'spatial_dims',
                         'track_running_stats', 'training'}),
    error_model=zca_bounds,
    traits=frozenset({"batch_dependent", "channel_axis_1", WHITENING, POPULATION}),
    outputs=("y", "running_mean", "running_whitening"),
    bench_case=bench_case,
))
