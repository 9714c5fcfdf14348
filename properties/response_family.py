"""Identities of the response normalizations (LRN conventions, MatConvNet) and of divisive
normalization, checked on the backend against itself or against the BatchNorm/LayerNorm specs."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.properties.agreement import where
from normspec.properties.core import OPTIONAL, Context, assert_close, named, prop, traits
from normspec.properties.invariance import MAX_FINITE, _fits
from normspec.registry import get_norm
from normspec.spec import batch_norm, batch_norm_backward, layer_norm, layer_norm_backward


def _bounds(ctx: Context, run, grads: bool = False):
    """The tolerance model of the norm that `run` evaluated (it may not be ctx.record)."""
    record = get_norm(run.case.norm)
    ref = record.reference(run.case)
    ref_grads = record.reference_grad(run.case, run.dy) if grads else {}
    return record.bounds(run.case, run.dtype, ref, run.dy if grads else None, ref_grads)


def _compare(ctx, a, b, what, flip_channels=False):
    """a's output equals b's (channel-reversed when flip_channels), each within its own model bound."""
    ya, yb = a.outputs["y"], b.outputs["y"]
    bound = np.abs(_bounds(ctx, a)["y"]) + np.abs(_bounds(ctx, b)["y"])[:, ::-1] if flip_channels else \
        np.abs(_bounds(ctx, a)["y"]) + np.abs(_bounds(ctx, b)["y"])
    assert_close(ya, yb[:, ::-1] if flip_channels else yb, bound, what, where(ctx, a) + f" vs {b.case.describe()}")


CONVERSIONS = ("tensorflow", "caffe_across", "onnx_odd", "onnx_even")


@prop("identities", applies=named("local_response_norm"))
def lrn_conventions_convert(ctx: Context) -> None:
    """The LRN conventions are one operator (catalogue row 11, frameworks' docs): TensorFlow's
    depth_radius r with alpha equals PyTorch's size 2r+1 with alpha (2r+1); Caffe ACROSS_CHANNELS and
    ONNX equal PyTorch for odd sizes; for even sizes ONNX's window leans forwards where PyTorch's
    leans backwards, so ONNX(x) is PyTorch applied to the channel-reversed x, reversed back."""
    which = ctx.draw(st.sampled_from(CONVERSIONS), "conversion")
    convention = "onnx" if which.startswith("onnx") else which
    parity = "even" if which == "onnx_even" else "odd"
    case = ctx.case(convention=convention, parity=parity)
    dtype, layout = ctx.dtype(), ctx.layout()
    n = case.params["size"]
    torch_like = case.with_params(convention="pytorch")
    if which == "tensorflow":
        torch_like = torch_like.with_params(alpha=case.params["alpha"] * n)
    flip = which == "onnx_even"
    if flip:
        torch_like = torch_like.with_arrays(x=case.x[:, ::-1])
    a, b = ctx.run(case, dtype, layout), ctx.run(torch_like, dtype, layout)
    _compare(ctx, a, b, f"y[{convention}]", flip_channels=flip)


@prop("identities", applies=named("matconvnet_cross_channel"))
def matconvnet_is_lrn_with_alpha_times_n(ctx: Context) -> None:
    """MatConvNet's cross-channel normalization with (N, kappa, alpha) is LRN with size N, k = kappa
    and alpha N (catalogue row 12): MatConvNet does not divide alpha by N. Its window G(c) leans
    forwards like ONNX's, so it equals ONNX LRN for every N and PyTorch's LRN for odd N."""
    case = ctx.case()
    dtype, layout = ctx.dtype(), ctx.layout()
    p = case.params
    convention = ctx.draw(st.sampled_from(["onnx", "pytorch"] if p["size"] % 2 else ["onnx"]), "convention")
    lrn = case.__class__("local_response_norm", {"x": case.x},
                         {"size": p["size"], "alpha": p["alpha"] * p["size"], "beta": p["beta"], "k": p["kappa"],
                          "convention": convention})
    a, b = ctx.run(case, dtype, layout), ctx.run(lrn, dtype, layout)
    _compare(ctx, a, b, f"y[matconvnet vs {convention} LRN]")


@prop("invariance", applies=traits("zero_offset_homogeneous"))
def response_homogeneity(ctx: Context) -> None:
    """With the additive offset 0 (k = 0, kappa = 0) the response normalization is positively
    homogeneous of degree 1 - 2 beta: f(a x) = a^(1 - 2 beta) f(x) for a > 0. A kernel that squares
    the wrong quantity, or adds the offset after the power, breaks it."""
    case = ctx.case(zero_offset=True)
    dtype, layout = ctx.dtype(), ctx.layout()
    k = ctx.draw(st.integers(-3, 3).filter(bool), "log2_a")
    a = 2.0**k
    base = ctx.rounded(case, dtype)
    ctx.assume(np.all(base.x != 0) and np.abs(base.x).max() * max(a, 1.0) < MAX_FINITE[dtype] ** 0.25,
               "zero inputs, or a scaled input whose power overflows")
    scaled = base.with_arrays(x=base.x * a)
    for c in (base, scaled):  # the outputs must be normal numbers of the dtype, not overflow or underflow
        ctx.assume(_fits(ctx.record.reference(c)["y"], dtype), "a scaled result does not fit the dtype")
    r0, r1 = ctx.run(base, dtype, layout), ctx.run(scaled, dtype, layout)
    power = a ** (1.0 - 2.0 * base.params["beta"])
    bound = np.abs(_bounds(ctx, r1)["y"]) + power * np.abs(_bounds(ctx, r0)["y"])
    assert_close(r1.outputs["y"], power * r0.outputs["y"], bound, "y(a x)",
                 where(ctx, r1) + f" vs a^(1-2beta) y(x), a=2^{k}")


def _divisive_as(ctx: Context, kind: str):
    case = ctx.case(batch_field="all" if kind == "batch_norm" else 1)
    x = case.x
    if kind == "batch_norm":
        ctx.assume(x.size // x.shape[1] > 1, "needs more than one value per channel")
        fields = ("all", 1) + ("all",) * (x.ndim - 2)
    else:
        fields = (1,) + ("all",) * (x.ndim - 1)
    return case.with_params(summation=fields, suppression=fields)


@prop("identities", applies=named("divisive_norm"))
def divisive_special_cases(ctx: Context) -> None:
    """BatchNorm and LayerNorm are divisive normalization with particular fields (Ren et al. 2017,
    sec. 3; catalogue row 19): A = B = all of (N, *S) per channel is BatchNorm's training forward,
    A = B = all of (C, *S) per sample is LayerNorm over (C, *S) with per-channel affine, with
    eps = sigma^2, for either border rule. Outputs and gradients are compared with the BatchNorm
    and LayerNorm specs."""
    kind = ctx.draw(st.sampled_from(["batch_norm", "layer_norm"]), "special_case")
    case = _divisive_as(ctx, kind)
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout, grads=OPTIONAL)
    c, eps = run.case, run.case.params["eps"]
    x, w, b = c.x, c.get("weight"), c.get("bias")
    has_grads = run.dy is not None  # a forward-only backend: the forward half is checked alone
    if kind == "batch_norm":
        y = batch_norm(x, w, b, training=True, eps=eps).y
        grads = batch_norm_backward(run.dy, x, w, training=True, eps=eps) if has_grads else {}
    else:
        shape = x.shape[1:]
        def full(p):
            return None if p is None else np.broadcast_to(p.reshape((-1,) + (1,) * (x.ndim - 2)), shape)
        y = layer_norm(x, shape, full(w), full(b), eps=eps)
        grads = layer_norm_backward(run.dy, x, shape, full(w), eps=eps) if has_grads else {}
        axes = tuple(range(1, x.ndim - 1))
        grads = {r: g.sum(axis=axes) if axes and r != "x" else g for r, g in grads.items()}
    bounds = _bounds(ctx, run, grads=has_grads)
    at = where(ctx, run) + f" vs the {kind} spec"
    assert_close(run.outputs["y"], y, bounds["y"], f"y[{kind}]", at)
    for role, g in run.grads.items():
        assert_close(g, grads[role], bounds[role], f"d{role}[{kind}]", at)


@prop("invariance", applies=named("divisive_norm"))
def divisive_shift_invariance(ctx: Context) -> None:
    """Adding one constant to every value of a sample leaves divisive normalization unchanged when
    the summation field averages over in-range positions (border="exclude", eq. 1's |A_j|): the field
    mean moves by the same constant. The values are put on a grid where x + b is exact."""
    case = ctx.case(batch_field=1, border="exclude")
    dtype, layout = ctx.dtype(), ctx.layout()
    shift = float(np.abs(case.x).max() + 1.0) * ctx.draw(st.sampled_from([-3.0, 1.0, 10.0]), "shift_ratio")
    total = float(np.abs(case.x).max() + abs(shift))
    step = 2.0 ** (np.ceil(np.log2(total)) - ({"float64": 53, "float32": 24, "float16": 11, "bfloat16": 8}[dtype] - 2))
    x_q = np.round(case.x / step) * step
    shift_q = np.round(shift / step) * step
    run = ctx.run(case.with_arrays(x=x_q + shift_q), dtype, layout)
    ctx.assume(np.array_equal(run.case.x, x_q + shift_q), "the shift is not exact in the dtype")
    base = ctx.run(case.with_arrays(x=x_q), dtype, layout)
    bound = np.abs(_bounds(ctx, run)["y"]) + np.abs(_bounds(ctx, base)["y"])
    assert_close(run.outputs["y"], base.outputs["y"], bound, "y(x + b)", where(ctx, run) + " vs y(x)")
