"""Hygiene: the caller's arrays are untouched, results are deterministic, bad input is refused."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library.strategies import Reach
from normspec.properties.agreement import where
from normspec.properties.core import OPTIONAL, Context, PropertyFailure, SweepPoint, assert_equal, prop, traits

LONG = 2**16 + 1


def one_long_case(backend, record) -> list[SweepPoint]:
    """Kernels switch path past a size (a cached workspace for large outputs, split reductions with
    atomics for long rows): every run also makes one call of 5 sets of 2^16 + 1 values, for the
    norms whose cases lay out reach geometries."""
    if not record.takes("reach"):
        return []
    return [SweepPoint(f"5 sets of {LONG} values", {}, case_overrides={"reach": Reach(LONG, 5, (LONG,))})]


@prop("hygiene")
def inputs_unmodified(ctx: Context) -> None:
    """Forward and backward leave every array the caller passed (input, affine parameters,
    running statistics, upstream gradient) bitwise unchanged; updated state is returned, not
    written into the caller's buffers."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    ctx.supported(case, dtype, layout)
    b = ctx.backend
    case = ctx.rounded(case, dtype)
    natives = ctx.natives(case, dtype, layout)
    before = {r: b.to_numpy(v) for r, v in natives.items()}
    at = f"{b.name} {dtype} {layout} {case.describe()}"
    seed = ctx.seed("dy_seed")
    try:
        y = b.forward(case.norm, natives, case.params)["y"]
        dy = b.native(np.random.default_rng(seed).standard_normal(b.to_numpy(y).shape), dtype, layout)
        dy_before = b.to_numpy(dy)
        wrt = tuple(r for r in ctx.record.differentiable if case.get(r) is not None)
        if getattr(b, "differentiates", True):  # a forward-only engine: the forward call is checked
            b.gradients(case.norm, natives, case.params, dy, wrt)
    except Exception as exc:
        raise PropertyFailure(f"raised {type(exc).__name__}: {exc} [{at}]") from exc
    for role, value in before.items():
        assert_equal(b.to_numpy(natives[role]), value, f"{role} after the call", at)
    assert_equal(b.to_numpy(dy), dy_before, "dy after the call", at)


@prop("hygiene", sweep=one_long_case)
def outputs_not_aliased(ctx: Context) -> None:
    """Two calls return independent results: the outputs of the second share no memory with those of
    the first, and the first call's outputs are unchanged by the second call. A kernel that hands
    back one cached output buffer per shape (a workspace reused across calls) breaks it: the caller's
    earlier result silently changes. The second call's input is the first's, permuted and negated."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    ctx.supported(case, dtype, layout)
    case = ctx.rounded(case, dtype)
    rng = np.random.default_rng(ctx.seed("permutation_seed"))
    other = case.with_arrays(x=-rng.permutation(case.x.ravel()).reshape(case.x.shape))
    b = ctx.backend
    at = f"{b.name} {dtype} {layout} {case.describe()}"
    try:
        first = b.forward(case.norm, ctx.natives(case, dtype, layout), case.params)
        before = {name: b.to_numpy(value) for name, value in first.items()}
        second = b.forward(case.norm, ctx.natives(other, dtype, layout), case.params)
    except Exception as exc:
        raise PropertyFailure(f"raised {type(exc).__name__}: {exc} [{at}]") from exc
    for name, value in first.items():
        for other_name, later in second.items():
            if b.shares_memory(value, later):
                raise PropertyFailure(f"{other_name} of a second call shares memory with {name} of the first call: "
                                      f"the caller's earlier result is overwritten [{at}]")
        assert_equal(b.to_numpy(value), before[name], f"{name} of the first call after a second call", at)


@prop("hygiene", sweep=one_long_case)
def deterministic(ctx: Context) -> None:
    """The same inputs give bitwise the same outputs and gradients on every call."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    first = ctx.run(case, dtype, layout, grads=OPTIONAL)
    second = ctx.run(case, dtype, layout, grads=OPTIONAL, dy=first.dy)
    for name, value in first.outputs.items():
        assert_equal(second.outputs[name], value, f"{name} (second call)", where(ctx, second))
    for role, value in first.grads.items():
        assert_equal(second.grads[role], value, f"d{role} (second call)", where(ctx, second))


