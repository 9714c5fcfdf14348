"""BatchNorm (1d, 2d, any (N, C, *S)), forward and backward, for `numpy:fast`.

BatchNorm needs its statistics over the whole batch before it can normalize. Where a channel's
whole batch fits in cache (BatchNorm2d on CNN activations), groups of whole channels are gathered
into a cache-resident buffer, normalized there and written back, so x is read once (`RESIDENT_BYTES`);
otherwise one statistics pass (`channel_moments`) and one normalizing pass. Both apply the folded
form y = x * scale + shift (`folded_affine`), with constant channels made exactly beta. Running
statistics follow PyTorch's update, with the momentum and variance conventions as parameters.
"""
from __future__ import annotations

import math

import numpy as np

from normspec.impls.fast_numpy.reductions import (
    channel_dot,
    channel_moments,
    channel_sum,
    row_dots,
    row_moments,
    row_sums,
)
from normspec.impls.fast_numpy.runtime import (
    Columns,
    accumulation_dtype,
    channel_row,
    channel_tiles,
    concatenated,
    copy_into,
    load,
    map_tiles,
    new_output,
    scratch,
    scratch_like,
)
from normspec.impls.running import running_update, uses_batch_statistics

# A group of whole channels whose batch, N * S values, fits in RESIDENT_BYTES is gathered into a
# contiguous cache-resident buffer, and its statistics and normalization are done there: x is read
# from DRAM once (BatchNorm2d on CNN activations), instead of a statistics pass over the whole
# batch and a second read to normalize. The gather matters: a channel's N rows of S values lie
# C * S apart, often a power of two, so in place they all map to the same cache sets and evict one
# another before the second touch. Rows shorter than RESIDENT_MIN_ROW_BYTES (BatchNorm1d, S = 1)
# keep the two passes, since per-channel work on them would be strided columns.
RESIDENT_BYTES = 2**20
RESIDENT_MIN_ROW_BYTES = 256


