"""Record: recurrent batch normalization over (N, T, F), frame-wise (Cooijmans et al. 2017) or
sequence-wise (Laurent et al. 2016)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning
from normspec.library.strategies import affine_arrays, eps_values, grouped_values, seeds
from normspec.norms.batch_renorm import POPULATION
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.moments import moments
from normspec.spec.recurrent_batch_norm import (
    population,
    recurrent_batch_norm,
    recurrent_batch_norm_backward,
    stats_axes,
)

SEQUENCE = register_trait(
    "per_step_population_stats",
    "input (N, T, F); frame-wise statistics per time step, population statistics per step, steps past T_max reuse "
    "the last; the default cases use batch statistics, population statistics are drawn with track_running_stats=True",
)


@st.composite
def recurrent_cases(draw, *, training=None, track_running_stats=None, statistics=None, conventions=True,
                    allow_constant=True, affine=None, spatial_dims=None, t_max=None, steps=None):
    """(N, T, F) calls. Without overrides every case normalizes by batch statistics (training, or
    eval without population statistics; training cases may carry them, with T_max = T): the
    generic moment properties need that. track_running_stats=True draws population statistics
    of any T_max (T <= T_max in training, steps past T_max in eval)."""
    statistics = draw(st.sampled_from(["frame", "sequence"]), label="statistics") if statistics is None else statistics
    n = draw(st.integers(1, 5), label="N")
    t = draw(st.integers(1, 5), label="T") if steps is None else steps
    f = draw(st.integers(1, 5), label="F")
    training = draw(st.booleans(), label="training") if training is None else training
    if track_running_stats is None:
        # frame-wise (T_max, F) statistics do not fit the generic properties' per-channel vectors:
        # they are drawn by the family's population-statistics property (track_running_stats=True)
        running = training and statistics == "sequence" and draw(st.booleans(), label="track_running_stats")
        t_max = t if t_max is None else t_max
    else:
        running = track_running_stats
        if t_max is None:
            t_max = draw(st.integers(t if training else 1, 6), label="T_max")
    batch = training or not running
    if batch and (n if statistics == "frame" else n * t) < 2:
        n = 2
    x = draw(grouped_values((n, t, f), (1, 2) if statistics == "frame" else (2,), allow_constant=allow_constant),
             label="x")
    arrays = {"x": x, **affine_arrays(draw, (f,), affine)}
    params = {"statistics": statistics, "training": training, "eps": draw(eps_values, label="eps")}
    if running:
        rng = np.random.default_rng(draw(seeds, label="running_seed"))
        if statistics == "frame":
            rows = np.minimum(np.arange(t_max), t - 1)
            mean, spread = x.mean(axis=0)[rows], x.std(axis=0)[rows] + 1e-3
        else:
            mean, spread = x.mean(axis=(0, 1)), x.std(axis=(0, 1)) + 1e-3
        arrays["running_mean"] = mean + spread * rng.normal(0.0, 0.5, mean.shape)
        arrays["running_var"] = spread**2 * rng.uniform(0.3, 3.0, mean.shape)
        params["momentum"] = draw(st.one_of(st.just(0.1), st.floats(0.0, 1.0)), label="momentum")
        if conventions:
            params["momentum_style"] = draw(st.sampled_from(["new", "decay"]), label="momentum_style")
            params["running_var_style"] = draw(st.sampled_from(["unbiased", "biased"]), label="running_var_style")
    return Case("recurrent_batch_norm", arrays, params)


_KEYS = ("statistics", "training", "momentum", "eps", "momentum_style", "running_var_style")


def reference(case: Case) -> dict[str, np.ndarray]:
    r = recurrent_batch_norm(case.x, case.get("weight"), case.get("bias"), case.get("running_mean"),
                             case.get("running_var"), **case.kwargs(*_KEYS))
    out = {"y": r.y}
    if case.params.get("training", True) and r.running_mean is not None:
        out["running_mean"], out["running_var"] = r.running_mean, r.running_var
    return out


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    keys = ("statistics", "training", "eps")
    grads = recurrent_batch_norm_backward(dy, case.x, case.get("weight"), case.get("running_mean"),
                                          case.get("running_var"), **case.kwargs(*keys))
    return case.present(grads)


def conditioning(case: Case) -> Conditioning:
    x, p = case.x, case.params
    statistics, eps = p.get("statistics", "frame"), p.get("eps", 1e-5)
    f = x.shape[2]
    gamma = case.array_or("weight", f, 1.0)
    beta = case.array_or("bias", f, 0.0)
    axes = stats_axes(statistics)
    running = case.get("running_mean") is not None and case.get("running_var") is not None
    if p.get("training", True) or not running:
        m = moments(x, axes, eps)
        unbiased = p.get("running_var_style", "unbiased") == "unbiased" and m.count > 1
        return Conditioning(m.xhat, m.mean, m.std, m.count, gamma, beta, axes, (0, 1), True,
                            m.count / (m.count - 1) if unbiased else 1.0)
    mean, var = population(case.get("running_mean"), case.get("running_var"), x.shape, statistics)
    std = np.sqrt(var + eps)
    return Conditioning((x - mean) / std, mean, std, 1, gamma, beta, axes, (0, 1), False)


def population_bounds(case: Case, dtype: str, reference, dy=None, ref_grads=None):
    """The moment model for y and the gradients; per-step running statistics bounded like
    BatchNorm's running statistics, row by row (mean error u g (|mu| + s), variance u g (var + 2 s (|mu| + s)))."""
    from normspec.library.tolerance import (
        SAFETY,
        TINY,
        Bounds,
        compute_roundoff,
        growth,
        moment_bounds,
        storage_roundoff,
    )

    c = conditioning(case)
    b = dict(moment_bounds(c, dtype, {"y": reference["y"]}, dy, ref_grads).values)
    if "running_mean" in reference:
        u, v, g = compute_roundoff(dtype), storage_roundoff(dtype), growth(c.count)
        mean = np.broadcast_to(c.mean, (1,) + case.x.shape[1:])[0]
        std = np.broadcast_to(c.std, (1,) + case.x.shape[1:])[0]
        if case.params.get("statistics", "frame") == "sequence":
            mean, std = mean[0], std[0]
        em = np.zeros_like(reference["running_mean"])
        ev = np.zeros_like(reference["running_var"])
        rows = slice(0, mean.shape[0]) if mean.ndim == 2 else slice(None)
        em[rows] = u * g * (np.abs(mean) + std)
        ev[rows] = u * g * (std**2 * c.running_var_scale + 2 * std * (np.abs(mean) + std))
        b["running_mean"] = SAFETY * (em + u * np.abs(case.get("running_mean"))
                                      + v * np.abs(reference["running_mean"])) + TINY[dtype]
        b["running_var"] = SAFETY * (ev + u * np.abs(case.get("running_var"))
                                     + v * np.abs(reference["running_var"])) + TINY[dtype]
    return Bounds(b)


