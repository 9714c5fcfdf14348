"""The `numpy:fast` reductions: row and channel sums, dot products and moments, through BLAS.

Row sums are matrix-vector products with a ones vector (`row_sums`, `gemv` = np.dot, which
releases the GIL), sums of squares are per-row dot products (`row_dots`), per-channel versions of
both work on (N, C, S) tiles (`channel_sum`, `channel_dot`). Moments are one-pass where that is as
accurate as two-pass (var >= mean^2, `one_pass_is_accurate`) and two-pass otherwise; tile moments
are merged with Chan, Golub & LeVeque's pairwise update (1983, `channel_moments`). A set whose
values are all equal gets its exact mean and zero M2: it is a candidate when its M2 is nearly zero
(`constant_row_candidates`) and is confirmed with min == max.
"""
from __future__ import annotations

import functools

import numpy as np

from normspec.impls.fast_numpy.runtime import (
    accumulation_dtype,
    channel_row,
    channel_tiles,
    load,
    map_tiles,
    ones_vector,
    scratch_like,
)

# A set is a candidate for "all values equal" when its variance is below (CONSTANT_SLACK u |mean|)^2;
# candidates are confirmed exactly with min == max. Any real spread is far above this.
CONSTANT_SLACK = 64.0


def _unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


_UNIT_ROUNDOFF = {np.dtype(t).str: _unit_roundoff(t) for t in (np.float16, np.float32, np.float64)}


def constant_row_candidates(mean: np.ndarray, sq: np.ndarray, count: int) -> np.ndarray:
    """Rows that may hold one value repeated: sq <= c mean^2, c = count (CONSTANT_SLACK u)^2.

    Every mean^2 is at most sum(mean^2), so when the smallest sq exceeds c sum(mean^2) there are
    none: two small calls settle the usual case (NaN or overflow in either falls through to the
    row-by-row test).
    """
    u = _UNIT_ROUNDOFF.get(sq.dtype.str) or _unit_roundoff(sq.dtype)
    c = count * (CONSTANT_SLACK * u) ** 2
    if np.minimum.reduce(sq) > c * float(np.dot(mean, mean)):
        return _NO_ROWS
    threshold = np.multiply(mean, mean)
    threshold *= c
    return np.flatnonzero(sq <= threshold)


_NO_ROWS = np.empty(0, dtype=np.intp)


def exact_constant_rows(tile: np.ndarray, mean: np.ndarray, sq: np.ndarray, centred: np.ndarray, count: int) -> None:
    """Rows of `tile` whose values are all equal get mean = that value, zero centred values and sq."""
    for r in constant_row_candidates(mean, sq, count):
        row = tile[r]
        lo = row.min()
        if lo == row.max():
            mean[r] = lo
            sq[r] = 0
            centred[r] = 0


# NumPy's generalized ufuncs (np.matmul, np.vecdot) release the GIL only when they produce more
# than 500 values (the threshold of its loops; measured with numpy 2.4, cf. numpy/numpy#11821):
# over a tile of 256 rows they hold it while BLAS runs, so the other tile threads cannot even
# start their next call. np.dot calls the same BLAS gemv (bitwise the same result) with the GIL
# released, so matrix-vector products go through it, and row dot products through `row_dots`.
# Measured on this project's 2-vCPU host (64 MB float32 forward, 2 threads, paired runs, lower
# quartile): LayerNorm 14.4 -> 12.5 ms and BatchNorm2d 13.7 -> 11.0 ms from np.dot alone.
gemv = np.dot
GUFUNC_GIL_FREE_OUTPUTS = 501
ROW_DOT_MIN_PIECE = 64


