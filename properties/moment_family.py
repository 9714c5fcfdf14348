"""GroupNorm, InstanceNorm, RMSNorm and MVN: the identities between them and with LayerNorm,
and the properties of each that the generic modules do not state.

Identities run both sides on the same backend and bound their difference by the sum of the two
sides' tolerance models (each side against its own float64 spec, which agree exactly)."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library import tolerance
from normspec.library.case import Case
from normspec.properties.agreement import where
from normspec.properties.core import (
    OPTIONAL,
    Context,
    PropertyFailure,
    assert_close,
    assert_equal,
    named,
    prop,
    traits,
)
from normspec.properties.hygiene import assert_raises_clearly
from normspec.properties.inference import folded_affine
from normspec.properties.invariance import _fits
from normspec.registry import get_norm
from normspec.spec.rms_norm import resolve_eps


def _bounds(norm: str, run) -> tolerance.Bounds:
    """The tolerance model of `norm` for `run` (a run of that norm's case)."""
    record = get_norm(norm)
    ref = record.reference(run.case)
    grads = record.reference_grad(run.case, run.dy) if run.dy is not None else {}
    return record.bounds(run.case, run.dtype, ref, run.dy, grads)


def _same(ctx: Context, left, right, norms: tuple[str, str], what: str, grads=("x",), fold=None) -> None:
    """Assert run `left` equals run `right` in y and the gradients `grads`, within both models."""
    bl, br = _bounds(norms[0], left), _bounds(norms[1], right)
    at = where(ctx, left) + f" vs {right.case.describe()} ({what})"
    ly, ry = left.outputs["y"], right.outputs["y"].reshape(left.outputs["y"].shape)
    assert_close(ly, ry, np.broadcast_to(bl["y"], ly.shape) + np.broadcast_to(br["y"], ry.shape).reshape(ly.shape),
                 "y", at)
    for role in grads:
        if role not in left.grads:
            continue
        r = right.grads[role]
        rb = np.broadcast_to(br[role], r.shape)
        if fold is not None and role != "x":
            r, rb = fold(r), fold(rb)
        assert_close(left.grads[role], r.reshape(left.grads[role].shape),
                     np.broadcast_to(bl[role], left.grads[role].shape) + rb.reshape(left.grads[role].shape),
                     f"d{role}", at)


def _needs(ctx: Context, norm: str) -> None:
    ctx.assume(ctx.backend.implements(norm), "the backend does not implement the other norm of the identity")


# ---------------------------------------------------------------- identities

@prop("identities", applies=named("group_norm"))
def group_norm_one_group_is_layer_norm(ctx: Context) -> None:
    """GroupNorm with G = 1 is LayerNorm over (C, *S) with the per-channel affine broadcast over S
    (Wu & He 2018, sec. 3.1): outputs and input gradients agree, and GroupNorm's per-channel
    weight/bias gradients are LayerNorm's summed over S."""
    _needs(ctx, "layer_norm")
    case = ctx.case(num_groups=1)
    x = case.x
    def spread(a):
        return None if a is None else np.broadcast_to(a.reshape((-1,) + (1,) * (x.ndim - 2)), x.shape[1:])
    ln = Case("layer_norm", {"x": x, "weight": spread(case.get("weight")), "bias": spread(case.get("bias"))},
              {"normalized_shape": x.shape[1:], "eps": case.params["eps"]})
    dtype = ctx.dtype()
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal(x.shape)
    gn_run, ln_run = ctx.run(case, dtype, grads=OPTIONAL, dy=dy), ctx.run(ln, dtype, grads=OPTIONAL, dy=dy)
    def fold(g):
        return g.reshape(g.shape[0], -1).sum(axis=1)
    _same(ctx, gn_run, ln_run, ("group_norm", "layer_norm"), "G=1 vs LayerNorm", ("x", "weight", "bias"), fold)


@prop("identities", applies=named("group_norm"))
def group_norm_per_channel_groups_is_instance_norm(ctx: Context) -> None:
    """GroupNorm with G = C is InstanceNorm (Wu & He 2018, sec. 3.1; catalogue): outputs and all
    gradients agree on every input InstanceNorm accepts (at least 2 spatial elements)."""
    _needs(ctx, "instance_norm")
    case = ctx.case()
    x = case.x
    ctx.assume(x.ndim >= 3 and math.prod(x.shape[2:]) >= 2, "needs spatial dims with at least two values")
    gn = case.with_params(num_groups=x.shape[1])
    inn = Case("instance_norm", case.arrays, {"training": True, "eps": case.params["eps"]})
    dtype, layout = ctx.dtype(), ctx.layout()
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal(x.shape)
    _same(ctx, ctx.run(gn, dtype, layout, grads=OPTIONAL, dy=dy), ctx.run(inn, dtype, layout, grads=OPTIONAL, dy=dy),
          ("group_norm", "instance_norm"), "G=C vs InstanceNorm", ("x", "weight", "bias"))


@prop("identities", applies=named("rms_norm"))
def rms_norm_is_layer_norm_on_zero_mean_rows(ctx: Context) -> None:
    """On rows of mean zero RMSNorm equals LayerNorm without bias (mean(x^2) is then the variance;
    Zhang & Sennrich 2019, sec. 4): outputs and weight gradients agree. Rows [v, -v] have mean
    exactly zero in every dtype. (Input gradients differ: LayerNorm's projects out the mean.)"""
    _needs(ctx, "layer_norm")
    case = ctx.case()
    x = np.concatenate([case.x, -case.x], axis=-1)
    shape = tuple(case.params["normalized_shape"][:-1]) + (x.shape[-1],)
    w = case.get("weight")
    w = None if w is None else np.concatenate([w, w[..., ::-1]], axis=-1)
    rms = Case("rms_norm", {"x": x, "weight": w}, {"normalized_shape": shape, "eps": case.params["eps"]})
    ln = Case("layer_norm", {"x": x, "weight": w}, {"normalized_shape": shape, "eps": case.params["eps"]})
    dtype, layout = ctx.dtype(), ctx.layout()
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal(x.shape)
    _same(ctx, ctx.run(rms, dtype, layout, grads=OPTIONAL, dy=dy), ctx.run(ln, dtype, layout, grads=OPTIONAL, dy=dy),
          ("rms_norm", "layer_norm"), "zero-mean rows", ("weight",))


@prop("identities", applies=named("mvn"))
def mvn_is_instance_or_layer_norm_without_eps(ctx: Context) -> None:
    """With eps = 0 on both sides, where eps placement no longer matters, MVN with
    across_channels=False is InstanceNorm and with across_channels=True is LayerNorm over (C, *S)
    (catalogue): outputs and input gradients agree on inputs with no constant set."""
    case = ctx.case(normalize_variance=True, allow_constant=False, conventions=False).with_params(eps=0.0)
    x = case.x
    if case.params["across_channels"]:
        _needs(ctx, "layer_norm")
        other = Case("layer_norm", {"x": x}, {"normalized_shape": x.shape[1:], "eps": 0.0})
    else:
        _needs(ctx, "instance_norm")
        ctx.assume(math.prod(x.shape[2:]) >= 2, "needs at least two spatial values")
        other = Case("instance_norm", {"x": x}, {"training": True, "eps": 0.0})
    dtype, layout = ctx.dtype(), ctx.layout()
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal(x.shape)
    left = ctx.run(case, dtype, layout, grads=OPTIONAL, dy=dy)
    ctx.assume(np.all(np.ptp(left.case.x.reshape(x.shape[0], -1) if case.params["across_channels"]
                             else left.case.x.reshape(x.shape[0] * x.shape[1], -1), axis=1) > 0),
               "a constant reduction set (eps = 0 divides by zero)")
    _same(ctx, left, ctx.run(other, dtype, layout, grads=OPTIONAL, dy=dy), ("mvn", other.norm), "eps = 0")


# ---------------------------------------------------------------- GroupNorm

@prop("hygiene", applies=named("group_norm"))
def group_norm_single_value_input(ctx: Context) -> None:
    """An input with one value in all per group set across the batch (N * C/G * prod(S) = 1) is a
    zero-variance group: the backend returns beta within the model (the spec's answer), or raises
    an error that says what is wrong (PyTorch's choice). NaN or garbage fails."""
    template = ctx.case()
    g = template.params["num_groups"]
    nsp = ctx.draw(st.integers(0, 3), "spatial_dims")
    x = np.random.default_rng(ctx.seed("x_seed")).standard_normal((1, g) + (1,) * nsp)
    arrays = {"x": x} | {r: template.get(r)[: g] * 0 + np.resize(template.get(r), g) for r in ("weight", "bias")
                         if template.get(r) is not None}
    case = Case("group_norm", arrays, template.params)
    dtype = ctx.dtype()
    try:
        run = ctx.run(case, dtype)
    except PropertyFailure as exc:
        if str(exc.__cause__ or "").strip():
            return
        raise PropertyFailure(f"raised an error with an empty message [{ctx.backend.name} {case.describe()}]") from exc
    ref, _ = ctx.reference(run)
    assert_close(run.outputs["y"], ref["y"], ctx.bounds(run, ref, {})["y"], "y(one value per group)", where(ctx, run))


# ---------------------------------------------------------------- InstanceNorm

@prop("inference", applies=traits("per_instance_running_stats"))
def instance_eval_is_per_channel_affine(ctx: Context) -> None:
    """InstanceNorm in eval mode with running statistics is the per-channel affine map
    x gamma/sqrt(rv + eps) + (beta - rm gamma/sqrt(rv + eps)) (PyTorch `use_input_stats=False`):
    no statistic of the instance is used. An eval mode that still normalizes each instance fails."""
    case = ctx.case(training=False, track_running_stats=True)
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    scale, shift = folded_affine(run.case)
    shape = (1, -1) + (1,) * (run.case.x.ndim - 2)
    expected = run.case.x * scale.reshape(shape) + shift.reshape(shape)
    ref, _ = ctx.reference(run)
    assert_close(run.outputs["y"], expected, ctx.bounds(run, ref, {})["y"], "y_eval", where(ctx, run))


@prop("inference", applies=traits("per_instance_running_stats"))
def instance_running_stats_update(ctx: Context) -> None:
    """A training step with momentum 1 leaves running_mean = the batch-mean of the per-instance
    means and running_var = the batch-mean of the per-instance unbiased variances (PyTorch's
    F.instance_norm); with momentum=None (nn.InstanceNorm passes 0) they come back unchanged, up to
    the rounding of the batch-mean of N copies that PyTorch's module performs (the model's bound)."""
    case = ctx.case(training=True, track_running_stats=True)
    mode = ctx.draw(st.sampled_from(["momentum_1", "momentum_none"]), "update")
    case = case.with_params(momentum=1.0 if mode == "momentum_1" else None)
    dtype = ctx.dtype()
    run = ctx.run(case, dtype)
    at = where(ctx, run)
    ref, _ = ctx.reference(run)
    b = ctx.bounds(run, ref, {})
    if mode == "momentum_none":
        assert_close(run.outputs["running_mean"], run.case.get("running_mean"), b["running_mean"], "running_mean", at)
        assert_close(run.outputs["running_var"], run.case.get("running_var"), b["running_var"], "running_var", at)
        return
    x = run.case.x
    axes = tuple(range(2, x.ndim))
    assert_close(run.outputs["running_mean"], x.mean(axis=axes).mean(axis=0), b["running_mean"], "running_mean", at)
    assert_close(run.outputs["running_var"], x.var(axis=axes, ddof=1).mean(axis=0), b["running_var"],
                 "running_var (batch-mean of unbiased per-instance variances)", at)


@prop("hygiene", applies=traits("per_instance_running_stats"))
def instance_single_spatial_element_raises(ctx: Context) -> None:
    """Normalizing an instance of one spatial element by its own statistics has no variance to
    divide by: the backend must raise an error with a message, not return zeros, beta or NaN."""
    template = ctx.case(training=True, track_running_stats=False)
    nsp = ctx.draw(st.integers(1, 3), "spatial_dims")
    x = np.random.default_rng(ctx.seed("x_seed")).standard_normal(template.x.shape[:2] + (1,) * nsp)
    assert_raises_clearly(ctx, template.with_arrays(x=x), "one spatial element per instance")


# ---------------------------------------------------------------- RMSNorm

@prop("agreement", applies=named("rms_norm"))
def rms_norm_eps_none_rule(ctx: Context) -> None:
    """eps=None means torch.finfo(float32).eps for float16, bfloat16 and float32 inputs and
    finfo(float64).eps for float64 (PyTorch 2.13, measured): outputs and gradients agree with the
    spec evaluated with that eps. Rows are scaled so that mean(x^2) is within a few decades of it,
    where reading eps from the input dtype (as PyTorch's docs once said) misses by orders."""
    case, dtype, layout = ctx.case(eps_none=True), ctx.dtype(), ctx.layout()
    record = ctx.record
    eps = resolve_eps(None, dtype)
    k = len(case.params["normalized_shape"])
    axes = tuple(range(case.x.ndim - k, case.x.ndim))
    ms = np.mean(case.x**2, axis=axes, keepdims=True)
    target = eps * 10.0 ** ctx.draw(st.floats(-1.0, 2.0), "log10_meansquare_over_eps")
    x = case.x * np.sqrt(target / np.where(ms > 0, ms, 1.0))
    run = ctx.run(case.with_arrays(x=x), dtype, layout, grads=OPTIONAL)
    ref = record.reference(run.case, dtype=dtype)
    ref_grads = record.reference_grad(run.case, run.dy, dtype=dtype) if run.dy is not None else {}
    bounds = record.bounds(run.case, dtype, ref, run.dy, ref_grads)
    at = where(ctx, run) + f" eps=None -> {eps!r}"
    assert_close(run.outputs["y"], ref["y"], bounds["y"], "y", at)
    for role, g in ref_grads.items():
        assert_close(run.grads[role], g, bounds[role], f"d{role}", at)


# ---------------------------------------------------------------- MVN

@prop("invariance", applies=traits("eps_outside_sqrt"))
def mvn_scale_invariance(ctx: Context) -> None:
    """With eps outside the square root, f_eps(a x) = f_{eps/a}(x) for a > 0, and without variance
    normalization f(a x) = a f(x). With a a power of two every intermediate scales exactly, so the
    outputs are bitwise equal and the input gradient scales by 1/a (or 1). An implementation that
    puts eps inside the square root (or squares it) fails."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    k = ctx.draw(st.integers(-4, 4).filter(bool), "log2_a")
    a = 2.0**k
    base = ctx.rounded(case, dtype)
    eps = base.params.get("eps", 1e-9)
    nv = base.params.get("normalize_variance", True)
    scaled = base.with_arrays(x=base.x * a)
    if nv:
        base, scaled = base.with_params(eps=eps / a), scaled.with_params(eps=eps)
    ctx.assume(_fits(scaled.x, dtype) and _fits(base.x, dtype) and _fits(np.array([eps / a, eps]), dtype),
               "the scaled input or its eps does not fit the dtype")
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal(case.x.shape)
    r0 = ctx.run(base, dtype, layout, grads=OPTIONAL, dy=dy)
    r1 = ctx.run(scaled, dtype, layout, grads=OPTIONAL, dy=dy)
    dx = r0.grads.get("x", np.zeros(0))  # none from a forward-only backend: the y half is checked alone
    ctx.assume(_fits(r0.outputs["y"], dtype) and _fits(dx[np.isfinite(dx)], dtype),
               "the unscaled result is subnormal or overflows in the dtype")
    at = where(ctx, r1) + f" a=2^{k}"
    assert_equal(r1.outputs["y"], r0.outputs["y"] * (1.0 if nv else a), "y(a x)", at)
    if "x" in r0.grads:
        assert_equal(r1.grads["x"], r0.grads["x"] / (a if nv else 1.0), "dx(a x)", at)
