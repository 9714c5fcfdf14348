"""Invariances and equivariances: scale, shift, batch permutation, batch independence."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library.tolerance import MAX_FINITE, TINY, compute_roundoff  # noqa: F401 (re-exported)
from normspec.properties.agreement import where
from normspec.properties.core import OPTIONAL, Context, assert_close, assert_equal, prop, representable, traits
from normspec.properties.statistics import batch_stats_case

MANTISSA_BITS = {"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}
# How each stateful role scales when the input is scaled by a: (x - rm)/sqrt(rv + eps) is unchanged.
# how each array scales with x -> a x (the saved statistics of LayerNorm: mean a, rstd 1/a)
SCALE_POWER = {"x": 1, "running_mean": 1, "running_var": 2, "mean": 1, "rstd": -1}


def _fits(a: np.ndarray, dtype: str) -> bool:
    """Every nonzero |a| is a normal number of `dtype`, with headroom for sums and squares."""
    mags = np.abs(a[a != 0])
    return representable(a, dtype) and (mags.size == 0 or mags.min() > TINY[dtype] * 2**12)


@prop("invariance", applies=traits("scale_invariant"))
def scale_invariance(ctx: Context) -> None:
    """f_eps(a x) = f_{eps/a^2}(x) for a > 0 (the exact form of scale invariance, catalogue). With
    a a power of two every intermediate scales exactly, so outputs must be bitwise equal, the
    running stats scale by a and a^2, and the input gradient by 1/a. Catches eps outside the
    square root and any eps placement or clamping that breaks the identity, in every dtype."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    k = ctx.draw(st.integers(-4, 4).filter(bool), "log2_a")
    a = 2.0**k
    base = ctx.rounded(case, dtype)
    scaled = base.with_arrays(**{r: arr * a ** SCALE_POWER[r] for r, arr in base.arrays.items() if r in SCALE_POWER})
    eps = base.params.get("eps", 1e-5)
    base = base.with_params(eps=eps / a**2)
    scaled = scaled.with_params(eps=eps)
    ctx.assume(all(_fits(arr, dtype) for arr in scaled.arrays.values()) and _fits(np.array([eps / a**2, eps]), dtype),
               "the scaled case or its eps does not fit the dtype")
    seed = ctx.seed("dy_seed")
    dy = np.random.default_rng(seed).standard_normal(case.x.shape)
    r0 = ctx.run(base, dtype, layout, grads=OPTIONAL, dy=dy)
    r1 = ctx.run(scaled, dtype, layout, grads=OPTIONAL, dy=dy)
    at = where(ctx, r1) + f" a=2^{k}"
    # scaling by 2^k is exact only between normal numbers: results that are subnormal (or zero
    # in one run only) in the dtype say nothing about the implementation
    results = [*r0.outputs.values(), *r1.outputs.values(), *r0.grads.values(), *r1.grads.values()]
    ctx.assume(all(_fits(r, dtype) for r in results), "a result is subnormal in the dtype")
    for name, value in r0.outputs.items():
        power = SCALE_POWER.get(name, 0)
        assert_equal(r1.outputs[name], value * a**power, f"{name}(a x)", at)
    for role, g in r0.grads.items():
        power = -SCALE_POWER.get(role, 0)
        assert_equal(r1.grads[role], g * a**power, f"d{role}(a x)", at)


def _on_grid(values: np.ndarray, total: float, dtype: str) -> tuple[np.ndarray, float]:
    """Round values to a power-of-two grid on which every number up to `total` is exact in dtype."""
    step = 2.0 ** (math.ceil(math.log2(max(total, 1e-300))) - (MANTISSA_BITS[dtype] - 2))
    return np.round(values / step) * step, step


