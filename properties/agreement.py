"""Agreement with the spec: forward outputs, updated state and gradients, within the model."""
from __future__ import annotations

from normspec.properties.core import Context, PropertyFailure, assert_close, prop


def where(ctx: Context, run) -> str:
    return f"{ctx.backend.name} {run.dtype} {run.layout} {run.case.describe()}"


def compare_outputs(ctx: Context, run, ref, bounds, names=None) -> None:
    for name in names or ref:
        if name not in run.outputs:
            raise PropertyFailure(f"{name} was not returned, but should be the updated {name} [{where(ctx, run)}]")
        assert_close(run.outputs[name], ref[name], bounds[name], name, where(ctx, run))


@prop("agreement")
def forward_matches_spec(ctx: Context) -> None:
    """The forward output and any updated running statistics equal the float64 spec evaluated on
    the same dtype-rounded inputs, within the tolerance model, for every drawn shape, parameter
    set, convention, dtype and memory layout."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    ref, _ = ctx.reference(run)
    compare_outputs(ctx, run, ref, ctx.bounds(run, ref, {}))


@prop("agreement")
def backward_matches_spec(ctx: Context) -> None:
    """The gradients with respect to the input, weight and bias equal the spec's closed-form
    backward (itself checked against finite differences) within the tolerance model. A backward
    that treats the batch statistics as constants passes every forward check and fails here."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout, grads=True)
    ref, ref_grads = ctx.reference(run)
    bounds = ctx.bounds(run, ref, ref_grads)
    for role, expected in ref_grads.items():
        if role not in run.grads:
            raise PropertyFailure(f"d{role} was not returned, but should be the gradient of {role} [{where(ctx, run)}]")
        assert_close(run.grads[role], expected, bounds[role], f"d{role}", where(ctx, run))
