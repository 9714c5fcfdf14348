"""What normalization promises about its output and its gradient, checked on the backend alone."""
from __future__ import annotations

import numpy as np

from normspec.properties.agreement import where
from normspec.properties.core import Context, assert_close, prop, traits


def batch_stats_case(ctx: Context, **overrides):
    """A case normalized by its own statistics (training mode for norms with running stats)."""
    if ctx.record.has("running_stats"):
        overrides.setdefault("training", True)
    return ctx.case(**overrides)


def _per_group(a: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray | None:
    """`a` broadcast to `shape` and reduced to one value per reduction set, or None if it varies inside one."""
    full = np.broadcast_to(a, shape)
    if np.ptp(full, axis=axes).max(initial=0.0) > 0:
        return None
    return full.mean(axis=axes, keepdims=True)


@prop("statistics", applies=traits("moment_normalizer"))
def output_moments(ctx: Context) -> None:
    """Over each reduction set the output has mean beta and variance gamma^2 sigma^2/(sigma^2 + eps)
    (per channel for BatchNorm, per sample for LayerNorm). Checked on the backend's output alone,
    with no spec in the loop; affine parameters that vary inside a reduction set are dropped."""
    case = batch_stats_case(ctx)
    view, c0 = ctx.record.moment_geometry(case)
    if _per_group(c0.gamma, view, c0.stats_axes) is None or _per_group(c0.beta, view, c0.stats_axes) is None:
        case = case.with_arrays(weight=None, bias=None)
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    view, c = ctx.record.moment_geometry(run.case)
    ref, _ = ctx.reference(run)
    y, axes = run.outputs["y"].reshape(view), c.stats_axes
    bound = np.broadcast_to(ctx.bounds(run, ref, {})["y"], run.outputs["y"].shape).reshape(view)
    beta = _per_group(c.beta, y.shape, axes)
    gamma = _per_group(c.gamma, y.shape, axes)
    mean = y.mean(axis=axes, keepdims=True)
    mean_bound = bound.mean(axis=axes, keepdims=True) + 1e-13 * (np.abs(beta) + np.abs(gamma))
    assert_close(mean, beta, mean_bound, "mean_R(y)", where(ctx, run))
    var = ((y - beta) ** 2).mean(axis=axes, keepdims=True)
    eps = run.case.params.get("eps", 1e-5)
    expect_var = gamma**2 * (c.std**2 - eps) / c.std**2
    var_bound = 2 * (np.abs(y - beta) * bound).mean(axis=axes, keepdims=True) + mean_bound**2 + 1e-13 * gamma**2
    assert_close(var, expect_var, var_bound, "var_R(y)", where(ctx, run))


@prop("statistics", applies=traits("moment_normalizer"))
def gradient_orthogonality(ctx: Context) -> None:
    """With batch statistics the input gradient sums to zero over each reduction set, and
    sum_R dx * xhat = eps/(sigma^2 + eps) * sum_R(g xhat)/s with g = gamma dy: so the gradient of a
    preceding weight is orthogonal to it as eps -> 0. Statistics detached from the graph break it."""
    case = batch_stats_case(ctx)
    dtype = ctx.dtype()
    run = ctx.run(case, dtype, ctx.layout(), grads=True)
    view, c = ctx.record.moment_geometry(run.case)
    ref, ref_grads = ctx.reference(run)
    bound_dx = (ctx.bounds(run, ref, ref_grads)["x"] * np.ones_like(run.grads["x"])).reshape(view)
    dx, axes = run.grads["x"].reshape(view), c.stats_axes
    # A set where the model admits an overflow (an infinite bound: the exact gradient is within the
    # bound of the dtype's largest value) carries no claim about its sums: dx may be inf there.
    claimless = ~np.isfinite(bound_dx).all(axis=axes, keepdims=True)
    scale = 1e-13 * np.abs(ref_grads["x"].reshape(view)).sum(axis=axes, keepdims=True)
    sum_dx = np.where(claimless, 0.0, dx.sum(axis=axes, keepdims=True))
    assert_close(sum_dx, 0.0 * scale, bound_dx.sum(axis=axes, keepdims=True) + scale, "sum_R(dx)", where(ctx, run))
    eps = run.case.params.get("eps", 1e-5)
    g = c.gamma * run.dy.reshape(view)
    expected = (eps / c.std**2) * (g * c.xhat).sum(axis=axes, keepdims=True) / c.std
    inner = np.where(claimless, expected, (dx * c.xhat).sum(axis=axes, keepdims=True))
    with np.errstate(invalid="ignore"):  # an infinite bound times xhat = 0: NaN, which admits no error there
        inner_bound = (bound_dx * np.abs(c.xhat)).sum(axis=axes, keepdims=True) + scale * (1 + np.abs(c.xhat).max())
    assert_close(inner, expected, inner_bound, "sum_R(dx*xhat)", where(ctx, run))