@prop("hygiene", applies=traits("batch_dependent"))
def single_value_per_channel_raises(ctx: Context) -> None:
    """Training on a batch with one value per channel (N * prod(S) = 1) has no variance to
    normalize by: the backend must raise an error, not return zeros, NaN or garbage."""
    template = ctx.case(training=True)
    c = template.x.shape[1]
    nsp = ctx.draw(st.integers(0, 3), "spatial_dims")
    x = np.random.default_rng(ctx.seed("x_seed")).standard_normal((1, c) + (1,) * nsp)
    case = template.with_arrays(x=x).with_params(training=True)
    if ctx.record.has("rank_synchronized"):  # the one sample lives on one rank
        case = case.with_params(rank_sizes=(1,))
    assert_raises_clearly(ctx, case, "one value per channel in training")


def assert_raises_clearly(ctx: Context, case, why: str) -> None:
    """The backend must refuse `case` with an exception that has a message (never a silent result)."""
    dtype = ctx.dtype()
    ctx.supported(case, dtype)
    b = ctx.backend
    try:
        out = b.forward(case.norm, ctx.natives(case, dtype, "contiguous"), case.params)
    except Exception as exc:
        if not str(exc).strip():
            raise PropertyFailure(f"raised {type(exc).__name__} with an empty message [{b.name} {case.describe()}]")
        return
    y = b.to_numpy(out["y"])
    raise PropertyFailure(f"returned y={y.ravel()[:4].tolist()}..., but should raise an error "
                          f"({why}) [{b.name} {dtype} {case.describe()}]")


def _empty_axes(record, case) -> list[int]:
    """The axes that may be 0 in a valid call: every axis but the channels (axis 1) for channel
    norms, the batch axes (not the normalized ones) for LayerNorm-style norms."""
    x = case.x
    if record.has("channel_axis_1"):
        return [a for a in range(x.ndim) if a != 1]
    k = len(tuple(case.params.get("normalized_shape", ())))
    return list(range(x.ndim - k)) if k else [0]


@prop("hygiene", applies=traits("accepts_empty"))
def empty_input_gives_empty_output(ctx: Context) -> None:
    """A zero-size batch or spatial dimension is a valid call (PyTorch accepts it): the output is
    empty with the input's shape, running statistics are left as they are (an empty batch has no
    statistics; BatchNorm still counts the call in num_batches_tracked), the input gradient is
    empty and the weight and bias gradients are exactly 0 (sums of nothing). Kernels that divide
    by the count or launch a grid of size 0 return NaN statistics or raise."""
    pinned = {k: True for k in ("training", "track_running_stats") if ctx.record.takes(k)}
    case = ctx.case(**pinned)  # running statistics in training: the state an empty batch must not touch
    axes = _empty_axes(ctx.record, case)
    ctx.assume(bool(axes), "no axis may be empty")
    axis = ctx.draw(st.sampled_from(axes), "empty_axis")
    shape = tuple(0 if a == axis else s for a, s in enumerate(case.x.shape))
    empty = case.with_arrays(x=np.zeros(shape))
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(empty, dtype, layout, grads=OPTIONAL, dy=np.zeros(shape))
    at = where(ctx, run)
    ref, _ = ctx.reference(run)
    if run.outputs["y"].shape != shape:
        raise PropertyFailure(f"y has shape {run.outputs['y'].shape}, but should have shape {shape} [{at}]")
    for name, expected in ref.items():
        if name.startswith("running_"):  # state; saved statistics of no values are not compared
            if name not in run.outputs:
                raise PropertyFailure(f"{name} was not returned, but should be the unchanged {name} [{at}]")
            assert_equal(run.outputs[name], expected, f"{name} after an empty batch", at)
    for role, g in run.grads.items():
        expected = np.zeros(run.case.get(role).shape)
        assert_equal(g, expected, f"d{role} of an empty batch", at)
