"""Inference equivalence for norms with running batch statistics (BatchNorm and its relatives).

They apply to records with both `running_stats` and `batch_dependent` traits: per-channel
statistics over (N, *S) in training, the running statistics in eval.
"""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.tolerance import SAFETY, storage_roundoff
from normspec.properties.agreement import where
from normspec.properties.core import Context, assert_close, prop, traits


def _channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def folded_affine(case):
    """(scale, shift) per channel with eval output = x * scale + shift:
    scale = gamma / sqrt(rv + eps), shift = beta - rm * scale."""
    c = case.x.shape[1]
    gamma = case.get("weight") if case.get("weight") is not None else np.ones(c)
    beta = case.get("bias") if case.get("bias") is not None else np.zeros(c)
    scale = gamma / np.sqrt(case.get("running_var") + case.params.get("eps", 1e-5))
    return scale, beta - case.get("running_mean") * scale


@prop("inference", applies=traits("running_stats", "batch_dependent"))
def eval_is_per_channel_affine(ctx: Context) -> None:
    """In eval mode with running statistics the layer is the per-channel affine map
    x * gamma/sqrt(rv + eps) + (beta - rm * gamma/sqrt(rv + eps)): no batch statistic is used.
    An eval mode that still normalizes by the batch fails it."""
    case = ctx.case(training=False, track_running_stats=True)
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    scale, shift = folded_affine(run.case)
    shape = _channel_shape(run.case.x)
    expected = run.case.x * scale.reshape(shape) + shift.reshape(shape)
    ref, _ = ctx.reference(run)
    assert_close(run.outputs["y"], expected, ctx.bounds(run, ref, {})["y"], "y_eval", where(ctx, run))


