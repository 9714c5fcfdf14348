"""Normalization kernels in NumPy written for the memory system (the `numpy:fast` backend).

Normalizations are memory-bound: a LayerNorm reads x once and writes y once, and everything in
between is arithmetic on data that could sit in cache. The plain NumPy kernels make a full-size
temporary per ufunc (x.astype, x - mean, square, * inv_std, * gamma, + beta), so each step
streams the whole tensor through DRAM again. These kernels instead walk the input in *tiles* of
about `TILE_BYTES` (1 MiB, inside L2) and do every step of a tile on cache-
resident buffers with `out=` ufuncs; the row sums are BLAS matrix-vector products with a ones
vector (np.dot), which run near cache bandwidth. Per tile:

    Y = T                 memcpy into the output tile (the only DRAM read and write)
    s = Y @ (1/m)         row means (BLAS matrix-vector product, in cache from here on)
    Y -= s                centred values                          (two-pass variance)
    q = sum_rows(Y * Y)   BLAS dot per row (`row_dots`)
    Y *= 1/sqrt(q/m+eps); Y *= gamma; Y += beta

so LayerNorm and RMSNorm forward touch DRAM as often as a copy does. BatchNorm needs its
statistics over the whole batch before it can normalize. Where a channel's whole batch fits in
cache (BatchNorm2d on CNN activations), groups of whole channels are gathered into a cache-resident
buffer, normalized there and written back, so x is read once; otherwise it makes one statistics
pass (tile moments merged with Chan, Golub & LeVeque's pairwise update, 1983) and one normalizing
pass. Both apply the folded form y = x * scale + shift (two ufuncs per tile instead of four).

Numerics, as the property suite demands: statistics of float16 inputs are accumulated in
float32 (tiles are cast into float32 buffers), the variance is a two-pass (centred) sum, and a
reduction set whose values are all equal gets its exact mean (the value itself: it is detected
by a nearly-zero variance and confirmed with min == max), so x - mean is exactly 0 and y is
exactly beta. Inputs are never written; non-contiguous inputs are made contiguous first.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

TILE_BYTES = 1024 * 1024
# Tiles are independent, so they are spread over the cores (ufuncs and BLAS calls release the
# GIL), each thread taking a contiguous run of tiles. Per-tile partial results are combined in
# tile order, so results are bitwise deterministic whatever the thread count. One thread per
# usable CPU by default; NORMSPEC_FAST_THREADS=n overrides (1: serial).
THREADS = max(1, int(os.environ.get("NORMSPEC_FAST_THREADS", "0")) or len(os.sched_getaffinity(0)))
PARALLEL_MIN_BYTES = 4 * 2**20
_executor: ThreadPoolExecutor | None = None
_local = threading.local()


def _map_tiles(work, tiles, nbytes: int, row: int | None = None) -> list:
    """[work(tile) for tile in tiles], on THREADS threads when the input is large enough.

    Threads take the next tile as they finish one (the calling thread is one of them), so a CPU
    the hypervisor lends elsewhere for a while delays only the tile it holds; a fixed split would
    leave the other threads idle at the end. Results keep tile order. `row` is the length of the
    tiles' contiguous rows: the ufunc buffer is capped at it while the tiles run (`row_buffering`).
    """
    global _executor
    tiles = list(tiles)
    if THREADS == 1 or len(tiles) < 2 or nbytes < PARALLEL_MIN_BYTES:
        with row_buffering(row):
            return [work(t) for t in tiles]
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=THREADS - 1, thread_name_prefix="normspec-fast")
    results: list = [None] * len(tiles)
    order = iter(range(len(tiles)))  # shared; next() on it is atomic under the GIL

    def run():
        with row_buffering(row):
            for i in order:
                results[i] = work(tiles[i])

    helpers = [_executor.submit(run) for _ in range(min(THREADS, len(tiles)) - 1)]
    try:
        run()
    finally:
        for done in helpers:
            done.result()
    return results


# NumPy's buffered ufunc iterator grows its inner loop across rows shorter than the ufunc buffer
# (8192 elements by default) and, to do so, copies broadcast operands (a per-row scalar, a
# per-column vector) into the buffer element by element: on 1024-wide rows, `t * r[:, None]` and
# `t * gamma` run at a third of the speed of `t * 2.0`. With the buffer no longer than a row, the
# iterator keeps one unbuffered inner loop per row and the broadcasting ufuncs run at nearly the
# speed of scalar ones (measured by docs/speed/floors.py). The buffer size is NumPy's per-thread
# error-state setting, restored on exit. Rows shorter than ROW_BUFFER_MIN keep the buffered
# iterator: there one unbuffered loop per row costs more than the copies it saves.
ROW_BUFFER_MIN = 256


@contextlib.contextmanager
def row_buffering(row: int | None):
    if row is None or not ROW_BUFFER_MIN <= row < np.getbufsize():
        yield
        return
    with np.errstate():
        np.setbufsize(int(row) // 16 * 16)
        yield


def _scratch(slot: int, size: int, dtype: np.dtype) -> np.ndarray:
    """A per-thread reusable 1-D buffer of at least `size` elements (stays warm in this core's cache)."""
    cache = getattr(_local, "buffers", None)
    if cache is None:
        cache = _local.buffers = {}
    key = (slot, np.dtype(dtype).str)
    buf = cache.get(key)
    if buf is None or buf.size < size:
        buf = cache[key] = np.empty(size, dtype=dtype)
    return buf[:size]


# Output buffers: a freshly mmapped 64 MB array costs page faults on first touch that cost about
# half a copy. Like PyTorch's caching allocators, large outputs are carved from a small pool of
# buffers that are reused once nothing but the pool refers to them (the caller dropped the result).
POOL_MIN_BYTES = 2**20
POOL_SIZE = 8
_pool: list[np.ndarray] = []
_pool_lock = threading.Lock()


def new_output(shape, dtype) -> np.ndarray:
    """An uninitialized array, from the pool of free large buffers when one fits exactly."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < POOL_MIN_BYTES:
        return np.empty(shape, dtype=dtype)
    with _pool_lock:
        for buf in _pool:
            # references: the pool's list, the loop variable and getrefcount's argument
            if buf.nbytes == nbytes and sys.getrefcount(buf) == 3:
                return buf.view(dtype).reshape(shape)
        buf = np.empty(nbytes, dtype=np.uint8)
        if len(_pool) >= POOL_SIZE:
            for i, old in enumerate(_pool):
                if sys.getrefcount(old) == 3:
                    del _pool[i]
                    break
        if len(_pool) < POOL_SIZE:
            _pool.append(buf)
        return buf.view(dtype).reshape(shape)
# A set is a candidate for "all values equal" when its variance is below (CONSTANT_SLACK u |mean|)^2;
# candidates are confirmed exactly with min == max. Any real spread is far above this.
CONSTANT_SLACK = 64.0


def accumulation_dtype(dtype) -> np.dtype:
    """float32 for half precision, else the input dtype (float32 stays float32)."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)


_ONES: dict[tuple[int, str, float], np.ndarray] = {}


def _ones(n: int, dtype: np.dtype, value: float = 1.0) -> np.ndarray:
    """A read-only vector of n copies of `value` (1 by default) for BLAS sums, made once per key."""
    key = (n, np.dtype(dtype).str, value)
    ones = _ONES.get(key)
    if ones is None:
        ones = np.full(n, value, dtype=dtype)
        ones.flags.writeable = False
        if len(_ONES) < 64:
            _ONES[key] = ones
    return ones


def _check_suffix(x: np.ndarray, normalized_shape) -> int:
    shape = tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"normalized_shape {shape} must be a non-empty suffix of the input shape {x.shape}")
    return math.prod(shape)


