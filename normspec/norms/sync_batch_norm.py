"""Record: SyncBatchNorm, BatchNorm whose statistics are combined across k ranks of a process group.

A case holds the concatenated global batch `x` (N, C, *S) and the per-rank split in the param
`rank_sizes` (k = 2..4 sizes summing to N; uneven sizes, sizes of 1 and empty ranks included); the
affine parameters, running statistics and conventions are BatchNorm's. Backends simulate the
ranks (numpy) or run them as k real processes (torch: gloo on this machine).
"""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning
from normspec.library.strategies import affine_arrays, batch_norm_running_state, eps_values, grouped_values, mode
from normspec.library.tolerance import growth
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.moments import moments
from normspec.spec.sync_batch_norm import rank_sizes_of, split_batch, sync_batch_norm, sync_batch_norm_backward

RANK_SYNCHRONIZED = register_trait(
    "rank_synchronized",
    "the batch is split over ranks (param rank_sizes) whose statistics are combined: equals the "
    "unsplit norm over the concatenated batch",
)
MIN_RANKS, MAX_RANKS = 2, 4


@st.composite
def rank_sizes_strategy(draw, ranks=None, empty_ranks=True):
    """k = 2..4 per-rank sizes: mostly uneven, with sizes of 1 common and, if empty_ranks, a rank
    with an empty batch now and then (PyTorch's SyncBatchNorm allows it); the others then hold at
    least 2 samples in all, so that every drawn case can train."""
    k = draw(st.integers(MIN_RANKS, MAX_RANKS), label="ranks") if ranks is None else ranks
    size = st.one_of(st.just(1), st.integers(1, 4))
    sizes = [draw(size, label=f"rank_size_{r}") for r in range(k)]
    if empty_ranks and draw(st.integers(0, 3), label="empty_rank") == 0:
        sizes[draw(st.integers(0, k - 1), label="empty_rank_index")] = 0
        if sum(sizes) < 2:
            sizes[max(range(k), key=lambda r: sizes[r])] += 2 - sum(sizes)
    return tuple(sizes)


@st.composite
def sync_batch_norm_cases(draw, *, training=None, track_running_stats=None, affine=None, spatial_dims=None,
                          conventions=True, allow_constant=True, ranks=None, rank_sizes=None, empty_ranks=True):
    """SyncBatchNorm calls: the global batch (N, C, *S) with N = sum(rank_sizes), train or eval,
    with or without running stats/affine; random affine parameters and running statistics.
    Accepts BatchNorm's overrides plus ranks= (k), rank_sizes= and empty_ranks= (allow n_r = 0)."""
    sizes = (draw(rank_sizes_strategy(ranks, empty_ranks), label="rank_sizes") if rank_sizes is None
             else tuple(rank_sizes))
    nsp = draw(st.integers(0, 3), label="spatial_dims") if spatial_dims is None else spatial_dims
    c = draw(st.integers(1, 4), label="C")
    sides = tuple(draw(st.integers(1, 4 if nsp < 3 else 2), label="side") for _ in range(nsp))
    training, running = mode(draw, training, track_running_stats)
    shape = (sum(sizes), c) + sides
    x = draw(grouped_values(shape, (1,), allow_constant=allow_constant), label="x")
    arrays = {"x": x, **affine_arrays(draw, (c,), affine)}
    params = {"rank_sizes": sizes, "training": training, "eps": draw(eps_values, label="eps")}
    if running:
        batch_norm_running_state(draw, x, arrays, params, conventions)
    return Case("sync_batch_norm", arrays, params)


SPEC_KEYS = ("training", "momentum", "eps", "momentum_style", "running_var_style", "num_batches_tracked")


def spec_kwargs(params) -> dict:
    return {k: params[k] for k in SPEC_KEYS if k in params}


