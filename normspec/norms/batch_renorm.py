"""Record: Batch Renormalization (Ioffe 2017) over (N, C, *S), moving mean and moving std."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.strategies import affine_arrays, channel_shape, eps_values, flag, grouped_values, seeds
from normspec.library.tolerance import batch_renorm_bounds
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.batch_renorm import batch_renorm, batch_renorm_backward

RENORM = register_trait("renorm",
                        "Batch Renorm: r, d corrections against moving mean/std, rmax = 1, dmax = 0 is BatchNorm")
POPULATION = register_trait(
    "population_statistics",
    "training updates moving statistics from the batch; with momentum 1 they become the batch's own, and eval with "
    "them reproduces the training output",
)
EXACT_SCALE = register_trait("exact_scale_rule",
                             "f(a x, scaled state; eps') = scaled f(x, state; eps) exactly for a = 2^k")


@st.composite
def batch_renorm_cases(draw, *, training=None, track_running_stats=None, affine=None, spatial_dims=None,
                       conventions=True, allow_constant=True, rmax=None, dmax=None, form=None):
    """Batch Renorm calls: (N, C, *S), train or eval, moving statistics always present (r and d
    need them), drawn so that r and d are clipped in some channels and not in others."""
    n, c, sides = channel_shape(draw, spatial_dims)
    training = flag(draw, training, "training")
    if training and n * math.prod(sides) < 2:
        n = -(-2 // math.prod(sides))
    shape = (n, c) + sides
    x = draw(grouped_values(shape, (1,), allow_constant=allow_constant), label="x")
    arrays = {"x": x, **affine_arrays(draw, (c,), affine)}
    rng = np.random.default_rng(draw(seeds, label="running_seed"))
    axes = (0,) + tuple(range(2, x.ndim))
    spread = x.std(axis=axes) + 1e-3
    arrays["running_mean"] = x.mean(axis=axes) + spread * rng.normal(0.0, 2.0, c)
    arrays["running_std"] = spread * np.exp(rng.uniform(-2.0, 2.0, c))
    params = {
        "training": training,
        "eps": draw(eps_values, label="eps"),
        "rmax": draw(st.sampled_from([1.0, 1.5, 3.0, 10.0]), label="rmax") if rmax is None else rmax,
        "dmax": draw(st.sampled_from([0.0, 0.5, 5.0]), label="dmax") if dmax is None else dmax,
        "momentum": draw(st.one_of(st.just(0.1), st.floats(0.0, 1.0)), label="momentum"),
    }
    if conventions:
        params["momentum_style"] = draw(st.sampled_from(["new", "decay"]), label="momentum_style")
    keras = form == "keras" or (form is None and conventions and draw(st.integers(0, 2), label="keras_form") == 0)
    if keras:  # Keras' BatchNormalization(renorm=True): its own clipping and a second set of statistics
        params["form"] = "keras"
        if rmax is None:
            params["rmax"] = draw(st.sampled_from([1.0, 3.0, math.inf]), label="keras_rmax")
        if dmax is None:
            params["dmax"] = draw(st.sampled_from([0.0, 5.0, math.inf]), label="keras_dmax")
        # renorm_clipping without rmin means 0; with rmax pinned to 1 (no correction), rmin = 1 too
        params["rmin"] = 1.0 if rmax == 1.0 else draw(st.sampled_from([0.0, 0.5]), label="rmin")
        params["renorm_momentum"] = draw(st.one_of(st.just(0.99), st.floats(0.0, 1.0)), label="renorm_momentum")
        arrays["moving_mean"] = x.mean(axis=axes) + spread * rng.normal(0.0, 1.0, c)
        arrays["moving_std"] = spread * np.exp(rng.uniform(-1.0, 1.0, c))
    return Case("batch_renorm", arrays, params)


_KEYS = ("training", "rmax", "dmax", "momentum", "eps", "momentum_style", "form", "rmin", "renorm_momentum")


def reference(case: Case) -> dict[str, np.ndarray]:
    r = batch_renorm(case.x, case.get("weight"), case.get("bias"), case.get("running_mean"), case.get("running_std"),
                     moving_mean=case.get("moving_mean"), moving_std=case.get("moving_std"), **case.kwargs(*_KEYS))
    out = {"y": r.y}
    if case.params.get("training", True):
        out["running_mean"], out["running_std"] = r.running_mean, r.running_std
        if r.moving_mean is not None:  # Keras' form: its inference statistics
            out["moving_mean"], out["moving_std"] = r.moving_mean, r.moving_std
    return out


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    keys = ("training", "rmax", "dmax", "eps", "form", "rmin")
    grads = batch_renorm_backward(dy, case.x, case.get("weight"), case.get("running_mean"), case.get("running_std"),
                                  moving_mean=case.get("moving_mean"), moving_std=case.get("moving_std"),
                                  **case.kwargs(*keys))
    return case.present(grads)


def bench_case(shape, rng) -> Case | None:
    """A training step on a CNN activation (N, C, H, W) or (tokens, hidden), rmax 3, dmax 5."""
    c = shape[1]
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, c), "bias": rng.normal(size=c),
              "running_mean": rng.normal(0, 0.1, c), "running_std": rng.uniform(0.8, 1.2, c)}
    return Case("batch_renorm", arrays, {"training": True, "rmax": 3.0, "dmax": 5.0, "momentum": 0.01, "eps": 1e-5})


register(NormRecord(
    name="batch_renorm",
    family="batch",
    paper="Ioffe 2017, Batch Renormalization, Algorithm 1",
    reference=reference,
    reference_grad=reference_grad,
    cases=batch_renorm_cases,
    overrides=frozenset({'affine', 'allow_constant', 'conventions', 'dmax', 'form', 'rmax', 'spatial_dims',
                         'track_running_stats', 'training'}),
    error_model=batch_renorm_bounds,
    traits=frozenset({"batch_dependent", "channel_axis_1", RENORM, POPULATION, EXACT_SCALE}),
    outputs=("y", "running_mean", "running_std"),
    bench_case=bench_case,
))
