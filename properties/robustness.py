"""Robustness: ill-conditioned inputs, constant reduction sets, memory layouts."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.impls.layout import EXPANDED
from normspec.library.tolerance import compute_roundoff
from normspec.properties.agreement import compare_outputs, where
from normspec.properties.core import (
    OPTIONAL,
    Context,
    PropertyFailure,
    SweepPoint,
    assert_close,
    assert_equal,
    prop,
    representable,
    traits,
)
from normspec.properties.statistics import batch_stats_case


@prop("robustness", applies=traits("moment_normalizer"))
def ill_conditioned_inputs(ctx: Context) -> None:
    """Inputs whose reduction sets have |mean| >> std, up to |mean|/std = 0.01/u (the most the
    compute dtype can resolve), still agree with the spec within the model, whose bound grows
    only linearly in |mean|/std. One-pass variance E[x^2] - E[x]^2 errs like (|mean|/std)^2 u
    (values ~100 +- 0.01, LayerNorm at +2000: the reports in the catalogue) and fails here."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    view, c = ctx.record.moment_geometry(case)
    limit = math.log10(0.01 / compute_roundoff(dtype))
    ratio = 10.0 ** ctx.draw(st.floats(1.0, limit), "log10_mean_over_std")
    sign = ctx.draw(st.sampled_from([-1.0, 1.0]), "sign")
    centred = case.x.reshape(view) - c.mean
    spread = np.broadcast_to(np.sqrt(np.maximum(c.std**2 - case.params.get("eps", 1e-5), 0)), c.mean.shape)
    spread = np.where(spread > 0, spread, 1.0)
    x = (centred + sign * ratio * spread).reshape(case.x.shape)
    ctx.assume(representable(x, dtype), "the ill-conditioned input does not fit the dtype")
    shifted = case.with_arrays(x=x)
    if case.get("running_mean") is not None and not c.batch_stats:  # eval statistics move with the data
        shifted = shifted.with_arrays(running_mean=case.get("running_mean") - c.mean.reshape(-1)
                                      + sign * ratio * spread.reshape(-1))
    run = ctx.run(shifted, dtype, layout)
    ref, _ = ctx.reference(run)
    compare_outputs(ctx, run, ref, ctx.bounds(run, ref, {}))


CONSTANTS = [3.3, 1e7, -12345.678, 1.0, 0.1, 2.0**20 + 1, -7.25e-3]


@prop("robustness", applies=traits("moment_normalizer"), advisory=True)
def constant_group_gives_beta(ctx: Context) -> None:
    """A reduction set whose values are all equal normalizes to exactly 0, so its output is
    exactly beta (bitwise), whatever the constant, when the mean of equal values is computed
    exactly (Welford's update, or shifting by a member of the set, as PyTorch's LayerNorm and the
    spec do). Kernels that fold the mean into a shift term (x * scale + (beta - mean * scale)) or
    average by a plain sum miss by ~ |x| |gamma| u / sqrt(eps). Advisory: `check` holds backends
    to it; `validate` warns instead of rejecting, since a plain-sum mean is otherwise correct."""
    case = batch_stats_case(ctx, allow_constant=False)
    dtype, layout = ctx.dtype(), ctx.layout()
    value = ctx.draw(st.sampled_from(CONSTANTS), "constant")
    ctx.assume(representable(np.array([value]), dtype), "the constant is not a value of the dtype")
    view, c = ctx.record.moment_geometry(case)
    pick = np.random.default_rng(ctx.seed("group_seed"))
    group = tuple(int(pick.integers(0, s)) for s in c.mean.shape)
    index = tuple(slice(None) if a in c.stats_axes else group[a] for a in range(len(view)))
    x = np.array(case.x).reshape(view)
    x[index] = value
    run = ctx.run(case.with_arrays(x=x.reshape(case.x.shape)), dtype, layout)
    beta = np.broadcast_to(ctx.record.moment_geometry(run.case)[1].beta, view)
    assert_equal(run.outputs["y"].reshape(view)[index], np.array(beta[index]), "y(constant set)",
                 where(ctx, run) + f" constant={value!r}")