def _load(tile: np.ndarray, slot: int, acc: np.dtype) -> np.ndarray:
    """The tile in the accumulation dtype: itself when it already is, else cast into a scratch buffer."""
    if tile.dtype == acc:
        return tile
    view = _scratch(slot, tile.size, acc).reshape(tile.shape)
    np.copyto(view, tile, casting="unsafe")
    return view


def _work(slot: int, like: np.ndarray) -> np.ndarray:
    return _scratch(slot, like.size, like.dtype).reshape(like.shape)


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


def _exact_constant_rows(tile: np.ndarray, mean: np.ndarray, sq: np.ndarray, centred: np.ndarray, count: int) -> None:
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
    return np.add(sums[:, 0], sums[:, 1]) if p == 2 else gemv(sums, _ones(p, sums.dtype))


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
            parts = gemv(t.reshape(-1, chunk), _ones(chunk, t.dtype, scale)).reshape(rows, -1)
            return gemv(parts, _ones(parts.shape[1], t.dtype))
    return gemv(t, _ones(k, t.dtype, scale))


# ------------------------------------------------------------------ row-wise: LayerNorm, RMSNorm

def _copy_into(out: np.ndarray, tile: np.ndarray) -> np.ndarray:
    """out[...] = tile, returned: the first touch of an output tile, before it is worked on in place.

    A ufunc whose output misses cache first reads each line of it from DRAM (read-for-ownership);
    memcpy's string stores (np.copyto of a contiguous tile) write y for less, and leave the tile
    in cache for the in-place steps that follow. Measured on this project's 2-vCPU host (64 MB,
    float32): LayerNorm forward 7-13% and RMSNorm 15-19% faster than with the first ufunc writing y.
    """
    np.copyto(out, tile)
    return out


