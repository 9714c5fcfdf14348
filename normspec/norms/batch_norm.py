"""Record: Batch Normalization (Ioffe & Szegedy 2015) over (N, C, *S), 0-3 spatial dims."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning
from normspec.library.strategies import (
    Reach,
    affine_arrays,
    batch_norm_running_state,
    channel_shape,
    eps_values,
    grouped_values,
    mode,
    near_square,
    reach_values,
    seeds,
)
from normspec.registry import NormRecord, register
from normspec.spec import batch_norm, batch_norm_backward, moments


@st.composite
def batch_norm_cases(draw, *, training=None, track_running_stats=None, affine=None, spatial_dims=None,
                     conventions=True, allow_constant=True, min_per_channel=2, reach: Reach | None = None):
    """BatchNorm calls: shapes (N, C, *S), train or eval, with or without running stats/affine.

    Running statistics and affine parameters are random, not their initial values. Cases that
    use batch statistics have at least `min_per_channel` values per channel. With `reach`,
    `reach.sets` channels of N * prod(S) = `reach.length` values (spatial sides near square).
    """
    if reach is not None:
        nsp = draw(st.integers(0, 3), label="spatial_dims") if spatial_dims is None else spatial_dims
        c, length = reach.sets, reach.length
        n = 2 if length % 2 == 0 and length > 2 and nsp else (1 if nsp else length)
        sides = near_square(length // n, nsp) if nsp else ()
    else:
        n, c, sides = channel_shape(draw, spatial_dims)
    training, running = mode(draw, training, track_running_stats)
    if (training or not running) and n * math.prod(sides) < min_per_channel:
        n = -(-min_per_channel // math.prod(sides))
    shape = (n, c) + sides
    if reach is not None:
        x = reach_values(np.random.default_rng(draw(seeds, label="seed")), shape, (1,), reach)
    else:
        x = draw(grouped_values(shape, (1,), allow_constant=allow_constant), label="x")
    arrays = {"x": x, **affine_arrays(draw, (c,), affine)}
    eps = reach.eps if reach is not None and reach.eps is not None else draw(eps_values, label="eps")
    params = {"training": training, "eps": eps}
    if running:
        batch_norm_running_state(draw, x, arrays, params, conventions)
        if conventions and params["momentum"] is not None:  # Caffe's / TF zero_debias' bias-corrected average
            params["moving_average"] = draw(st.sampled_from(["ema", "ema", "debiased"]), label="moving_average")
    return Case("batch_norm", arrays, params)


def _spec_kwargs(case: Case) -> dict:
    keys = ("training", "momentum", "eps", "momentum_style", "running_var_style", "num_batches_tracked",
            "moving_average")
    return case.kwargs(*keys)


def reference(case: Case) -> dict[str, np.ndarray]:
    r = batch_norm(case.x, case.get("weight"), case.get("bias"), case.get("running_mean"), case.get("running_var"),
                   **_spec_kwargs(case))
    out = {"y": r.y}
    if case.params.get("training", True) and r.running_mean is not None:
        out["running_mean"], out["running_var"] = r.running_mean, r.running_var
    return out


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    grads = batch_norm_backward(dy, case.x, case.get("weight"), case.get("running_mean"), case.get("running_var"),
                                training=case.params.get("training", True), eps=case.params.get("eps", 1e-5))
    return case.present(grads)


def conditioning(case: Case) -> Conditioning:
    x = case.x
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    eps = case.params.get("eps", 1e-5)
    has_running = case.get("running_mean") is not None
    gamma = case.array_or("weight", shape, 1.0)
    beta = case.array_or("bias", shape, 0.0)
    count = x.size // x.shape[1]
    if case.params.get("training", True) or not has_running:
        m = moments(x, axes, eps)
        unbiased = case.params.get("running_var_style", "unbiased") == "unbiased" and count > 1
        return Conditioning(m.xhat, m.mean, m.std, m.count, gamma, beta, axes, axes, True,
                            count / (count - 1) if unbiased else 1.0)
    mean = case.get("running_mean").reshape(shape)
    std = np.sqrt(case.get("running_var").reshape(shape) + eps)
    return Conditioning((x - mean) / std, mean, std, 1, gamma, beta, axes, axes, False)


def bench_case(shape, rng) -> Case | None:
    """BatchNorm2d-style training call on a CNN activation (N, C, H, W); (tokens, hidden) as BatchNorm1d."""
    c = shape[1]
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, c), "bias": rng.normal(size=c),
              "running_mean": np.zeros(c), "running_var": np.ones(c)}
    return Case("batch_norm", arrays, {"training": True, "momentum": 0.1, "eps": 1e-5})


register(NormRecord(
    name="batch_norm",
    family="batch",
    paper="Ioffe & Szegedy 2015, Batch Normalization, Algorithms 1-2",
    reference=reference,
    reference_grad=reference_grad,
    cases=batch_norm_cases,
    overrides=frozenset({'affine', 'allow_constant', 'conventions', 'min_per_channel', 'spatial_dims',
                         'track_running_stats', 'training', 'reach'}),
    conditioning=conditioning,
    traits=frozenset({"moment_normalizer", "running_stats", "batch_dependent", "scale_invariant",
                      "shift_invariant", "channel_axis_1", "accepts_empty"}),
    torch_modules=("torch.nn.BatchNorm1d", "torch.nn.BatchNorm2d", "torch.nn.BatchNorm3d"),
    torch_functional="torch.nn.functional.batch_norm",
    outputs=("y", "running_mean", "running_var"),
    bench_case=bench_case,
))