def _resident_groups(n: int, c: int, s: int, acc: np.dtype, buffers: int = 1) -> list[tuple[int, int, int, int]] | None:
    """Tiles (0, N, c0, c1) of whole channels whose `buffers` gathered copies fit in RESIDENT_BYTES each
    (the forward gathers x; the backward x and dy), or None when a channel does not fit."""
    per_channel = n * s * acc.itemsize * buffers
    if per_channel > RESIDENT_BYTES * buffers or s * acc.itemsize < RESIDENT_MIN_ROW_BYTES:
        return None
    cb = max(1, RESIDENT_BYTES * buffers // per_channel)
    return [(0, n, c0, min(c, c0 + cb)) for c0 in range(0, c, cb)]


def _bn_geometry(x):
    if x.ndim < 2:
        raise ValueError(f"batch_norm expects an input of shape (N, C, *S), got shape {x.shape}")
    n, c = x.shape[:2]
    return np.ascontiguousarray(x).reshape(n, c, -1)


def _per_channel(v, dtype=None):
    """A per-channel parameter or statistic as a 1-D array (None stays None)."""
    return None if v is None else np.asarray(v, dtype=dtype).reshape(-1)


def _gather(a3, c0: int, c1: int, slot: int, acc) -> np.ndarray:
    """Channels c0..c1 of the (N, C, S) array a3, channel-major, (c1 - c0, N, S), in a scratch buffer in `acc`."""
    n, _, s = a3.shape
    t = scratch(slot, (c1 - c0) * n * s, acc).reshape(c1 - c0, n, s)
    np.copyto(t, a3[:, c0:c1].transpose(1, 0, 2), casting="unsafe")
    return t


def _resident_plan(x3, inputs, params, acc, buffers: int):
    """The groups of the cache-resident path (`_resident_groups`) when batch statistics are used and the
    channels fit, the batch size then checked; else None (the two-pass path, which checks it itself)."""
    if not uses_batch_statistics(inputs, params):
        return None
    groups = _resident_groups(*x3.shape, acc, buffers=buffers)
    if groups is not None:
        _check_batch_size(x3, inputs, params)
    return groups


def _bn_statistics(x3, inputs, params):
    """(mean, biased var, batch?) per channel in float64: the batch's or the running statistics."""
    batch = uses_batch_statistics(inputs, params)
    if batch:
        _check_batch_size(x3, inputs, params)
        mean, var = channel_moments(x3)
    else:
        mean, var = _per_channel(inputs["running_mean"], np.float64), _per_channel(inputs["running_var"], np.float64)
    return mean, var, batch


def _per_channel_pass(x3, out3, scale, shift, acc):
    """out = x * scale + shift per channel, tile by tile: x copied into the output tile (or cast into
    a buffer), then the multiply and the add in place there (`copy_into`). For BatchNorm1d (S = 1)
    scale and shift are per-column vectors, applied over k rows at once (`Columns`)."""
    n, c, s = x3.shape
    direct = out3.dtype == acc
    columns = Columns(c, scale, shift) if s == 1 else None

    def work(tile):
        n0, n1, c0, c1 = tile
        d = copy_into(out3[n0:n1, c0:c1], x3[n0:n1, c0:c1]) if direct else load(x3[n0:n1, c0:c1], 0, acc)
        if columns is not None and (c0, c1) == (0, c):
            for (dv,), (sc, sh) in columns.parts(d.reshape(n1 - n0, c)):
                np.multiply(dv, sc, out=dv)
                np.add(dv, sh, out=dv)
        else:
            np.multiply(d, scale[None, c0:c1, None], out=d)
            np.add(d, shift[None, c0:c1, None], out=d)
        if not direct:
            np.copyto(out3[n0:n1, c0:c1], d, casting="unsafe")

    map_tiles(work, channel_tiles(n, c, s, acc), x3.nbytes, row=channel_row(c, s))


def folded_affine(mean, var, weight, bias, eps, batch: bool):
    """(scale, shift) with y = x * scale + shift, PyTorch's CPU form of BatchNorm's affine map.

    scale = gamma / sqrt(var + eps), shift = beta - mean * scale, formed in float64. Its rounding
    error, u (|x scale| + |mean scale| + |beta|), is within the error model's |mean|/s term. Batch
    channels whose variance is exactly 0 (all values equal: `channel_moments` gives their exact
    mean) get scale 0 and shift beta, so they come out exactly beta, as x - mean = 0 would give
    (the folded form alone does not: pytorch#5410). Called once per channel group, so it keeps
    to a few small ufuncs.
    """
    scale = np.sqrt(var + eps)
    beta = _per_channel(bias, np.float64)
    np.divide(1.0 if weight is None else _per_channel(weight, np.float64), scale, out=scale)
    shift = np.multiply(mean, scale)
    if beta is None:
        np.negative(shift, out=shift)
    else:
        np.subtract(beta, shift, out=shift)
    if batch:
        constant = np.flatnonzero(var == 0)
        if constant.size:
            scale[constant] = 0.0
            shift[constant] = 0.0 if beta is None else beta[constant]
    return scale, shift


def _check_batch_size(x3, inputs, params) -> None:
    if params.get("training", True) and x3.shape[0] * x3.shape[2] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(inputs['x'].shape)}")


# Groups of one channel (BatchNorm2d with N * S above half of RESIDENT_BYTES) take the channel's
# moments and folded affine map in Python floats: the same float64 operations in the same order as
# `row_moments` and `folded_affine` (so bitwise the same result), without the dozen small NumPy
# calls per group that hold the GIL the other tile threads wait for.
SCALAR_EPILOGUE = True


def _one_channel_affine(row: np.ndarray, weight, bias, c: int, eps):
    """(mean, var, scale, shift) of the one channel in `row` (1, N * S), as float64 arrays of one value
    and Python floats, when its one-pass moments pass the var >= mean^2 guard; else None."""
    k = row.shape[1]
    tsum = float(row_sums(row)[0])
    mean = tsum / k
    sum_mean = tsum * mean
    m2 = float(np.dot(row[0], row[0])) - sum_mean  # as row_dots does for one row (bitwise)
    if not m2 >= sum_mean:  # the guard of `one_pass_is_accurate` (NaN fails it too)
        return None
    var = m2 / k
    scale = (1.0 if weight is None else float(weight[c])) / math.sqrt(var + eps)
    shift = -(mean * scale) if bias is None else float(bias[c]) - mean * scale
    return np.array((mean,)), np.array((var,)), scale, shift