def bench_case(shape, rng) -> Case | None:
    """Frame-wise training step on (N, T, F): (tokens, hidden) as sequences of 8 steps, (N, C, *S) as (N, prod S, C)."""
    if len(shape) == 2:
        n, f = shape
        t = 8 if n % 8 == 0 else 1
        shape = (n // t, t, f)
    elif len(shape) != 3:
        n, c = shape[0], shape[1]
        shape = (n, int(np.prod(shape[2:])), c)
    n, t, f = shape
    if n < 2:
        return None
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, f), "bias": rng.normal(size=f),
              "running_mean": np.zeros((t, f)), "running_var": np.ones((t, f))}
    return Case("recurrent_batch_norm", arrays, {"statistics": "frame", "training": True, "momentum": 0.1, "eps": 1e-5})


register(NormRecord(
    name="recurrent_batch_norm",
    family="batch",
    paper="Cooijmans et al. 2017, Recurrent Batch Normalization, sec. 3; Laurent et al. 2016, sec. 4",
    reference=reference,
    reference_grad=reference_grad,
    cases=recurrent_cases,
    overrides=frozenset({'affine', 'allow_constant', 'conventions', 'spatial_dims', 'statistics', 'steps', 't_max',
                         'track_running_stats', 'training'}),
    conditioning=conditioning,
    traits=frozenset({"moment_normalizer", "scale_invariant", "shift_invariant", SEQUENCE, POPULATION}),
    outputs=("y", "running_mean", "running_var"),
    bench_case=bench_case,
))