def _row_tiles(rows: int, m: int, acc: np.dtype) -> list[tuple[int, int]]:
    per = max(1, TILE_BYTES // (m * acc.itemsize))
    return [(r0, min(rows, r0 + per)) for r0 in range(0, rows, per)]


# Parameter gradients are column sums over all rows: each *block* of consecutive tiles (a fixed
# BLOCK_BYTES of input, whatever the thread count) accumulates its own float64 sums in place,
# and blocks are added in order, so the result is bitwise deterministic.
BLOCK_BYTES = 8 * 2**20


def _row_blocks(rows: int, m: int, acc: np.dtype) -> list[list[tuple[int, int]]]:
    tiles = _row_tiles(rows, m, acc)
    per = max(1, BLOCK_BYTES // max(TILE_BYTES, m * acc.itemsize))
    return [tiles[i:i + per] for i in range(0, len(tiles), per)]


def _add_column_sums(total: np.ndarray, w: np.ndarray) -> None:
    """total (float64, length m) += the column sums of the (rows, m) tile w."""
    np.add(total, w[0] if w.shape[0] == 1 else gemv(_ones(w.shape[0], w.dtype), w), out=total)


def row_stats_tile(t: np.ndarray, centred: np.ndarray):
    """(mean, inv_std numerator: sum of squared deviations) per row of tile `t`; t - mean left in
    `centred`, with constant rows made exact tile by tile (the backward's use: it needs them centred)."""
    m = t.shape[1]
    mean = row_sums(t, 1.0 / m)
    np.subtract(t, mean[:, None], out=centred)
    sq = row_dots(centred, centred)
    _exact_constant_rows(t, mean, sq, centred, m)
    return mean, sq


def _inv_std(sq: np.ndarray, m: int, eps) -> np.ndarray:
    """1 / sqrt(sq / m + eps) as sqrt(m) / sqrt(sq + m eps), a new array (sq is kept): three small ufuncs."""
    inv = np.add(sq, m * eps)
    np.sqrt(inv, out=inv)
    return np.divide(inv.dtype.type(math.sqrt(m)), inv, out=inv)


# NumPy's iterator pays about 0.1 us per row it steps over, which on 1024-wide rows makes a
# per-column ufunc (t * gamma) 40% dearer than a scalar one. Per-column vectors repeated k times
# let such ufuncs run over k consecutive rows as one row of k * m values.
LONG_ROW = 8192


class _Columns:
    """Per-column vectors (gamma, beta; None for absent) of rows of length m, with their k-fold
    repeats for views of k rows as one."""

    def __init__(self, m: int, *vectors):
        self.m, self.k = m, max(1, LONG_ROW // m)
        self.vectors = vectors
        self.repeated = tuple(None if v is None or self.k == 1 else np.tile(v, self.k) for v in vectors)

    def parts(self, *tiles):
        """[(views of `tiles`, vectors)]: their rows in multiples of k as (rows / k, k m), then the rest."""
        rows = tiles[0].shape[0]
        k = self.k
        if k > 1 and rows % k == 0:  # the usual tile: one view, made with as little Python as possible
            shape = (rows // k, k * self.m)
            return [([t.reshape(shape) for t in tiles], self.repeated)]
        head = rows - rows % k if k > 1 else 0
        out = []
        if head:
            out.append(([t[:head].reshape(head // k, k * self.m) for t in tiles], self.repeated))
        if head < rows:
            out.append(([t[head:] for t in tiles], self.vectors))
        return out


def layer_norm_forward(x, weight, bias, normalized_shape, eps):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta per row (Ba et al. 2016, eq. 4), one DRAM pass.

    Each tile is copied into its output tile (or cast into a buffer) and normalized in place there
    with a handful of calls; the Python work per tile holds the GIL the other tile threads wait for,
    so the constant-row rule is applied once per call, to the rows all tiles flag (`_constant_rows_to_beta`).
    """
    m = _check_suffix(x, normalized_shape)
    acc = accumulation_dtype(x.dtype)
    x2 = np.ascontiguousarray(x).reshape(-1, m)
    y = new_output(x2.shape, x.dtype)
    gamma = None if weight is None else np.ascontiguousarray(weight, dtype=acc).reshape(m)
    beta = None if bias is None else np.ascontiguousarray(bias, dtype=acc).reshape(m)
    eps = acc.type(eps)
    columns = _Columns(m, gamma, beta)
    direct = y.dtype == acc
    to_mean = _ones(m, acc, 1.0 / m)

    def work(rows):
        src, out = x2[rows[0]:rows[1]], y[rows[0]:rows[1]]
        d = _copy_into(out, src) if direct else _load(src, 0, acc)  # a private tile in the accumulation dtype
        mean = gemv(d, to_mean)
        np.subtract(d, mean[:, None], out=d)
        sq = row_dots(d, d)
        np.multiply(d, _inv_std(sq, m, eps)[:, None], out=d)
        _affine_rows_out(d, columns, out)
        return mean, sq

    parts = _map_tiles(work, _row_tiles(x2.shape[0], m, acc), x2.nbytes, row=m)
    _constant_rows_to_beta(x2, y, parts, beta, m)
    return y.reshape(x.shape)


def _constant_rows_to_beta(x2, y, parts, beta, m) -> None:
    """Rows of x whose values are all equal get y = beta exactly, as x - mean = 0 gives (the tiles'
    mean is a rounded sum, so their centred values are rounding noise scaled by 1/sqrt(eps))."""
    if not parts:  # no rows at all
        return
    if len(parts) == 1:
        mean, sq = parts[0]
    else:
        mean, sq = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    for r in constant_row_candidates(mean, sq, m):
        row = x2[r]
        if row.min() == row.max():
            y[r] = 0 if beta is None else beta


def _affine_rows_out(d, columns: _Columns, out):
    """out = d * gamma + beta (either optional, as `columns` holds them), d modified in place,
    written once into `out`."""
    separate = d is not out
    for (dv, ov), (gamma, beta) in columns.parts(d, out):
        if gamma is not None:
            np.multiply(dv, gamma, out=dv)
        if beta is not None:
            np.add(dv, beta, out=ov, casting="unsafe")
        elif separate:
            np.copyto(ov, dv, casting="unsafe")


def layer_norm_backward(x, weight, dy, normalized_shape, eps):
    """dx = inv_std (g - mean g - xhat mean(g xhat)), g = gamma dy; dgamma = sum dy xhat; dbeta = sum dy."""
    m = _check_suffix(x, normalized_shape)
    acc = accumulation_dtype(x.dtype)
    x2 = np.ascontiguousarray(x).reshape(-1, m)
    dy2 = np.ascontiguousarray(dy).reshape(-1, m)
    dx = new_output(x2.shape, x.dtype)
    gamma = None if weight is None else np.ascontiguousarray(weight, dtype=acc).reshape(m)
    eps = acc.type(eps)
    ones = _ones(m, acc)

    def tile(rows, dgamma, dbeta):
        t = _load(x2[rows[0]:rows[1]], 0, acc)
        dyt = _load(dy2[rows[0]:rows[1]], 1, acc)
        xhat = _work(2, t)
        _, sq = row_stats_tile(t, xhat)
        inv_std = _inv_std(sq, m, eps)[:, None]
        np.multiply(xhat, inv_std, out=xhat)
        w = _work(4, t)
        np.multiply(dyt, xhat, out=w)
        _add_column_sums(dgamma, w)
        _add_column_sums(dbeta, dyt)
        g = dyt if gamma is None else np.multiply(dyt, gamma, out=_work(3, t))
        mean_g = (gemv(g, ones) / m)[:, None]
        mean_gx = (row_dots(g, xhat) / m)[:, None]
        np.multiply(xhat, mean_gx, out=w)
        np.subtract(g, w, out=w)
        np.subtract(w, mean_g, out=w)
        np.multiply(w, inv_std, out=dx[rows[0]:rows[1]], casting="unsafe")

    def block(tiles):
        dgamma, dbeta = np.zeros(m), np.zeros(m)
        for rows in tiles:
            tile(rows, dgamma, dbeta)
        return dgamma, dbeta

    partials = _map_tiles(block, _row_blocks(x2.shape[0], m, acc), x2.nbytes, row=m)
    dgamma, dbeta = np.zeros(m), np.zeros(m)
    for pg, pb in partials:
        dgamma += pg
        dbeta += pb
    shape = tuple(int(s) for s in normalized_shape)
    return {"x": dx.reshape(x.shape), "weight": dgamma.reshape(shape), "bias": dbeta.reshape(shape)}


def rms_eps(eps, acc: np.dtype) -> float:
    """eps=None means the machine epsilon of the accumulation dtype (PyTorch's opmath type)."""
    return float(np.finfo(acc).eps) if eps is None else float(eps)


def rms_norm_forward(x, weight, normalized_shape, eps):
    """y = x / sqrt(mean(x^2) + eps) * gamma (Zhang & Sennrich 2019, eq. 4), one DRAM pass."""
    m = _check_suffix(x, normalized_shape)
    acc = accumulation_dtype(x.dtype)
    x2 = np.ascontiguousarray(x).reshape(-1, m)
    y = new_output(x2.shape, x.dtype)
    gamma = None if weight is None else np.ascontiguousarray(weight, dtype=acc).reshape(m)
    eps = acc.type(rms_eps(eps, acc))
    columns = _Columns(m, gamma, None)

    def work(rows):
        src, out = x2[rows[0]:rows[1]], y[rows[0]:rows[1]]
        if acc == x.dtype:  # copy first (`_copy_into`), then scale and finish the affine in place
            t = _copy_into(out, src)
            np.multiply(t, _inv_std(row_dots(t, t), m, eps)[:, None], out=t)
            _affine_rows_out(t, columns, t)
        else:
            t = _load(src, 0, acc)
            d = _work(1, t)
            np.multiply(t, _inv_std(row_dots(t, t), m, eps)[:, None], out=d)
            _affine_rows_out(d, columns, out)

    _map_tiles(work, _row_tiles(x2.shape[0], m, acc), x2.nbytes, row=m)
    return y.reshape(x.shape)


def rms_norm_backward(x, weight, dy, normalized_shape, eps):
    """dx = (g - x sum(g x)/(m r^2)) / r, r = sqrt(mean x^2 + eps), g = gamma dy; dgamma = sum dy x/r."""
    m = _check_suffix(x, normalized_shape)
    acc = accumulation_dtype(x.dtype)
    x2 = np.ascontiguousarray(x).reshape(-1, m)
    dy2 = np.ascontiguousarray(dy).reshape(-1, m)
    dx = new_output(x2.shape, x.dtype)
    gamma = None if weight is None else np.ascontiguousarray(weight, dtype=acc).reshape(m)
    eps = acc.type(rms_eps(eps, acc))

    def tile(rows, dgamma):
        t = _load(x2[rows[0]:rows[1]], 0, acc)
        dyt = _load(dy2[rows[0]:rows[1]], 1, acc)
        inv = _inv_std(row_dots(t, t), m, eps)  # 1/r per row
        w = _work(2, t)
        if gamma is not None:
            np.multiply(t, inv[:, None], out=w)      # x / r
            np.multiply(w, dyt, out=w)
            _add_column_sums(dgamma, w)
            g = np.multiply(dyt, gamma, out=_work(3, t))
        else:
            g = dyt
        coef = row_dots(g, t)
        coef *= inv * inv / m                         # sum(g x) / (m r^2)
        np.multiply(t, coef[:, None], out=w)
        np.subtract(g, w, out=w)
        np.multiply(w, inv[:, None], out=dx[rows[0]:rows[1]], casting="unsafe")

    def block(tiles):
        dgamma = np.zeros(m)
        for rows in tiles:
            tile(rows, dgamma)
        return dgamma

    partials = _map_tiles(block, _row_blocks(x2.shape[0], m, acc), x2.nbytes, row=m)
    grads = {"x": dx.reshape(x.shape)}
    if weight is not None:
        dgamma = np.zeros(m)
        for pg in partials:
            dgamma += pg
        grads["weight"] = dgamma.reshape(weight.shape)
    return grads


# ------------------------------------------------------------------ per channel: BatchNorm

def _channel_tiles(n: int, c: int, s: int, acc: np.dtype) -> list[tuple[int, int, int, int]]:
    """Tiles (n0, n1, c0, c1) of a (N, C, S) array, each about TILE_BYTES and whole along S."""
    per = TILE_BYTES // acc.itemsize
    if c * s >= per:
        cb = max(1, per // s)
        return [(i, i + 1, c0, min(c, c0 + cb)) for i in range(n) for c0 in range(0, c, cb)]
    nb = max(1, per // (c * s))
    return [(n0, min(n, n0 + nb), 0, c) for n0 in range(0, n, nb)]


def _channel_row(c: int, s: int) -> int:
    """The contiguous inner run of per-channel ufuncs on (N, C, S) tiles: S, or C when S = 1 (BatchNorm1d)."""
    return s if s > 1 else c


def _channel_sum(t: np.ndarray) -> np.ndarray:
    """Sum of a (na, nc, ns) tile over axes 0 and 2, by matrix-vector products with ones."""
    na, nc, ns = t.shape
    if na == 1:
        return gemv(t[0], _ones(ns, t.dtype)) if ns > 1 else t[0, :, 0].copy()
    per_col = gemv(_ones(na, t.dtype), t.reshape(na, nc * ns))
    return gemv(per_col.reshape(nc, ns), _ones(ns, t.dtype)) if ns > 1 else per_col


def _channel_dot(a: np.ndarray, b: np.ndarray, slot: int) -> np.ndarray:
    """Per-channel sum of a * b for (na, nc, ns) tiles (row dot products, then a sum over na)."""
    if a.shape[2] == 1:  # (na, nc, 1): BatchNorm1d on (N, C); column sums of products, no temporary
        return np.einsum("ij,ij->j", a[:, :, 0], b[:, :, 0])
    na, nc, ns = a.shape
    if a.flags.c_contiguous and b.flags.c_contiguous:  # one (na nc, ns) row_dots, the GIL released
        dots = row_dots(a.reshape(na * nc, ns), b.reshape(na * nc, ns)).reshape(na, nc)
    else:
        dots = np.vecdot(a, b)  # (na, nc)
    return dots[0] if a.shape[0] == 1 else gemv(_ones(a.shape[0], dots.dtype), dots)


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
    tsum = _channel_sum(t).astype(np.float64)
    tmean = tsum / k
    tm2 = _channel_dot(t, t, 2).astype(np.float64) - tsum * tmean
    if one_pass_is_accurate(tm2, tmean, k):
        return tmean, tm2
    tmean = _channel_sum(t) / k
    d = _work(1, t)
    np.subtract(t, tmean[None, :, None], out=d)
    return tmean.astype(np.float64), _channel_dot(d, d, 2).astype(np.float64)


def _exact_constant_channels(values: np.ndarray, mean: np.ndarray, m2: np.ndarray, count, c0: int = 0) -> None:
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
    tiles = _channel_tiles(n, c, s, acc)
    partials = _map_tiles(lambda t: tile_moments(_load(x3[t[0]:t[1], t[2]:t[3]], 0, acc)), tiles, x3.nbytes,
                          row=_channel_row(c, s))
    count, mean, m2 = np.zeros(c), np.zeros(c), np.zeros(c)
    for (n0, n1, c0, c1), (tmean, tm2) in zip(tiles, partials):
        k = (n1 - n0) * s
        na = count[c0:c1]
        total = na + k
        delta = tmean - mean[c0:c1]
        mean[c0:c1] += delta * (k / total)
        m2[c0:c1] += tm2 + delta * delta * (na * k / total)
        count[c0:c1] = total
    _exact_constant_channels(x3, mean, m2, count)
    return mean, m2 / count


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


def _uses_batch_stats(inputs, params) -> bool:
    has_running = inputs.get("running_mean") is not None and inputs.get("running_var") is not None
    return params.get("training", True) or not has_running


def _bn_statistics(x3, inputs, params):
    """(mean, biased var, batch?) per channel in float64: the batch's or the running statistics."""
    batch = _uses_batch_stats(inputs, params)
    if batch:
        _check_batch_size(x3, inputs, params)
        mean, var = channel_moments(x3)
    else:
        mean = np.asarray(inputs["running_mean"], dtype=np.float64).reshape(-1)
        var = np.asarray(inputs["running_var"], dtype=np.float64).reshape(-1)
    return mean, var, batch


def _per_channel_pass(x3, out3, scale, shift, acc):
    """out = x * scale + shift per channel, tile by tile: x copied into the output tile (or cast into
    a buffer), then the multiply and the add in place there (`_copy_into`). For BatchNorm1d (S = 1)
    scale and shift are per-column vectors, applied over k rows at once (`_Columns`)."""
    n, c, s = x3.shape
    direct = out3.dtype == acc
    columns = _Columns(c, scale, shift) if s == 1 else None

    def work(tile):
        n0, n1, c0, c1 = tile
        d = _copy_into(out3[n0:n1, c0:c1], x3[n0:n1, c0:c1]) if direct else _load(x3[n0:n1, c0:c1], 0, acc)
        if columns is not None and (c0, c1) == (0, c):
            for (dv,), (sc, sh) in columns.parts(d.reshape(n1 - n0, c)):
                np.multiply(dv, sc, out=dv)
                np.add(dv, sh, out=dv)
        else:
            np.multiply(d, scale[None, c0:c1, None], out=d)
            np.add(d, shift[None, c0:c1, None], out=d)
        if not direct:
            np.copyto(out3[n0:n1, c0:c1], d, casting="unsafe")

    _map_tiles(work, _channel_tiles(n, c, s, acc), x3.nbytes, row=_channel_row(c, s))


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
    np.divide(1.0 if weight is None else np.asarray(weight, dtype=np.float64).reshape(-1), scale, out=scale)
    shift = np.multiply(mean, scale)
    if bias is None:
        np.negative(shift, out=shift)
    else:
        np.subtract(np.asarray(bias, dtype=np.float64).reshape(-1), shift, out=shift)
    if batch:
        constant = np.flatnonzero(var == 0)
        if constant.size:
            scale[constant] = 0.0
            shift[constant] = 0.0 if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)[constant]
    return scale, shift


def _check_batch_size(x3, inputs, params) -> None:
    if params.get("training", True) and x3.shape[0] * x3.shape[2] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input of shape "
                         f"{tuple(inputs['x'].shape)}")


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
    d = _work(1, t)
    np.subtract(t, mean.astype(t.dtype)[:, None], out=d)
    m2 = row_dots(d, d).astype(np.float64)
    _exact_constant_channels(t[None], mean, m2, k)
    return mean, m2, False


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
        t = _scratch(5, (c1 - c0) * count, acc).reshape(c1 - c0, n, s)
        np.copyto(t, x3[:, c0:c1].transpose(1, 0, 2), casting="unsafe")  # the gather: the only read of x
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

    parts = _map_tiles(work, groups, x3.nbytes)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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
    groups = _resident_groups(*x3.shape, acc) if _uses_batch_stats(inputs, params) else None
    if groups is not None:
        _check_batch_size(x3, inputs, params)
        weight, bias = inputs.get("weight"), inputs.get("bias")
        mean, var = _resident_batch_norm(x3, y, groups, None if weight is None else np.asarray(weight).reshape(-1),
                                         None if bias is None else np.asarray(bias).reshape(-1), eps, acc)
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
    """PyTorch's running-statistics update, with the momentum and variance conventions as params."""
    rm, rv = inputs["running_mean"], inputs["running_var"]
    momentum = params.get("momentum", 0.1)
    if momentum is None:
        factor = 1.0 / (params.get("num_batches_tracked", 0) + 1)
    elif params.get("momentum_style", "new") == "decay":
        factor = 1.0 - momentum
    else:
        factor = momentum
    if params.get("running_var_style", "unbiased") == "unbiased":
        var = var * (count / (count - 1))
    new_rm = (1.0 - factor) * np.asarray(rm, dtype=np.float64) + factor * mean
    new_rv = (1.0 - factor) * np.asarray(rv, dtype=np.float64) + factor * var
    return new_rm.astype(rm.dtype), new_rv.astype(rv.dtype)


def _resident_batch_norm_backward(x3, dy3, dx3, groups, gamma, eps, acc):
    """The batch-statistics backward per group of whole channels: x and dy gathered once, dx written once.

    Per channel, from the gathered x: its moments and xhat in place; from the gathered dy: sum dy
    and sum dy xhat (two BLAS calls); then dx = gamma inv_std (dy - mean dy - xhat mean(dy xhat)).
    """
    n, c, s = x3.shape
    count = n * s

    def work(tile):
        _, _, c0, c1 = tile
        t = _scratch(5, (c1 - c0) * count, acc).reshape(c1 - c0, n, s)
        np.copyto(t, x3[:, c0:c1].transpose(1, 0, 2), casting="unsafe")
        xhat = t.reshape(c1 - c0, count)
        mean, m2, _ = row_moments(xhat)
        inv_std = 1.0 / np.sqrt(m2 / count + eps)
        np.subtract(xhat, mean.astype(acc)[:, None], out=xhat)
        np.multiply(xhat, inv_std.astype(acc)[:, None], out=xhat)
        g = _scratch(6, (c1 - c0) * count, acc).reshape(c1 - c0, n, s)
        np.copyto(g, dy3[:, c0:c1].transpose(1, 0, 2), casting="unsafe")
        rows = g.reshape(c1 - c0, count)
        sum_dy = row_sums(rows).astype(np.float64)
        sum_dy_xhat = row_dots(rows, xhat).astype(np.float64)
        np.multiply(xhat, (sum_dy_xhat / count).astype(acc)[:, None], out=xhat)
        np.subtract(rows, xhat, out=rows)
        np.subtract(rows, (sum_dy / count).astype(acc)[:, None], out=rows)
        np.multiply(g, (gamma[c0:c1] * inv_std).astype(acc)[:, None, None],
                    out=dx3[:, c0:c1].transpose(1, 0, 2), casting="unsafe")
        return sum_dy, sum_dy_xhat

    parts = _map_tiles(work, groups, x3.nbytes)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


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
    gamma = np.ones(c) if weight is None else np.asarray(weight, dtype=np.float64).reshape(-1)
    groups = _resident_groups(n, c, s, acc, buffers=2) if _uses_batch_stats(inputs, params) else None
    if groups is not None:
        _check_batch_size(x3, inputs, params)
        dx = new_output(x3.shape, x.dtype)
        sum_dy, sum_dy_xhat = _resident_batch_norm_backward(x3, dy3, dx, groups, gamma, params.get("eps", 1e-5), acc)
        return {"x": dx.reshape(x.shape), "weight": sum_dy_xhat, "bias": sum_dy}
    mean, var, batch = _bn_statistics(x3, inputs, params)
    inv_std = 1.0 / np.sqrt(var + params.get("eps", 1e-5))
    mean_a, inv_a = mean.astype(acc), inv_std.astype(acc)
    tiles = _channel_tiles(n, c, s, acc)

    def xhat_of(n0, n1, c0, c1):
        t = _load(x3[n0:n1, c0:c1], 0, acc)
        xhat = _work(2, t)
        np.subtract(t, mean_a[None, c0:c1, None], out=xhat)
        np.multiply(xhat, inv_a[None, c0:c1, None], out=xhat)
        return xhat

    def sums(tile):
        g = _load(dy3[tile[0]:tile[1], tile[2]:tile[3]], 1, acc)
        return _channel_sum(g).astype(np.float64), _channel_dot(g, xhat_of(*tile), 3).astype(np.float64)

    sum_dy, sum_dy_xhat = np.zeros(c), np.zeros(c)
    for (n0, n1, c0, c1), (a, b) in zip(tiles, _map_tiles(sums, tiles, x3.nbytes, row=_channel_row(c, s))):
        sum_dy[c0:c1] += a
        sum_dy_xhat[c0:c1] += b
    count = n * s
    dx = new_output(x3.shape, x.dtype)
    k = (gamma * inv_std).astype(acc)
    mg, mgx = (sum_dy / count).astype(acc), (sum_dy_xhat / count).astype(acc)

    def grad(tile):
        n0, n1, c0, c1 = tile
        g = _load(dy3[n0:n1, c0:c1], 1, acc)
        w = _work(3, g)
        if batch:
            np.multiply(xhat_of(*tile), mgx[None, c0:c1, None], out=w)
            np.subtract(g, w, out=w)
            np.subtract(w, mg[None, c0:c1, None], out=w)
        else:
            np.copyto(w, g)
        np.multiply(w, k[None, c0:c1, None], out=dx[n0:n1, c0:c1], casting="unsafe")

    _map_tiles(grad, tiles, x3.nbytes, row=_channel_row(c, s))
    return {"x": dx.reshape(x.shape), "weight": sum_dy_xhat, "bias": sum_dy}
