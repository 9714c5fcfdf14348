"""Synchronized Batch Normalization across the ranks of a data-parallel group.

BatchNorm (Ioffe & Szegedy 2015, Algorithm 1) whose statistics are those of the whole global
batch although each rank holds only its shard: every rank computes its count n_r, mean mu_r and
biased variance s2_r per channel, the ranks all-gather (n_r, mu_r, s2_r) and combine them with
the parallel-variance formula (Chan, Golub & LeVeque 1979, "Updating formulae and a pairwise
algorithm for computing sample variances"):

    n = sum_r n_r,   mu = sum_r n_r mu_r / n,   sigma^2 = sum_r n_r (s2_r + (mu_r - mu)^2) / n,

and the running variance is fed sigma^2 n/(n-1) (PyTorch's `nn.SyncBatchNorm`, which follows
Zhang et al. 2018, "Context Encoding for Semantic Segmentation", sec. 3.3 on cross-GPU BN). In the
backward pass the ranks all-reduce sum_R g and sum_R g xhat (g = gamma dy), so each rank's input
gradient is BatchNorm's over the global batch. Hence: SyncBN over ranks == BN over the
concatenated batch, for any split of the batch (uneven rank sizes included).

A rank may hold an empty shard (n_r = 0), as PyTorch allows: nn.SyncBatchNorm's forward then
all-gathers zeros for that rank and drops ranks with count 0 before combining (torch 2.13,
torch/nn/modules/_functions.py, "remove stats from empty inputs"), and its backward still joins the
all-reduce with zeros. Such a rank contributes nothing (n_r mu_r = 0 in every sum above) and gets an
empty output; at least one rank must hold data.

Inputs are per-rank lists; everything else (affine, running statistics, conventions) is as in
`normspec.spec.batch_norm`. Deviation from `nn.SyncBatchNorm`: PyTorch synchronizes only when the
module is in training mode; here batch statistics, whenever they are used (also training=False
without running statistics), are the global batch's, so the identity with BN always holds.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from normspec.spec.batch_norm import MOMENTUM_STYLES, RUNNING_VAR_STYLES
from normspec.spec.moments import as_float64


class RankStatistics(NamedTuple):
    """Per-channel statistics of one rank's shard (or of the whole group, once combined)."""

    count: int
    mean: np.ndarray  # (C,)
    var: np.ndarray  # (C,), biased


class SyncBatchNormResult(NamedTuple):
    ys: list[np.ndarray]  # one output per rank
    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    num_batches_tracked: int


def rank_sizes_of(params, n: int) -> tuple[int, ...]:
    """The validated per-rank batch sizes of a call on a global batch of n samples."""
    if "rank_sizes" not in params:
        raise ValueError("sync_batch_norm needs the param rank_sizes (the per-rank batch sizes)")
    sizes = tuple(params["rank_sizes"])
    if not sizes or any(int(s) != s or s < 0 for s in sizes) or sum(sizes) < 1:
        raise ValueError(f"rank_sizes must be non-negative integers, one per rank, not all 0, got {sizes!r}")
    if sum(sizes) != n:
        raise ValueError(f"rank_sizes {sizes!r} sum to {sum(sizes)}, but the global batch has {n} samples")
    return tuple(int(s) for s in sizes)


def split_batch(x, params) -> list:
    """The per-rank shards x[start_r:start_r + n_r] of the global batch (views, any array type)."""
    sizes = rank_sizes_of(params, x.shape[0])
    bounds = np.cumsum((0,) + sizes)
    return [x[int(a):int(b)] for a, b in zip(bounds[:-1], bounds[1:])]


def _axes(x: np.ndarray) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.ndim))


def _channel_shape(x: np.ndarray) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def check_shards(xs: Sequence) -> list[np.ndarray]:
    """float64 copies of the per-rank shards, after checking they can form one batch."""
    if len(xs) < 1:
        raise ValueError("sync_batch_norm needs at least one rank's input")
    xs = [as_float64(x) for x in xs]
    first = xs[0]
    if first.ndim < 2 or first.ndim > 5:
        raise ValueError("sync_batch_norm expects inputs of shape (N_r, C, *S) with 0-3 spatial dims, "
                         f"got {first.shape}")
    for r, x in enumerate(xs):
        if x.shape[1:] != first.shape[1:]:
            raise ValueError(f"rank {r} has input of shape {x.shape}, but every rank needs (N_r, *{first.shape[1:]})")
    if all(x.shape[0] == 0 for x in xs):
        raise ValueError(f"every rank has an empty batch (shapes {[x.shape for x in xs]}); at least one needs data")
    return xs