def _resident_batch_norm(x3, y3, groups, weight, bias, eps, acc):
    """Batch statistics and normalization per group of whole channels, each group read from DRAM once.

    The group is gathered channel-major, (channels, N, S), so each channel is one contiguous row of
    N * S values: its moments are two BLAS calls and its affine map two scalar-operand ufuncs, in
    place. The result is copied out row by row: memcpy's string stores write y without first
    reading it into cache, which a ufunc writing y directly would (read-for-ownership).
    """
    n, c, s = x3.shape
    count = n * s

    def work(tile):
        _, _, c0, c1 = tile
        t = _gather(x3, c0, c1, 5, acc)  # the only read of x
        rows = t.reshape(c1 - c0, count)
        single = _one_channel_affine(rows, weight, bias, c0, eps) if c1 - c0 == 1 and SCALAR_EPILOGUE else None
        if single is not None:
            mean, var, scale, shift = single
            np.multiply(rows, acc.type(scale), out=rows)
            np.add(rows, acc.type(shift), out=rows)
        else:
            mean, m2, one_pass = row_moments(rows)
            var = np.divide(m2, count, out=m2)
            # The constant-channel rule is needed only where the two-pass branch ran: a one-pass var of
            # exactly 0 is an all-zero channel (sum x^2 = 0), whose folded map already gives beta.
            scale, shift = folded_affine(mean, var, None if weight is None else weight[c0:c1],
                                         None if bias is None else bias[c0:c1], eps, not one_pass)
            np.multiply(rows, scale.astype(acc)[:, None], out=rows)
            np.add(rows, shift.astype(acc)[:, None], out=rows)
        np.copyto(y3[:, c0:c1].transpose(1, 0, 2), t, casting="unsafe")  # the only write of y
        return mean, var

    return concatenated(map_tiles(work, groups, x3.nbytes))


def batch_norm_forward(inputs, params):
    """BatchNorm (Ioffe & Szegedy 2015, Alg. 1): statistics, then the folded affine y = x scale + shift.

    Whole channels that fit in cache are done group by group in one read of x (`RESIDENT_BYTES`);
    otherwise a statistics pass over the whole batch, then a normalizing pass.
    """
    x = inputs["x"]
    x3 = _bn_geometry(x)
    acc = accumulation_dtype(x.dtype)
    eps = params.get("eps", 1e-5)
    y = new_output(x3.shape, x.dtype)
    groups = _resident_plan(x3, inputs, params, acc, buffers=1)
    if groups is not None:
        mean, var = _resident_batch_norm(x3, y, groups, _per_channel(inputs.get("weight")),
                                         _per_channel(inputs.get("bias")), eps, acc)
    else:
        mean, var, batch = _bn_statistics(x3, inputs, params)
        scale, shift = folded_affine(mean, var, inputs.get("weight"), inputs.get("bias"), eps, batch)
        _per_channel_pass(x3, y, scale.astype(acc), shift.astype(acc), acc)
    out = {"y": y.reshape(x.shape)}
    if params.get("training", True) and inputs.get("running_mean") is not None:
        count = x3.shape[0] * x3.shape[2]
        out["running_mean"], out["running_var"] = _running_update(inputs, params, mean, var, count)
    return out


def _running_update(inputs, params, mean, var, count):
    """PyTorch's running-statistics update, with the momentum and variance conventions as params
    (`normspec.impls.running`, shared with the other backends), in the buffers' dtype."""
    return running_update(inputs["running_mean"], inputs["running_var"], mean, var, count, params,
                          lambda new, like: np.asarray(new, dtype=like.dtype))


