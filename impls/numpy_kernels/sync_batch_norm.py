"""SyncBatchNorm in NumPy: k ranks simulated in one process, statistics combined as the protocol does.

Each rank computes (n_r, mu_r, s2_r) of its own shard only (shifted two-pass, in the
accumulation dtype); the "all-gather" hands the list to every rank, which merges it pairwise with
Chan, Golub & LeVeque's update (delta = mu_r - mu, mu += delta n_r/n', M2 += M2_r + delta^2 n n_r/n'),
so a constant channel keeps its mean exactly. The backward "all-reduces" each rank's sum g and
sum g xhat. The concatenated batch is never normalized as one array.
"""
from __future__ import annotations

import numpy as np

from normspec.impls.numpy_backend import accumulation_dtype, numpy_kernel
from normspec.impls.numpy_kernels.batch_norm import _running_update
from normspec.impls.numpy_kernels.moments import apply_affine
from normspec.impls.running import uses_batch_statistics


def _geometry(x):
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def shards(x, params):
    from normspec.spec.sync_batch_norm import split_batch

    return split_batch(x, params)


def local_statistics(x_r):
    """(n_r, mu_r, s2_r) per channel of one rank's shard, in the accumulation dtype."""
    axes, _ = _geometry(x_r)
    if x_r.shape[0] == 0:  # an empty shard joins the all-gather with count 0
        zeros = np.zeros(x_r.shape[1], accumulation_dtype(x_r.dtype))
        return 0, zeros, zeros
    xa = x_r.astype(accumulation_dtype(x_r.dtype))  # a copy: the caller's shard is never written
    shift = xa[:1].copy()
    for a in axes[1:]:
        shift = shift.take([0], axis=a)
    xa -= shift  # shifted two-pass: a constant shard centres to exactly 0
    shifted_mean = xa.mean(axis=axes, keepdims=True)
    xa -= shifted_mean
    mean = (shift + shifted_mean).reshape(-1)
    return x_r.size // x_r.shape[1], mean, np.square(xa).mean(axis=axes)


def combine(gathered):
    """Merge the all-gathered [(n_r, mu_r, s2_r)] in rank order (Chan et al. 1979 pairwise update);
    ranks with count 0 (an empty shard) are dropped first, as nn.SyncBatchNorm does."""
    gathered = [g for g in gathered if g[0] > 0]
    n, mean, var = gathered[0]
    m2 = var * n
    for n_r, mean_r, var_r in gathered[1:]:
        total = n + n_r
        delta = mean_r - mean
        mean = mean + delta * (n_r / total)
        m2 = m2 + var_r * n_r + delta * delta * (n * n_r / total)
        n = total
    return n, mean, m2 / n


def _statistics(inputs, params):
    """(xhat per rank, group mean, group biased var, inv_std, count, batch?) in the accumulation dtype."""
    x = inputs["x"]
    _, shape = _geometry(x)
    acc = accumulation_dtype(x.dtype)
    eps = acc.type(params.get("eps", 1e-5))
    parts = shards(x, params)
    batch = uses_batch_statistics(inputs, params)
    if batch:
        count, mean, var = combine([local_statistics(p) for p in parts])
        if params.get("training", True) and count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input of shape {x.shape} "
                             f"over rank_sizes {tuple(params['rank_sizes'])}")
    else:
        count = 1
        mean = inputs["running_mean"].astype(acc)
        var = inputs["running_var"].astype(acc)
    inv_std = (1.0 / np.sqrt(var + eps)).reshape(shape)
    xhats = [(p.astype(acc) - mean.reshape(shape)) * inv_std for p in parts]
    return xhats, mean, var, inv_std, count, batch


def forward(inputs, params):
    x = inputs["x"]
    _, shape = _geometry(x)
    xhats, mean, var, _, count, _ = _statistics(inputs, params)
    out = {"y": np.concatenate([apply_affine(xh, inputs, shape) for xh in xhats]).astype(x.dtype)}
    if params.get("training", True) and inputs.get("running_mean") is not None:
        out["running_mean"], out["running_var"] = _running_update(inputs, params, mean, var, count)
    return out


def backward(inputs, params, dy):
    x = inputs["x"]
    axes, shape = _geometry(x)
    xhats, _, _, inv_std, count, batch = _statistics(inputs, params)
    acc = xhats[0].dtype
    dys = [d.astype(acc) for d in shards(dy, params)]
    # the backward's all-reduce: each rank's local sums, added in rank order
    sum_dy = sum(d.sum(axis=axes) for d in dys)
    sum_dy_xhat = sum((d * xh).sum(axis=axes) for d, xh in zip(dys, xhats))
    gamma = np.ones(shape, acc) if inputs.get("weight") is None else inputs["weight"].astype(acc).reshape(shape)
    dxs = []
    for d, xh in zip(dys, xhats):
        if batch:
            dxs.append(gamma * inv_std * (d - sum_dy.reshape(shape) / count
                                          - xh * (sum_dy_xhat.reshape(shape) / count)))
        else:
            dxs.append(gamma * inv_std * d)
    grads = {"x": np.concatenate(dxs).astype(x.dtype)}
    if inputs.get("weight") is not None:
        grads["weight"] = sum_dy_xhat.astype(inputs["weight"].dtype)
    if inputs.get("bias") is not None:
        grads["bias"] = sum_dy.astype(inputs["bias"].dtype)
    return grads


numpy_kernel("sync_batch_norm", backward=backward)(forward)
