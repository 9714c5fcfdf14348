"""LayerNorm and RMSNorm, forward and backward, for `numpy:fast`: one DRAM pass per tile of rows.

Each tile of rows is copied into its output tile (or cast into a float32 buffer for half
precision) and normalized in place there: row means by BLAS, centred values, sums of squares by
`row_dots`, then the scale and the affine map (see the package docstring for the steps). Rows
whose values are all equal give exactly beta. Parameter gradients are column sums accumulated per
block of tiles in float64 and added in block order, so results do not depend on the thread count.
"""
from __future__ import annotations

import math

import numpy as np

from normspec.impls.fast_numpy.reductions import (
    add_column_sums,
    constant_row_candidates,
    exact_constant_rows,
    gemv,
    row_dots,
    row_sums,
)
from normspec.impls.fast_numpy.runtime import (
    Columns,
    accumulation_dtype,
    concatenated,
    copy_into,
    load,
    map_tiles,
    new_output,
    ones_vector,
    row_blocks,
    row_tiles,
    scratch_like,
)


def _check_suffix(x: np.ndarray, normalized_shape) -> int:
    shape = tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or tuple(x.shape[x.ndim - k:]) != shape:
        raise ValueError(f"normalized_shape {shape} must be a non-empty suffix of the input shape {x.shape}")
    return math.prod(shape)


def _rows(x, weight, normalized_shape):
    """The setup every row kernel shares: (m, accumulation dtype, x as a contiguous (rows, m) array, a new
    output of that shape in x's dtype, gamma as a length-m vector in the accumulation dtype or None)."""
    m = _check_suffix(x, normalized_shape)
    acc = accumulation_dtype(x.dtype)
    x2 = np.ascontiguousarray(x).reshape(-1, m)
    out = new_output(x2.shape, x.dtype)
    gamma = None if weight is None else np.ascontiguousarray(weight, dtype=acc).reshape(m)
    return m, acc, x2, out, gamma


def _column_sums_by_block(tile, count: int, x2, m: int, acc) -> list[np.ndarray]:
    """Runs tile(rows, *sums) over every tile of rows, where each block of tiles (`row_blocks`) has its own
    `count` float64 column sums for the tiles to add to; returns those summed over the blocks in block
    order, so the result is bitwise the same whatever the thread count."""
    def block(tiles):
        sums = [np.zeros(m) for _ in range(count)]
        for rows in tiles:
            tile(rows, *sums)
        return sums

    totals = [np.zeros(m) for _ in range(count)]
    for partial in map_tiles(block, row_blocks(x2.shape[0], m, acc), x2.nbytes, row=m):
        for total, part in zip(totals, partial):
            total += part
    return totals


def row_stats_tile(t: np.ndarray, centred: np.ndarray):
    """(mean, inv_std numerator: sum of squared deviations) per row of tile `t`; t - mean left in
    `centred`, with constant rows made exact tile by tile (the backward's use: it needs them centred)."""
    m = t.shape[1]
    mean = row_sums(t, 1.0 / m)
    np.subtract(t, mean[:, None], out=centred)
    sq = row_dots(centred, centred)
    exact_constant_rows(t, mean, sq, centred, m)
    return mean, sq


def _inv_std(sq: np.ndarray, m: int, eps) -> np.ndarray:
    """1 / sqrt(sq / m + eps) as sqrt(m) / sqrt(sq + m eps), a new array (sq is kept): three small ufuncs."""
    inv = np.add(sq, m * eps)
    np.sqrt(inv, out=inv)
    return np.divide(inv.dtype.type(math.sqrt(m)), inv, out=inv)


def layer_norm_forward(x, weight, bias, normalized_shape, eps):
    """y = (x - mean) / sqrt(var + eps) * gamma + beta per row (Ba et al. 2016, eq. 4), one DRAM pass.

    Each tile is copied into its output tile (or cast into a buffer) and normalized in place there
    with a handful of calls; the Python work per tile holds the GIL the other tile threads wait for,
    so the constant-row rule is applied once per call, to the rows all tiles flag (`_constant_rows_to_beta`).
    """
    m, acc, x2, y, gamma = _rows(x, weight, normalized_shape)
    beta = None if bias is None else np.ascontiguousarray(bias, dtype=acc).reshape(m)
    eps = acc.type(eps)
    columns = Columns(m, gamma, beta)
    direct = y.dtype == acc
    to_mean = ones_vector(m, acc, 1.0 / m)

    def work(rows):
        src, out = x2[rows[0]:rows[1]], y[rows[0]:rows[1]]
        d = copy_into(out, src) if direct else load(src, 0, acc)  # a private tile in the accumulation dtype
        mean = gemv(d, to_mean)
        np.subtract(d, mean[:, None], out=d)
        sq = row_dots(d, d)
        np.multiply(d, _inv_std(sq, m, eps)[:, None], out=d)
        _affine_rows_out(d, columns, out)
        return mean, sq

    parts = map_tiles(work, row_tiles(x2.shape[0], m, acc), x2.nbytes, row=m)
    _constant_rows_to_beta(x2, y, parts, beta, m)
    return y.reshape(x.shape)