def reference(case: Case) -> dict[str, np.ndarray]:
    r = sync_batch_norm(split_batch(case.x, case.params), case.get("weight"), case.get("bias"),
                        case.get("running_mean"), case.get("running_var"), **spec_kwargs(case.params))
    out = {"y": np.concatenate(r.ys)}
    if case.params.get("training", True) and r.running_mean is not None:
        out["running_mean"], out["running_var"] = r.running_mean, r.running_var
    return out


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    grads = sync_batch_norm_backward(split_batch(dy, case.params), split_batch(case.x, case.params),
                                     case.get("weight"), case.get("running_mean"), case.get("running_var"),
                                     training=case.params.get("training", True), eps=case.params.get("eps", 1e-5))
    out = {"x": np.concatenate(grads["x"])}
    out.update({role: grads[role] for role in ("weight", "bias") if case.get(role) is not None})
    return out


def protocol_count(rank_counts) -> int:
    """An effective reduction length for the tolerance model's growth factor g(m) = 2 + sqrt(m).

    Each rank's mean mu_r errs by u g(n_r)(|mu_r| + s_r), and |mu_r - mu|, s_r <= sigma sqrt(n/n_r)
    (n_r s_r^2 and n_r (mu_r - mu)^2 are parts of n sigma^2); the n_r/n-weighted sum over ranks of
    those errors, in units of sigma, is at most u max_r g(n_r) (|mu|/sigma + 2 sqrt(k)), and combining
    k terms adds u g(k). So the group's statistics err like one reduction whose growth is
    sqrt(k) max_r g(n_r) + g(k); this returns the smallest m with g(m) at least that. Ranks with
    an empty shard are dropped before combining and do not count."""
    rank_counts = [n for n in rank_counts if n > 0]
    k = len(rank_counts)
    target = math.sqrt(k) * max(growth(n) for n in rank_counts) + growth(k)
    return int(math.ceil((target - 2.0) ** 2))


def conditioning(case: Case) -> Conditioning:
    """BatchNorm's conditioning over the concatenated batch (the combined statistics are the global
    batch's), with the growth of the rank-wise protocol (`protocol_count`) as the reduction length."""
    x = case.x
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    eps = case.params.get("eps", 1e-5)
    gamma = case.array_or("weight", shape, 1.0)
    beta = case.array_or("bias", shape, 0.0)
    per_sample = x.size // max(x.shape[0] * x.shape[1], 1)
    counts = [n * per_sample for n in rank_sizes_of(case.params, x.shape[0])]
    if case.params.get("training", True) or case.get("running_mean") is None:
        m = moments(x, axes, eps)
        unbiased = case.params.get("running_var_style", "unbiased") == "unbiased" and m.count > 1
        return Conditioning(m.xhat, m.mean, m.std, protocol_count(counts), gamma, beta, axes, axes, True,
                            m.count / (m.count - 1) if unbiased else 1.0)
    mean = case.get("running_mean").reshape(shape)
    std = np.sqrt(case.get("running_var").reshape(shape) + eps)
    return Conditioning((x - mean) / std, mean, std, 1, gamma, beta, axes, axes, False)


def bench_case(shape, rng) -> Case | None:
    """A BatchNorm2d-style training call on (N, C, H, W) (or (tokens, hidden)) split over 2 ranks."""
    n, c = shape[0], shape[1]
    if n < 2:
        return None
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, c), "bias": rng.normal(size=c),
              "running_mean": np.zeros(c), "running_var": np.ones(c)}
    return Case("sync_batch_norm", arrays,
                {"rank_sizes": (n - n // 2, n // 2), "training": True, "momentum": 0.1, "eps": 1e-5})


register(NormRecord(
    name="sync_batch_norm",
    family="batch",
    paper="Ioffe & Szegedy 2015, Algorithm 1, with statistics combined across ranks (Chan, Golub & LeVeque "
          "1979; Zhang et al. 2018, Context Encoding, sec. 3.3)",
    reference=reference,
    reference_grad=reference_grad,
    cases=sync_batch_norm_cases,
    overrides=frozenset({'affine', 'allow_constant', 'conventions', 'empty_ranks', 'rank_sizes', 'ranks',
                         'spatial_dims', 'track_running_stats', 'training'}),
    conditioning=conditioning,
    traits=frozenset({"moment_normalizer", "running_stats", "batch_dependent", "scale_invariant",
                      "shift_invariant", "channel_axis_1", RANK_SYNCHRONIZED}),
    torch_modules=("torch.nn.SyncBatchNorm",),
    torch_functional=None,
    outputs=("y", "running_mean", "running_var"),
    bench_case=bench_case,
))
