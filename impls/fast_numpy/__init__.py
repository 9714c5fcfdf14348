"""Normalization kernels in NumPy written for the memory system (the `numpy:fast` backend).

Normalizations are memory-bound: a LayerNorm reads x once and writes y once, and everything in
between is arithmetic on data that could sit in cache. The plain NumPy kernels make a full-size
temporary per ufunc (x.astype, x - mean, square, * inv_std, * gamma, + beta), so each step
streams the whole tensor through DRAM again. These kernels instead walk the input in *tiles* of
about `runtime.TILE_BYTES` (1 MiB, inside L2) and do every step of a tile on cache-resident
buffers with `out=` ufuncs; the row sums are BLAS matrix-vector products with a ones vector
(np.dot), which run near cache bandwidth. Per tile of a LayerNorm:

    Y = T                 memcpy into the output tile (the only DRAM read and write)
    s = Y @ (1/m)         row means (BLAS matrix-vector product, in cache from here on)
    Y -= s                centred values                          (two-pass variance)
    q = sum_rows(Y * Y)   BLAS dot per row (`row_dots`)
    Y *= 1/sqrt(q/m+eps); Y *= gamma; Y += beta

so LayerNorm and RMSNorm forward touch DRAM as often as a copy does. BatchNorm needs its
statistics over the whole batch first: see `batch_norm`.

Numerics, as the property suite demands: statistics of float16 inputs are accumulated in
float32 (tiles are cast into float32 buffers), the variance is a two-pass (centred) sum, and a
reduction set whose values are all equal gets its exact mean (the value itself: it is detected
by a nearly-zero variance and confirmed with min == max), so x - mean is exactly 0 and y is
exactly beta. Inputs are never written; non-contiguous inputs are made contiguous first.

Modules, each building on the ones before it:

    runtime      tiles, threads (`map_tiles`), ufunc buffer size, scratch buffers, output pool
    reductions   row and channel sums and dot products (BLAS), moments, constant-set detection
    row_norms    LayerNorm and RMSNorm forward and backward
    batch_norm   BatchNorm forward and backward (cache-resident channel groups or two passes)

Tunables (`TILE_BYTES`, `THREADS`, `RESIDENT_BYTES`, ...) live in the module that reads them, so
set or monkeypatch them there: `runtime.THREADS = 1`, not on this package.
"""
