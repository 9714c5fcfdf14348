"""Reach: the sizes and magnitudes where real kernels change behaviour.

Everywhere else the suite draws small cases (a few hundred values per reduction), where every
kernel takes its simplest path. Fused kernels tile a reduction into blocks and mask the last one,
switch algorithms above a length, launch one program per row (CUDA grids stop at 65535), and keep
half-precision intermediates that overflow past 65504 only for values in the hundreds or sums of
tens of thousands of terms. These properties draw exactly there, on a budget: one forward and one
backward per example, a few hundred thousand values at most (`normspec.library.strategies.reach`).
"""
from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from normspec.library.strategies import reach
from normspec.properties.agreement import compare_outputs, where
from normspec.properties.core import Context, PropertyFailure, SweepPoint, assert_close, prop


def takes_reach(record) -> bool:
    """The record's case strategy can lay out a reach draw (its declared `reach` override)."""
    return record.takes("reach")


takes_reach.requirement = "a case strategy that lays out reach draws (cases(reach=...))"


def reach_sweep(backend, record) -> list[SweepPoint]:
    """The reach draws every run makes besides its random ones: in each dtype the backend has,
    2^16 - 1, 2^16 and 2^16 + 1 values per set (past every power-of-two block up to 2^16 with a
    one-value tail, past 2048 terms where float16 stops resolving +1, past 65504 where a float16
    count or sum is inf, past any length threshold of a size-switched path), contiguous and, for
    norms with a channel axis, channels_last (kernels keep a separate channels-last path); and
    65535-65537 sets of a few values (past CUDA's 65535 grid limit) in one dtype. The random draws
    shrink a failure to its shortest length; these make sure the long end is never left out (a
    kernel wrong only past 4096 values in float16 is one random draw in ~60)."""
    layouts = ["contiguous"]
    if record.has("channel_axis_1") and "channels_last" in backend.layouts:
        layouts.append("channels_last")
    points = [SweepPoint(f"{d} {layout}, 2^16 +- 1 values per set",
                         {"dtype": st.just(d), "reach": reach(d, base=2**16), "layout": st.just(layout)}, d,
                         case_overrides={"spatial_dims": 2} if layout == "channels_last" else {})
              for d in backend.dtypes for layout in layouts]
    wide = "float32" if "float32" in backend.dtypes else next(iter(backend.dtypes), None)
    if wide is not None:
        points.append(SweepPoint(f"{wide}, 65535-65537 sets", {"dtype": st.just(wide),
                                                               "reach": reach(wide, many_sets=True)}, wide))
    return points


def _reach_runs(ctx: Context, grads: bool):
    """One reach draw, laid out at each of its lengths (n - 1, n, n + 1): yields the run, the spec's
    outputs and gradients, the model's bounds and a note for messages, shortest length first."""
    dtype = ctx.dtype()
    r = ctx.draw(reach(dtype), "reach")
    layout = ctx.layout()
    for length in r.lengths:
        at_length = replace(r, length=length)
        case = ctx.case(f"case_{length}", reach=at_length)
        run = ctx.run(case, dtype, layout, grads=grads)
        ref, ref_grads = ctx.reference(run)
        yield run, ref, ref_grads, ctx.bounds(run, ref, ref_grads), f" [reach: {at_length.describe()}]"


@prop("reach", applies=takes_reach, sweep=reach_sweep)
def reach_forward_matches_spec(ctx: Context) -> None:
    """At the lengths where kernels change behaviour (2^k - 1, 2^k, 2^k + 1 up to 2^16 + 1 values
    per row, channel, group or instance; block sizes; ~100 x 100 maps; 65535-65537 rows) and the
    magnitudes at the dtype's edge (float16 squares and sums past 65504, squares below the
    smallest subnormal, eps below it, |mean|/std up to 300 at large counts), the forward output
    and the running statistics equal the spec within the tolerance model. Catches a forgotten
    tail mask, a block loop that drops a remainder, a path switched on the length (one-pass
    variance above a count), half-precision accumulators and intermediates; the shrinker ends at
    the shortest failing length it can draw (powers of two before other block sizes)."""
    for run, ref, _, bounds, at in _reach_runs(ctx, grads=False):
        try:
            compare_outputs(ctx, run, ref, bounds)
        except PropertyFailure as exc:
            raise PropertyFailure(f"{exc}{at}") from None


@prop("reach", applies=takes_reach, sweep=reach_sweep)
def reach_backward_matches_spec(ctx: Context) -> None:
    """The gradients with respect to the input, weight and bias at the same reach draws (lengths
    up to 2^16 + 1, 65535-65537 rows, magnitudes at the dtype's edge) equal the spec's closed-form
    backward within the tolerance model: the backward's own reductions (sum dy, sum dy xhat) have
    the tails, blocks and accumulators the forward has."""
    for run, ref, ref_grads, bounds, at in _reach_runs(ctx, grads=True):
        try:
            for role, expected in ref_grads.items():
                if role not in run.grads:
                    raise PropertyFailure(f"d{role} was not returned, but should be the gradient of {role} "
                                          f"[{where(ctx, run)}]")
                assert_close(run.grads[role], expected, bounds[role], f"d{role}", where(ctx, run))
        except PropertyFailure as exc:
            raise PropertyFailure(f"{exc}{at}") from None