@prop("invariance", applies=traits("shift_invariant"))
def shift_invariance(ctx: Context) -> None:
    """Adding a constant b to every value of a reduction set (per channel for BatchNorm, per sample
    for LayerNorm) leaves the output unchanged: the backend's f(x + b) equals the spec's f(x).
    Values are put on a grid where x + b is exact in the dtype, so the only error is the
    implementation's; |b|/sigma goes as far as the dtype resolves. A one-pass variance
    E[x^2] - E[x]^2 misses by a factor of about |b|/sigma."""
    case = batch_stats_case(ctx)
    dtype, layout = ctx.dtype(), ctx.layout()
    view, c = ctx.record.moment_geometry(case)
    # as far as the dtype can resolve: the compute roundoff, and at least 8 grid steps per std
    limit = min(0.01 / compute_roundoff(dtype), 2.0 ** (MANTISSA_BITS[dtype] - 2) / 8)
    log_ratio = ctx.draw(st.floats(0.0, math.log10(limit)), "log10_shift_over_std")
    rng = np.random.default_rng(ctx.seed("shift_seed"))
    std = np.broadcast_to(c.std, c.mean.shape)
    shift = (10.0**log_ratio) * std * rng.choice([-1.0, 1.0], c.mean.shape) * rng.uniform(0.5, 1.5, c.mean.shape)
    total = float(np.abs(case.x).max() + np.abs(shift).max())
    ctx.assume(representable(np.array([total]), dtype), "the shifted input does not fit the dtype")
    x_q, step = _on_grid(case.x, total, dtype)
    shift_q, _ = _on_grid(shift, total, dtype)
    shifted = case.with_arrays(x=(x_q.reshape(view) + shift_q).reshape(case.x.shape))
    if shifted.get("running_mean") is not None and not c.batch_stats:  # eval statistics move with the data
        shifted = shifted.with_arrays(running_mean=case.get("running_mean") + shift_q.reshape(-1))
    run = ctx.run(shifted, dtype, layout)
    ctx.assume(np.array_equal(run.case.x, shifted.x), "the shift is not exact in the dtype")
    unshifted = ctx.record.reference(case.with_arrays(x=x_q))
    ref, _ = ctx.reference(run)
    bounds = ctx.bounds(run, ref, {})
    assert_close(run.outputs["y"], unshifted["y"], bounds["y"], "y(x + b)", where(ctx, run) + " vs spec y(x)")


@prop("invariance", applies=traits("batch_dependent"))
def batch_permutation_equivariance(ctx: Context) -> None:
    """Permuting the samples of a batch permutes the output the same way and leaves the batch
    statistics (hence the running statistics) unchanged."""
    case, dtype, layout = batch_stats_case(ctx), ctx.dtype(), ctx.layout()
    perm = np.random.default_rng(ctx.seed("perm_seed")).permutation(case.x.shape[0])
    r0 = ctx.run(case, dtype, layout)
    r1 = ctx.run(case.with_arrays(x=case.x[perm]), dtype, layout)
    ref, _ = ctx.reference(r0)
    bounds = ctx.bounds(r0, ref, {})
    for name, value in r0.outputs.items():
        b = np.broadcast_to(bounds[name], value.shape)
        if name == "y":
            assert_close(r1.outputs[name], value[perm], 2 * b[perm], "y(x[perm])", where(ctx, r1))
        else:
            assert_close(r1.outputs[name], value, 2 * b, f"{name}(x[perm])", where(ctx, r1))


@prop("invariance", applies=traits("batch_independent"))
def batch_independence(ctx: Context) -> None:
    """Each sample's output depends on that sample alone: appending other samples of a very
    different scale to the batch leaves the original samples' outputs unchanged."""
    # a record whose conventions can make it batch-dependent (MVN's ONNX axes with axis 0) declares
    # the override batch_axes=; this property asks for cases without them
    overrides = {"batch_axes": False} if ctx.record.takes("batch_axes") else {}
    case, dtype, layout = ctx.case(**overrides), ctx.dtype(), ctx.layout()
    rng = np.random.default_rng(ctx.seed("others_seed"))
    extra = ctx.draw(st.integers(1, 3), "extra_samples")
    others = 1e3 * rng.standard_normal((extra,) + case.x.shape[1:]) + 50.0
    r0 = ctx.run(case, dtype, layout)
    r1 = ctx.run(case.with_arrays(x=np.concatenate([case.x, others])), dtype, layout)
    ref, _ = ctx.reference(r0)
    bound = 2 * np.broadcast_to(ctx.bounds(r0, ref, {})["y"], r0.outputs["y"].shape)
    n = case.x.shape[0]
    assert_close(r1.outputs["y"][:n], r0.outputs["y"], bound, "y(batch + others)[:n]", where(ctx, r1))