def row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row dot products of two C-contiguous (rows, k) arrays, in their dtype (BLAS), GIL released.

    One row is a 1-D np.dot; up to 500 rows are split into p equal pieces each, so that np.vecdot
    makes more than 500 (of at least ROW_DOT_MIN_PIECE values) and the p partial sums of a row are
    added. Where no such split exists it is plain np.vecdot (correct, holding the GIL)."""
    rows, k = a.shape
    if rows == 1:
        return np.dot(a[0], b[0]).reshape(1)
    p = _row_pieces(rows, k) if a.flags.c_contiguous and b.flags.c_contiguous else 1
    if p == 1:
        return np.vecdot(a, b)
    shape = (rows, p, k // p)
    sums = np.vecdot(a.reshape(shape), b.reshape(shape))
    # (np.add.reduce over an axis of 2 costs six times a plain add of the two columns)
    return np.add(sums[:, 0], sums[:, 1]) if p == 2 else gemv(sums, ones_vector(p, sums.dtype))


@functools.lru_cache(maxsize=256)
def _row_pieces(rows: int, k: int) -> int:
    if rows >= GUFUNC_GIL_FREE_OUTPUTS:
        return 1
    least = -(-GUFUNC_GIL_FREE_OUTPUTS // rows)
    return next((p for p in range(least, k // ROW_DOT_MIN_PIECE + 1) if k % p == 0), 1)


# BLAS sums with a ones vector stream the ones vector too: over rows longer than this, each row is
# summed in chunks of a divisor of its length (a short ones vector that stays in L1), then the
# chunk sums are summed per row.
SUM_CHUNK = 4096


def row_sums(t: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Sums of the rows of a contiguous (rows, k) array times `scale`, in its dtype (BLAS
    matrix-vector products; scale=1/k gives the means without a separate division)."""
    rows, k = t.shape
    if k > 2 * SUM_CHUNK:
        chunk = next((d for d in range(SUM_CHUNK, SUM_CHUNK // 4, -1) if k % d == 0), None)
        if chunk is not None:
            parts = gemv(t.reshape(-1, chunk), ones_vector(chunk, t.dtype, scale)).reshape(rows, -1)
            return gemv(parts, ones_vector(parts.shape[1], t.dtype))
    return gemv(t, ones_vector(k, t.dtype, scale))


def add_column_sums(total: np.ndarray, w: np.ndarray) -> None:
    """total (float64, length m) += the column sums of the (rows, m) tile w."""
    np.add(total, w[0] if w.shape[0] == 1 else gemv(ones_vector(w.shape[0], w.dtype), w), out=total)


def channel_sum(t: np.ndarray) -> np.ndarray:
    """Sum of a (na, nc, ns) tile over axes 0 and 2, by matrix-vector products with ones."""
    na, nc, ns = t.shape
    if na == 1:
        return gemv(t[0], ones_vector(ns, t.dtype)) if ns > 1 else t[0, :, 0].copy()
    per_col = gemv(ones_vector(na, t.dtype), t.reshape(na, nc * ns))
    return gemv(per_col.reshape(nc, ns), ones_vector(ns, t.dtype)) if ns > 1 else per_col


def channel_dot(a: np.ndarray, b: np.ndarray, slot: int) -> np.ndarray:
    """Per-channel sum of a * b for (na, nc, ns) tiles (row dot products, then a sum over na)."""
    if a.shape[2] == 1:  # (na, nc, 1): BatchNorm1d on (N, C); column sums of products, no temporary
        return np.einsum("ij,ij->j", a[:, :, 0], b[:, :, 0])
    na, nc, ns = a.shape
    if a.flags.c_contiguous and b.flags.c_contiguous:  # one (na nc, ns) row_dots, the GIL released
        dots = row_dots(a.reshape(na * nc, ns), b.reshape(na * nc, ns)).reshape(na, nc)
    else:
        dots = np.vecdot(a, b)  # (na, nc)
    return dots[0] if a.shape[0] == 1 else gemv(ones_vector(a.shape[0], dots.dtype), dots)


def one_pass_is_accurate(m2: np.ndarray, mean: np.ndarray, count: int, count_mean2: np.ndarray | None = None) -> bool:
    """True when every channel has var >= mean^2, where one-pass M2 loses at most a factor 2 in accuracy.

    `count_mean2`, count mean^2, may be passed where it is already formed. (All-zero channels pass
    with M2 = 0 exactly; constant nonzero ones fail and go two-pass.)
    """
    return bool((m2 >= (count * mean * mean if count_mean2 is None else count_mean2)).all())


def tile_moments(t: np.ndarray):
    """(mean, M2) per channel of a (na, nc, ns) tile in the accumulation dtype, as float64 arrays.

    The tile's per-channel sum and sum of squares are BLAS products over the tile as it streams in
    (no temporary is written). That one-pass M2 = sum x^2 - (sum x)^2 / k has relative error about
    u g (1 + mean^2 / var) (Chan, Golub & LeVeque 1983), so it is kept only where var >= mean^2 in
    every channel of the tile, i.e. within 2 u g, as good as two-pass; any other tile
    (ill-conditioned or constant channels) is redone two-pass in cache.
    """
    k = t.shape[0] * t.shape[2]
    tsum = channel_sum(t).astype(np.float64)
    tmean = tsum / k
    tm2 = channel_dot(t, t, 2).astype(np.float64) - tsum * tmean
    if one_pass_is_accurate(tm2, tmean, k):
        return tmean, tm2
    tmean = channel_sum(t) / k
    d = scratch_like(1, t)
    np.subtract(t, tmean[None, :, None], out=d)
    return tmean.astype(np.float64), channel_dot(d, d, 2).astype(np.float64)


def exact_constant_channels(values: np.ndarray, mean: np.ndarray, m2: np.ndarray, count, c0: int = 0) -> None:
    """Channels c0 + i of `values` (N, C, S) whose values are all equal get mean = that value, M2 = 0."""
    u = _unit_roundoff(accumulation_dtype(values.dtype))
    for i in np.flatnonzero(m2 <= count * (CONSTANT_SLACK * u * np.abs(mean)) ** 2):
        channel = values[:, c0 + i, :]
        lo = channel.min()
        if lo == channel.max():
            mean[i], m2[i] = float(lo), 0.0


def channel_moments(x3: np.ndarray):
    """(mean, biased variance) per channel of a contiguous (N, C, S) array, as float64 arrays.

    Tile moments (`tile_moments`) are merged in tile order with Chan et al.'s update
    M2 = M2_a + M2_b + delta^2 n_a n_b / n. Channels whose values are all equal get their exact mean.
    """
    n, c, s = x3.shape
    acc = accumulation_dtype(x3.dtype)
    tiles = channel_tiles(n, c, s, acc)
    partials = map_tiles(lambda t: tile_moments(load(x3[t[0]:t[1], t[2]:t[3]], 0, acc)), tiles, x3.nbytes,
                          row=channel_row(c, s))
    count, mean, m2 = np.zeros(c), np.zeros(c), np.zeros(c)
    for (n0, n1, c0, c1), (tmean, tm2) in zip(tiles, partials):
        k = (n1 - n0) * s
        na = count[c0:c1]
        total = na + k
        delta = tmean - mean[c0:c1]
        mean[c0:c1] += delta * (k / total)
        m2[c0:c1] += tm2 + delta * delta * (na * k / total)
        count[c0:c1] = total
    exact_constant_channels(x3, mean, m2, count)
    return mean, m2 / count


def row_moments(t: np.ndarray):
    """(mean, M2, one_pass) per row of a contiguous (rows, k) array, mean and M2 as float64 arrays.

    Sums are matrix-vector products with ones and sums of squares row dot products, both over the
    array as it streams in; the one-pass M2 = sum x^2 - sum x mean is kept only under the same
    var >= mean^2 guard as `tile_moments` (`one_pass_is_accurate`, given the product sum x mean
    already formed), else it is redone two-pass and `one_pass` is False. Rows whose values are all
    equal fail that guard (unless all zero, which one pass gets exactly), so the two-pass branch
    gives them their exact mean and M2 = 0. The few small calls matter: they run once per group
    of channels, holding the GIL the other tile threads wait for.
    """
    k = t.shape[1]
    tsum = row_sums(t).astype(np.float64)
    mean = tsum / k
    m2 = row_dots(t, t).astype(np.float64)
    sum_mean = np.multiply(tsum, mean, out=tsum)  # (sum x)^2 / k = k mean^2
    m2 -= sum_mean
    if one_pass_is_accurate(m2, mean, k, sum_mean):
        return mean, m2, True
    d = scratch_like(1, t)
    np.subtract(t, mean.astype(t.dtype)[:, None], out=d)
    m2 = row_dots(d, d).astype(np.float64)
    exact_constant_channels(t[None], mean, m2, k)
    return mean, m2, False