@prop("robustness")
def layout_consistency(ctx: Context) -> None:
    """Channels-last and non-contiguous strided inputs give the same outputs and gradients as
    contiguous ones (within twice the model's bound: kernels may sum in another order)."""
    case, dtype = ctx.case(), ctx.dtype()
    layouts = [lay for lay in ctx.backend.layouts if lay != "contiguous"]
    ctx.assume(bool(layouts), "the backend supports no other layout")
    layout = ctx.draw(st.sampled_from(layouts), "layout")
    base = ctx.run(case, dtype, "contiguous", grads=OPTIONAL)
    other = ctx.run(case, dtype, layout, grads=OPTIONAL, dy=base.dy)
    ref, ref_grads = ctx.reference(base)
    bounds = ctx.bounds(base, ref, ref_grads)
    at = where(ctx, other) + " vs contiguous"
    for name, value in base.outputs.items():
        assert_close(other.outputs[name], value, 2 * bounds[name], name, at)
    for role, g in base.grads.items():
        assert_close(other.grads[role], g, 2 * bounds[role], f"d{role}", at)


def _has_torch_module(record) -> bool:
    return bool(record.torch_modules)


_has_torch_module.requirement = "a torch.nn module equivalent (the norms a fused kernel replaces)"


def layout_pairs(backend, record) -> list[SweepPoint]:
    """Every (x layout, dy layout) pair the backend offers, each visited on every run: a backward
    that is wrong for one pairing only (dy expanded under a channels_last x) is not left to chance.
    A pair with channels_last draws 4-D inputs (spatial_dims=2) where the norm takes the override."""
    dy_layouts = list(backend.layouts) + list(getattr(backend, "extra_layouts", ()))
    return [SweepPoint(f"x {x}, dy {dy}", {"layout": st.just(x), "dy_layout": st.just(dy)},
                       case_overrides={"spatial_dims": 2} if "channels_last" in (x, dy) else {})
            for x in backend.layouts for dy in dy_layouts if dy != x]


@prop("robustness", applies=_has_torch_module, sweep=layout_pairs)
def mixed_layouts_match_spec(ctx: Context) -> None:
    """The upstream gradient need not have the input's memory layout, and parameters need not be
    contiguous: with x in one layout and dy in another (channels_last vs contiguous both ways, a
    view one element into its buffer, every other element of a wider one, or expanded along the
    batch with stride 0), and weight and bias non-contiguous, the outputs and gradients equal the
    spec within the model. A backward that reads dy's memory as if it had x's strides (a fused
    kernel that skips .contiguous()) or that ignores a storage offset fails here."""
    case, dtype = ctx.case(), ctx.dtype()
    b = ctx.backend
    x_layout = ctx.draw(st.sampled_from(list(b.layouts)), "layout")
    dy_layouts = [lay for lay in list(b.layouts) + list(getattr(b, "extra_layouts", ())) if lay != x_layout]
    ctx.assume(bool(dy_layouts), f"{b.name} has one layout only")
    dy_layout = ctx.draw(st.sampled_from(dy_layouts), "dy_layout")
    param_layout = ctx.draw(st.sampled_from([lay for lay in b.layouts if lay != "channels_last"]), "param_layout")
    shape = ctx.record.reference(case)["y"].shape
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal(shape)
    if dy_layout == EXPANDED:
        ctx.assume(len(shape) >= 1, "a scalar output has no axis to expand")
        dy = np.broadcast_to(dy[:1], shape).copy()
    run = ctx.run(case, dtype, x_layout, grads=OPTIONAL, dy=dy, dy_layout=dy_layout, param_layout=param_layout)
    ref, ref_grads = ctx.reference(run)
    bounds = ctx.bounds(run, ref, ref_grads)
    at = f" with dy {dy_layout}, weight/bias {param_layout}"
    try:
        compare_outputs(ctx, run, ref, bounds)
        for role, expected in ref_grads.items():
            assert_close(run.grads.get(role, np.full(np.shape(expected), np.nan)), expected, bounds[role],
                         f"d{role}", where(ctx, run))
    except PropertyFailure as exc:
        raise PropertyFailure(f"{exc}{at}") from None
