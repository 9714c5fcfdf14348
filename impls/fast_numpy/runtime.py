"""The `numpy:fast` runtime: cache-sized tiles, the threads that run them, and reusable buffers.

Normalizations are memory-bound, so every kernel walks its input in tiles of about `TILE_BYTES`
(inside L2) and does all the arithmetic of a tile on cache-resident buffers with `out=` ufuncs.
This module cuts inputs into tiles (`row_tiles`, `row_blocks`, `channel_tiles`), spreads them over
threads in a deterministic order (`map_tiles`), caps NumPy's ufunc buffer at the row length while
they run (`row_buffering`), and hands out per-thread scratch buffers (`scratch`, `load`), pooled
output arrays (`new_output`), cached constant vectors (`ones_vector`) and k-row views for
per-column ufuncs (`Columns`). Nothing here knows about any normalization.
"""
from __future__ import annotations

import contextlib
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


def map_tiles(work, tiles, nbytes: int, row: int | None = None) -> list:
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


def concatenated(parts: list) -> tuple:
    """The per-tile results of `map_tiles`, tuples of arrays, joined into one array per position in tile order."""
    return tuple(np.concatenate(column) for column in zip(*parts))


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


def scratch(slot: int, size: int, dtype: np.dtype) -> np.ndarray:
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


def accumulation_dtype(dtype) -> np.dtype:
    """float32 for half precision, else the input dtype (float32 stays float32)."""
    return np.dtype(np.float32) if np.dtype(dtype).itemsize < 4 else np.dtype(dtype)


_ONES: dict[tuple[int, str, float], np.ndarray] = {}


def ones_vector(n: int, dtype: np.dtype, value: float = 1.0) -> np.ndarray:
    """A read-only vector of n copies of `value` (1 by default) for BLAS sums, made once per key."""
    key = (n, np.dtype(dtype).str, value)
    ones = _ONES.get(key)
    if ones is None:
        ones = np.full(n, value, dtype=dtype)
        ones.flags.writeable = False
        if len(_ONES) < 64:
            _ONES[key] = ones
    return ones


def load(tile: np.ndarray, slot: int, acc: np.dtype) -> np.ndarray:
    """The tile in the accumulation dtype: itself when it already is, else cast into a scratch buffer."""
    if tile.dtype == acc:
        return tile
    view = scratch(slot, tile.size, acc).reshape(tile.shape)
    np.copyto(view, tile, casting="unsafe")
    return view


def scratch_like(slot: int, like: np.ndarray) -> np.ndarray:
    return scratch(slot, like.size, like.dtype).reshape(like.shape)


def copy_into(out: np.ndarray, tile: np.ndarray) -> np.ndarray:
    """out[...] = tile, returned: the first touch of an output tile, before it is worked on in place.

    A ufunc whose output misses cache first reads each line of it from DRAM (read-for-ownership);
    memcpy's string stores (np.copyto of a contiguous tile) write y for less, and leave the tile
    in cache for the in-place steps that follow. Measured on this project's 2-vCPU host (64 MB,
    float32): LayerNorm forward 7-13% and RMSNorm 15-19% faster than with the first ufunc writing y.
    """
    np.copyto(out, tile)
    return out


def row_tiles(rows: int, m: int, acc: np.dtype) -> list[tuple[int, int]]:
    per = max(1, TILE_BYTES // (m * acc.itemsize))
    return [(r0, min(rows, r0 + per)) for r0 in range(0, rows, per)]


# Parameter gradients are column sums over all rows: each *block* of consecutive tiles (a fixed
# BLOCK_BYTES of input, whatever the thread count) accumulates its own float64 sums in place,
# and blocks are added in order, so the result is bitwise deterministic.
BLOCK_BYTES = 8 * 2**20


def row_blocks(rows: int, m: int, acc: np.dtype) -> list[list[tuple[int, int]]]:
    tiles = row_tiles(rows, m, acc)
    per = max(1, BLOCK_BYTES // max(TILE_BYTES, m * acc.itemsize))
    return [tiles[i:i + per] for i in range(0, len(tiles), per)]


# NumPy's iterator pays about 0.1 us per row it steps over, which on 1024-wide rows makes a
# per-column ufunc (t * gamma) 40% dearer than a scalar one. Per-column vectors repeated k times
# let such ufuncs run over k consecutive rows as one row of k * m values.
LONG_ROW = 8192


class Columns:
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


def channel_tiles(n: int, c: int, s: int, acc: np.dtype) -> list[tuple[int, int, int, int]]:
    """Tiles (n0, n1, c0, c1) of a (N, C, S) array, each about TILE_BYTES and whole along S."""
    per = TILE_BYTES // acc.itemsize
    if c * s >= per:
        cb = max(1, per // s)
        return [(i, i + 1, c0, min(c, c0 + cb)) for i in range(n) for c0 in range(0, c, cb)]
    nb = max(1, per // (c * s))
    return [(n0, min(n, n0 + nb), 0, c) for n0 in range(0, n, nb)]


def channel_row(c: int, s: int) -> int:
    """The contiguous inner run of per-channel ufuncs on (N, C, S) tiles: S, or C when S = 1 (BatchNorm1d)."""
    return s if s > 1 else c