def _resident_batch_norm_backward(x3, dy3, dx3, groups, gamma, eps, acc):
    """The batch-statistics backward per group of whole channels: x and dy gathered once, dx written once.

    Per channel, from the gathered x: its moments and xhat in place; from the gathered dy: sum dy
    and sum dy xhat (two BLAS calls); then dx = gamma inv_std (dy - mean dy - xhat mean(dy xhat)).
    """
    n, c, s = x3.shape
    count = n * s

    def work(tile):
        _, _, c0, c1 = tile
        xhat = _gather(x3, c0, c1, 5, acc).reshape(c1 - c0, count)
        mean, m2, _ = row_moments(xhat)
        inv_std = 1.0 / np.sqrt(m2 / count + eps)
        np.subtract(xhat, mean.astype(acc)[:, None], out=xhat)
        np.multiply(xhat, inv_std.astype(acc)[:, None], out=xhat)
        g = _gather(dy3, c0, c1, 6, acc)
        rows = g.reshape(c1 - c0, count)
        sum_dy = row_sums(rows).astype(np.float64)
        sum_dy_xhat = row_dots(rows, xhat).astype(np.float64)
        np.multiply(xhat, (sum_dy_xhat / count).astype(acc)[:, None], out=xhat)
        np.subtract(rows, xhat, out=rows)
        np.subtract(rows, (sum_dy / count).astype(acc)[:, None], out=rows)
        np.multiply(g, (gamma[c0:c1] * inv_std).astype(acc)[:, None, None],
                    out=dx3[:, c0:c1].transpose(1, 0, 2), casting="unsafe")
        return sum_dy, sum_dy_xhat

    return concatenated(map_tiles(work, groups, x3.nbytes))


def batch_norm_backward(inputs, params, dy):
    """Batch statistics: dx = gamma inv_std (dy - mean dy - xhat mean(dy xhat)); eval: gamma inv_std dy.

    Whole channels whose x and dy fit in cache together are done group by group, reading x and dy
    once (`_resident_batch_norm_backward`); otherwise a statistics pass, a pass for the two sums
    and a pass for dx.
    """
    x = inputs["x"]
    x3 = _bn_geometry(x)
    dy3 = np.ascontiguousarray(dy).reshape(x3.shape)
    acc = accumulation_dtype(x.dtype)
    n, c, s = x3.shape
    weight = inputs.get("weight")
    gamma = np.ones(c) if weight is None else _per_channel(weight, np.float64)
    groups = _resident_plan(x3, inputs, params, acc, buffers=2)
    if groups is not None:
        dx = new_output(x3.shape, x.dtype)
        sum_dy, sum_dy_xhat = _resident_batch_norm_backward(x3, dy3, dx, groups, gamma, params.get("eps", 1e-5), acc)
        return {"x": dx.reshape(x.shape), "weight": sum_dy_xhat, "bias": sum_dy}
    mean, var, batch = _bn_statistics(x3, inputs, params)
    inv_std = 1.0 / np.sqrt(var + params.get("eps", 1e-5))
    mean_a, inv_a = mean.astype(acc), inv_std.astype(acc)
    tiles = channel_tiles(n, c, s, acc)

    def xhat_of(n0, n1, c0, c1):
        t = load(x3[n0:n1, c0:c1], 0, acc)
        xhat = scratch_like(2, t)
        np.subtract(t, mean_a[None, c0:c1, None], out=xhat)
        np.multiply(xhat, inv_a[None, c0:c1, None], out=xhat)
        return xhat

    def sums(tile):
        g = load(dy3[tile[0]:tile[1], tile[2]:tile[3]], 1, acc)
        return channel_sum(g).astype(np.float64), channel_dot(g, xhat_of(*tile), 3).astype(np.float64)

    sum_dy, sum_dy_xhat = np.zeros(c), np.zeros(c)
    for (n0, n1, c0, c1), (a, b) in zip(tiles, map_tiles(sums, tiles, x3.nbytes, row=channel_row(c, s))):
        sum_dy[c0:c1] += a
        sum_dy_xhat[c0:c1] += b
    count = n * s
    dx = new_output(x3.shape, x.dtype)
    k = (gamma * inv_std).astype(acc)
    mg, mgx = (sum_dy / count).astype(acc), (sum_dy_xhat / count).astype(acc)

    def grad(tile):
        n0, n1, c0, c1 = tile
        g = load(dy3[n0:n1, c0:c1], 1, acc)
        w = scratch_like(3, g)
        if batch:
            np.multiply(xhat_of(*tile), mgx[None, c0:c1, None], out=w)
            np.subtract(g, w, out=w)
            np.subtract(w, mg[None, c0:c1, None], out=w)
        else:
            np.copyto(w, g)
        np.multiply(w, k[None, c0:c1, None], out=dx[n0:n1, c0:c1], casting="unsafe")

    map_tiles(grad, tiles, x3.nbytes, row=channel_row(c, s))
    return {"x": dx.reshape(x.shape), "weight": sum_dy_xhat, "bias": sum_dy}