def rank_statistics(x: np.ndarray) -> RankStatistics:
    """(n_r, mu_r, s2_r) of one shard, per channel: two-pass mean and biased variance."""
    x = as_float64(x)
    if x.shape[0] == 0:  # an empty shard: count 0 (PyTorch all-gathers zeros for it)
        return RankStatistics(0, np.zeros(x.shape[1]), np.zeros(x.shape[1]))
    axes = _axes(x)
    mean = x.mean(axis=axes)
    centered = x - mean.reshape(_channel_shape(x))
    return RankStatistics(x.size // x.shape[1], mean, (centered * centered).mean(axis=axes))


def combine_statistics(stats: Sequence[RankStatistics]) -> RankStatistics:
    """The group's statistics from the all-gathered per-rank ones (Chan et al. 1979):
    n = sum n_r, mu = sum n_r mu_r / n, sigma^2 = sum n_r (s2_r + (mu_r - mu)^2) / n."""
    stats = [s for s in stats if s.count > 0]  # ranks with an empty shard are dropped, as PyTorch does
    n = sum(s.count for s in stats)
    mean = sum(s.count * s.mean for s in stats) / n
    var = sum(s.count * (s.var + (s.mean - mean) ** 2) for s in stats) / n
    return RankStatistics(n, mean, var)


def _global_statistics(xs: list[np.ndarray], training: bool) -> RankStatistics:
    total = combine_statistics([rank_statistics(x) for x in xs])
    if training and total.count <= 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got {total.count} across "
            f"{len(xs)} rank(s) with inputs of shapes {[x.shape for x in xs]}"
        )
    return total


def sync_batch_norm(
    xs: Sequence,
    weight=None,
    bias=None,
    running_mean=None,
    running_var=None,
    *,
    training: bool = True,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    momentum_style: str = "new",
    running_var_style: str = "unbiased",
    num_batches_tracked: int = 0,
) -> SyncBatchNormResult:
    """y_r = gamma (x_r - mu)/sqrt(sigma^2 + eps) + beta on every rank r, with (mu, sigma^2) the
    combined statistics of all ranks (see the module docstring); running statistics, when given
    and training, are updated once with the group's mu and sigma^2 (n/(n-1) for "unbiased").
    In inference with running statistics every rank normalizes locally (no communication)."""
    if momentum_style not in MOMENTUM_STYLES:
        raise ValueError(f"momentum_style must be one of {MOMENTUM_STYLES}, got {momentum_style!r}")
    if running_var_style not in RUNNING_VAR_STYLES:
        raise ValueError(f"running_var_style must be one of {RUNNING_VAR_STYLES}, got {running_var_style!r}")
    xs = check_shards(xs)
    shape = _channel_shape(xs[0])
    has_running = running_mean is not None and running_var is not None
    new_mean = None if running_mean is None else as_float64(running_mean)
    new_var = None if running_var is None else as_float64(running_var)
    tracked = num_batches_tracked
    if training or not has_running:
        total = _global_statistics(xs, training)
        mean, std = total.mean.reshape(shape), np.sqrt(total.var.reshape(shape) + eps)
        if training and has_running:
            tracked = num_batches_tracked + 1
            factor = 1.0 / tracked if momentum is None else momentum
            if momentum_style == "decay" and momentum is not None:
                factor = 1.0 - momentum
            var = total.var * (total.count / (total.count - 1)) if running_var_style == "unbiased" else total.var
            new_mean = (1.0 - factor) * new_mean + factor * total.mean
            new_var = (1.0 - factor) * new_var + factor * var
    else:
        mean, std = new_mean.reshape(shape), np.sqrt(new_var.reshape(shape) + eps)
    gamma = 1.0 if weight is None else as_float64(weight).reshape(shape)
    beta = 0.0 if bias is None else as_float64(bias).reshape(shape)
    ys = [gamma * (x - mean) / std + beta for x in xs]
    return SyncBatchNormResult(ys, new_mean, new_var, tracked)


def sync_batch_norm_backward(
    dys: Sequence,
    xs: Sequence,
    weight=None,
    running_mean=None,
    running_var=None,
    *,
    training: bool = True,
    eps: float = 1e-5,
) -> dict[str, object]:
    """Gradients {"x": [dx_r per rank], "weight", "bias"} of `sync_batch_norm`.

    With batch statistics every rank computes its local sum_R g and sum_R g xhat (g = gamma dy),
    the ranks all-reduce them, and dx_r = (g_r - sum g / n - xhat_r sum(g xhat) / n) / s: Ioffe &
    Szegedy's BN backward over the global batch. The weight and bias gradients are the all-reduced
    sum dy xhat and sum dy (what data-parallel training's gradient all-reduce produces).
    """
    xs = check_shards(xs)
    dys = [as_float64(d) for d in dys]
    if [d.shape for d in dys] != [x.shape for x in xs]:
        raise ValueError(f"dy shapes {[d.shape for d in dys]} must equal the input shapes {[x.shape for x in xs]}")
    shape = _channel_shape(xs[0])
    axes = _axes(xs[0])
    gamma = np.ones(shape) if weight is None else as_float64(weight).reshape(shape)
    has_running = running_mean is not None and running_var is not None
    batch = training or not has_running
    if batch:
        total = _global_statistics(xs, training)
        mean, std = total.mean.reshape(shape), np.sqrt(total.var.reshape(shape) + eps)
    else:
        mean, std = as_float64(running_mean).reshape(shape), np.sqrt(as_float64(running_var).reshape(shape) + eps)
    xhats = [(x - mean) / std for x in xs]
    sum_dy = sum(d.sum(axis=axes) for d in dys)  # the all-reduce of the backward
    sum_dy_xhat = sum((d * xh).sum(axis=axes) for d, xh in zip(dys, xhats))
    dxs = []
    for d, xh in zip(dys, xhats):
        g = gamma * d
        if batch:
            n = total.count
            dxs.append((g - gamma * sum_dy.reshape(shape) / n - xh * gamma * sum_dy_xhat.reshape(shape) / n) / std)
        else:
            dxs.append(g / std)
    return {"x": dxs, "weight": sum_dy_xhat, "bias": sum_dy}