def _conv2d(u: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float64 'valid' 2-D convolution (cross-correlation, as torch.nn.Conv2d)."""
    kh, kw = w.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(u, (kh, kw), axis=(2, 3))  # N, K, H', W', kh, kw
    return np.einsum("nkhwij,ckij->nchw", windows, w) + b.reshape(1, -1, 1, 1)


@prop("inference", applies=traits("running_stats", "batch_dependent"))
def fold_into_preceding_layer(ctx: Context) -> None:
    """BatchNorm in eval after a Linear or Conv2d layer equals that layer with the folded weight
    W'_o = W_o gamma_o/sqrt(rv_o + eps) and bias b' = (b - rm) gamma/sqrt(rv + eps) + beta
    (exact in exact arithmetic): the conversion every inference engine applies."""
    kind = ctx.draw(st.sampled_from(["linear", "conv2d"]), "layer")
    rng = np.random.default_rng(ctx.seed("layer_seed"))
    # the norm's own case fixes the batch size (and anything tied to it, such as rank splits)
    template = ctx.case(training=False, track_running_stats=True, spatial_dims=0 if kind == "linear" else 2)
    n = template.x.shape[0]
    k, c = ctx.draw(st.integers(1, 4), "K"), ctx.draw(st.integers(1, 4), "C")
    if kind == "linear":
        u, w = rng.standard_normal((n, k)), rng.standard_normal((c, k))
        b = rng.standard_normal(c)
        z = u @ w.T + b
    else:
        u, w = rng.standard_normal((n, k, 5, 4)), rng.standard_normal((c, k, 3, 2))
        b = rng.standard_normal(c)
        z = _conv2d(u, w, b)
    stats = {r: template.get(r) for r in ("weight", "bias")}
    axes = (0,) + tuple(range(2, z.ndim))
    arrays = {
        "x": z,
        "running_mean": z.mean(axis=axes) + rng.normal(0, 0.5, c),
        "running_var": z.var(axis=axes) * rng.uniform(0.3, 3.0, c) + 1e-3,
        "weight": None if stats["weight"] is None else rng.uniform(0.25, 3.0, c),
        "bias": None if stats["bias"] is None else rng.normal(0, 2.0, c),
    }
    case = Case(template.norm, {r: a for r, a in arrays.items() if a is not None}, template.params)
    dtype = ctx.dtype()
    run = ctx.run(case, dtype)
    scale, shift = folded_affine(run.case)
    w_folded = w * scale.reshape((c,) + (1,) * (w.ndim - 1))
    b_folded = ((b - run.case.get("running_mean")) * scale
                + (run.case.get("bias") if run.case.get("bias") is not None else 0.0))
    folded = u @ w_folded.T + b_folded if kind == "linear" else _conv2d(u, w_folded, b_folded)
    # the layer's output reaches the norm rounded to dtype: that input rounding is part of the bound
    ref, _ = ctx.reference(run)
    shape = _channel_shape(z)
    bound = ctx.bounds(run, ref, {})["y"] + SAFETY * storage_roundoff(dtype) * np.abs(z * scale.reshape(shape))
    assert_close(run.outputs["y"], folded, bound, f"y({kind}+bn)", where(ctx, run) + f" vs folded {kind}")


@prop("inference", applies=traits("running_stats", "batch_dependent"))
def train_equals_eval_on_batch_stats(ctx: Context) -> None:
    """The training-mode output equals the eval-mode output when the running statistics are set
    to the batch's own mean and biased variance: training normalizes by exactly those."""
    case = ctx.case(training=True, track_running_stats=True)
    dtype, layout = ctx.dtype(), ctx.layout()
    train = ctx.run(case, dtype, layout)
    x = train.case.x
    axes = (0,) + tuple(range(2, x.ndim))
    evaluated = train.case.with_arrays(running_mean=x.mean(axis=axes), running_var=x.var(axis=axes))
    evaluated = evaluated.with_params(training=False)
    eval_run = ctx.run(evaluated, dtype, layout)
    ref_t, _ = ctx.reference(train)
    ref_e, _ = ctx.reference(eval_run)
    bound = ctx.bounds(train, ref_t, {})["y"] + ctx.bounds(eval_run, ref_e, {})["y"]
    # the batch statistics reach eval mode rounded to dtype: an input perturbation of relative
    # size u in the mean and variance, amplified by |mean|/s and |xhat|
    c = ctx.record.conditioning(train.case)
    bound = bound + SAFETY * storage_roundoff(dtype) * np.abs(c.gamma) * (1 + np.abs(c.xhat) + np.abs(c.mean) / c.std)
    assert_close(eval_run.outputs["y"], train.outputs["y"], bound, "y_eval(batch stats)",
                 where(ctx, eval_run) + " vs training output")


@prop("inference", applies=traits("running_stats", "batch_dependent"))
def cumulative_moving_average(ctx: Context) -> None:
    """With momentum=None, after k training steps from fresh buffers (mean 0, var 1, count 0) the
    running mean is the plain average of the k batch means and the running variance the average
    of the k unbiased batch variances (PyTorch's cumulative moving average, factor 1/t)."""
    case = ctx.case(training=True, track_running_stats=True, conventions=False)
    steps = ctx.draw(st.integers(2, 4), "steps")
    rng = np.random.default_rng(ctx.seed("batches_seed"))
    dtype = ctx.dtype()
    c = case.x.shape[1]
    state = {"running_mean": np.zeros(c), "running_var": np.ones(c)}
    means, variances, bound_m, bound_v = [], [], 0.0, 0.0
    for t in range(steps):
        x = case.x * rng.uniform(0.5, 2.0) + rng.normal(0.0, 3.0)
        step = case.with_arrays(x=x, **state).with_params(momentum=None, num_batches_tracked=t)
        run = ctx.run(step, dtype)
        ref, _ = ctx.reference(run)
        b = ctx.bounds(run, ref, {})
        bound_m, bound_v = bound_m + b["running_mean"], bound_v + b["running_var"]
        xr = run.case.x
        axes = (0,) + tuple(range(2, xr.ndim))
        means.append(xr.mean(axis=axes))
        variances.append(xr.var(axis=axes, ddof=1))
        state = {"running_mean": run.outputs["running_mean"], "running_var": run.outputs["running_var"]}
    at = where(ctx, run) + f" after {steps} steps with momentum=None"
    assert_close(state["running_mean"], np.mean(means, axis=0), bound_m, "running_mean", at)
    assert_close(state["running_var"], np.mean(variances, axis=0), bound_v, "running_var", at)


@prop("inference", applies=traits("running_stats", "batch_dependent"))
def running_var_convention(ctx: Context) -> None:
    """A single step that replaces the running statistics (momentum 1 as a new-value weight, or
    0 as an old-value decay) leaves exactly the batch mean and the batch variance of the chosen
    convention: unbiased sigma^2 n/(n-1) (PyTorch) or biased sigma^2 (ONNX, Keras)."""
    case = ctx.case(training=True, track_running_stats=True)
    style = ctx.draw(st.sampled_from(["new", "decay"]), "momentum_style")
    var_style = ctx.draw(st.sampled_from(["unbiased", "biased"]), "running_var_style")
    case = case.with_params(momentum=1.0 if style == "new" else 0.0, momentum_style=style, running_var_style=var_style)
    dtype = ctx.dtype()
    run = ctx.run(case, dtype)
    x = run.case.x
    axes = (0,) + tuple(range(2, x.ndim))
    ref, _ = ctx.reference(run)
    b = ctx.bounds(run, ref, {})
    at = where(ctx, run)
    assert_close(run.outputs["running_mean"], x.mean(axis=axes), b["running_mean"], "running_mean", at)
    ddof = 1 if var_style == "unbiased" else 0
    assert_close(run.outputs["running_var"], x.var(axis=axes, ddof=ddof), b["running_var"],
                 f"running_var ({var_style})", at)
