"""Record: Instance Normalization (Ulyanov et al. 2016) over (N, C, *S), 1-3 spatial dims."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning
from normspec.library.strategies import (
    Reach,
    affine_arrays,
    channel_running_stats,
    eps_values,
    grouped_values,
    mode,
    momenta,
    near_square,
    reach_values,
    seeds,
)
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.instance_norm import instance_norm, instance_norm_backward, uses_input_stats
from normspec.spec.moments import moments

register_trait("per_instance_running_stats",
               "running statistics are fed the batch-mean of per-instance statistics; eval uses them per channel")



@st.composite
def instance_norm_cases(draw, *, training=None, track_running_stats=None, affine=None, spatial_dims=None,
                        conventions=True, allow_constant=True, reach: Reach | None = None):
    """InstanceNorm calls: (N, C, *S), train or eval, with or without running stats / affine.
    Running statistics and affine parameters are random; cases that normalize by the instance's
    own statistics have at least 2 spatial elements (PyTorch raises otherwise). `conventions` is
    accepted for the running-stats override contract; InstanceNorm has only PyTorch's."""
    nsp = draw(st.integers(1, 3), label="spatial_dims") if spatial_dims is None else max(spatial_dims, 1)
    if reach is not None:  # one sample of `reach.sets` channels of prod(S) = `reach.length` values
        c, n, sides = reach.sets, 1, list(near_square(reach.length, nsp))
    else:
        c = draw(st.integers(1, 5), label="C")
        sides = [draw(st.integers(1, 5 if nsp < 3 else 3), label="side") for _ in range(nsp)]
        n = draw(st.integers(1, 4), label="N")
    training, running = mode(draw, training, track_running_stats)
    if (training or not running) and math.prod(sides) < 2:
        sides[-1] = 2
    shape = (n, c) + tuple(sides)
    if reach is not None:
        x = reach_values(np.random.default_rng(draw(seeds, label="seed")), shape, (0, 1), reach)
    else:
        x = draw(grouped_values(shape, (0, 1), allow_constant=allow_constant), label="x")
    arrays = {"x": x, **affine_arrays(draw, (c,), affine)}
    eps = reach.eps if reach is not None and reach.eps is not None else draw(eps_values, label="eps")
    params = {"training": training, "eps": eps}
    if running:
        arrays["running_mean"], arrays["running_var"] = draw(channel_running_stats(x))
        params["momentum"] = draw(momenta, label="momentum")
    return Case("instance_norm", arrays, params)


def _spec_kwargs(case: Case) -> dict:
    return case.kwargs(*("training", "momentum", "eps"))


def reference(case: Case) -> dict[str, np.ndarray]:
    r = instance_norm(case.x, case.get("weight"), case.get("bias"), case.get("running_mean"), case.get("running_var"),
                      **_spec_kwargs(case))
    out = {"y": r.y}
    if case.params.get("training", True) and r.running_mean is not None and r.running_var is not None:
        out["running_mean"], out["running_var"] = r.running_mean, r.running_var
    return out


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    grads = instance_norm_backward(dy, case.x, case.get("weight"), case.get("running_mean"), case.get("running_var"),
                                   training=case.params.get("training", True), eps=case.params.get("eps", 1e-5))
    return case.present(grads)


def conditioning(case: Case) -> Conditioning:
    x = case.x
    axes = tuple(range(2, x.ndim))
    param_axes = (0,) + axes
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    eps = case.params.get("eps", 1e-5)
    gamma = case.array_or("weight", shape, 1.0)
    beta = case.array_or("bias", shape, 0.0)
    if uses_input_stats(case.get("running_mean"), case.get("running_var"), case.params.get("training", True)):
        m = moments(x, axes, eps)
        return Conditioning(m.xhat, m.mean, m.std, m.count, gamma, beta, axes, param_axes, True,
                            m.count / (m.count - 1))
    mean = case.get("running_mean").reshape(shape)
    std = np.sqrt(case.get("running_var").reshape(shape) + eps)
    return Conditioning((x - mean) / std, mean, std, 1, gamma, beta, axes, param_axes, False)


def bench_case(shape, rng) -> Case | None:
    """nn.InstanceNorm2d(C, affine=True) as in style transfer, on a CNN activation (N, C, H, W)."""
    if len(shape) < 3:
        return None
    c = shape[1]
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, c), "bias": rng.normal(size=c)}
    return Case("instance_norm", arrays, {"training": True, "eps": 1e-5})


register(NormRecord(
    name="instance_norm",
    family="instance",
    paper="Ulyanov, Vedaldi & Lempitsky 2016, Instance Normalization, eq. 2",
    reference=reference,
    reference_grad=reference_grad,
    cases=instance_norm_cases,
    overrides=frozenset({'affine', 'allow_constant', 'conventions', 'spatial_dims', 'track_running_stats',
                         'training', 'reach'}),
    conditioning=conditioning,
    traits=frozenset({"moment_normalizer", "running_stats", "per_instance_running_stats", "batch_independent",
                      "scale_invariant", "shift_invariant", "channel_axis_1", "accepts_empty"}),
    torch_modules=("torch.nn.InstanceNorm1d", "torch.nn.InstanceNorm2d", "torch.nn.InstanceNorm3d"),
    torch_functional="torch.nn.functional.instance_norm",
    outputs=("y", "running_mean", "running_var"),
    bench_case=bench_case,
))