def _constant_rows_to_beta(x2, y, parts, beta, m) -> None:
    """Rows of x whose values are all equal get y = beta exactly, as x - mean = 0 gives (the tiles'
    mean is a rounded sum, so their centred values are rounding noise scaled by 1/sqrt(eps))."""
    if not parts:  # no rows at all
        return
    mean, sq = parts[0] if len(parts) == 1 else concatenated(parts)
    for r in constant_row_candidates(mean, sq, m):
        row = x2[r]
        if row.min() == row.max():
            y[r] = 0 if beta is None else beta


def _affine_rows_out(d, columns: Columns, out):
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
    m, acc, x2, dx, gamma = _rows(x, weight, normalized_shape)
    dy2 = np.ascontiguousarray(dy).reshape(-1, m)
    eps = acc.type(eps)
    ones = ones_vector(m, acc)

    def tile(rows, dgamma, dbeta):
        t = load(x2[rows[0]:rows[1]], 0, acc)
        dyt = load(dy2[rows[0]:rows[1]], 1, acc)
        xhat = scratch_like(2, t)
        _, sq = row_stats_tile(t, xhat)
        inv_std = _inv_std(sq, m, eps)[:, None]
        np.multiply(xhat, inv_std, out=xhat)
        w = scratch_like(4, t)
        np.multiply(dyt, xhat, out=w)
        add_column_sums(dgamma, w)
        add_column_sums(dbeta, dyt)
        g = dyt if gamma is None else np.multiply(dyt, gamma, out=scratch_like(3, t))
        mean_g = (gemv(g, ones) / m)[:, None]
        mean_gx = (row_dots(g, xhat) / m)[:, None]
        np.multiply(xhat, mean_gx, out=w)
        np.subtract(g, w, out=w)
        np.subtract(w, mean_g, out=w)
        np.multiply(w, inv_std, out=dx[rows[0]:rows[1]], casting="unsafe")

    dgamma, dbeta = _column_sums_by_block(tile, 2, x2, m, acc)
    shape = tuple(int(s) for s in normalized_shape)
    return {"x": dx.reshape(x.shape), "weight": dgamma.reshape(shape), "bias": dbeta.reshape(shape)}


def rms_eps(eps, acc: np.dtype) -> float:
    """eps=None means the machine epsilon of the accumulation dtype (PyTorch's opmath type)."""
    return float(np.finfo(acc).eps) if eps is None else float(eps)


def rms_norm_forward(x, weight, normalized_shape, eps):
    """y = x / sqrt(mean(x^2) + eps) * gamma (Zhang & Sennrich 2019, eq. 4), one DRAM pass."""
    m, acc, x2, y, gamma = _rows(x, weight, normalized_shape)
    eps = acc.type(rms_eps(eps, acc))
    columns = Columns(m, gamma, None)

    def work(rows):
        src, out = x2[rows[0]:rows[1]], y[rows[0]:rows[1]]
        if acc == x.dtype:  # copy first (`copy_into`), then scale and finish the affine in place
            t = copy_into(out, src)
            np.multiply(t, _inv_std(row_dots(t, t), m, eps)[:, None], out=t)
            _affine_rows_out(t, columns, t)
        else:
            t = load(src, 0, acc)
            d = scratch_like(1, t)
            np.multiply(t, _inv_std(row_dots(t, t), m, eps)[:, None], out=d)
            _affine_rows_out(d, columns, out)

    map_tiles(work, row_tiles(x2.shape[0], m, acc), x2.nbytes, row=m)
    return y.reshape(x.shape)


def rms_norm_backward(x, weight, dy, normalized_shape, eps):
    """dx = (g - x sum(g x)/(m r^2)) / r, r = sqrt(mean x^2 + eps), g = gamma dy; dgamma = sum dy x/r."""
    m, acc, x2, dx, gamma = _rows(x, weight, normalized_shape)
    dy2 = np.ascontiguousarray(dy).reshape(-1, m)
    eps = acc.type(rms_eps(eps, acc))

    def tile(rows, dgamma):
        t = load(x2[rows[0]:rows[1]], 0, acc)
        dyt = load(dy2[rows[0]:rows[1]], 1, acc)
        inv = _inv_std(row_dots(t, t), m, eps)  # 1/r per row
        w = scratch_like(2, t)
        if gamma is not None:
            np.multiply(t, inv[:, None], out=w)      # x / r
            np.multiply(w, dyt, out=w)
            add_column_sums(dgamma, w)
            g = np.multiply(dyt, gamma, out=scratch_like(3, t))
        else:
            g = dyt
        coef = row_dots(g, t)
        coef *= inv * inv / m                         # sum(g x) / (m r^2)
        np.multiply(t, coef[:, None], out=w)
        np.subtract(g, w, out=w)
        np.multiply(w, inv[:, None], out=dx[rows[0]:rows[1]], casting="unsafe")

    (dgamma,) = _column_sums_by_block(tile, 1, x2, m, acc)
    grads = {"x": dx.reshape(x.shape)}
    if weight is not None:
        grads["weight"] = dgamma.reshape(weight.shape)
    return grads
