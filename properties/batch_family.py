"""BatchNorm's relatives: Batch Renorm, Lp batch norm, ZCA (decorrelated) batch norm, recurrent
batch norm. Their identities with BatchNorm are checked against the `batch_norm` record, spec and
the backend's own `batch_norm` kernel; plus whitening, exact scaling and population statistics.
"""
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
    SweepPoint,
    assert_close,
    assert_equal,
    prop,
    traits,
)
from normspec.properties.invariance import MAX_FINITE
from normspec.registry import get_norm

# ---------------------------------------------------------------- helpers

def _dy(ctx: Context, shape) -> np.ndarray:
    return np.random.default_rng(ctx.seed("dy_seed")).standard_normal(shape)


def _batch_norm_run(ctx: Context, case: Case, dtype: str, layout: str, dy: np.ndarray):
    """The backend's own batch_norm on `case`, with its float64 spec and model bounds."""
    record = get_norm("batch_norm")
    run = ctx.run(case, dtype, layout, grads=OPTIONAL, dy=dy)
    ref = record.reference(run.case)
    ref_grads = record.reference_grad(run.case, run.dy) if run.dy is not None else {}
    return run, record.bounds(run.case, dtype, ref, run.dy, ref_grads)


def _training_equals_batch_norm(ctx: Context, case: Case) -> None:
    """A training call of ctx.record on `case` against the backend's own batch_norm on the same
    input: output and gradients within the sum of both bounds."""
    dtype, layout = ctx.dtype(), ctx.layout()
    dy = _dy(ctx, case.x.shape)
    run = ctx.run(case, dtype, layout, grads=OPTIONAL, dy=dy)
    b = _own_bounds(ctx, run)
    bn, bb = _batch_norm_run(ctx, _bn_case(run.case), dtype, layout, dy)
    at = where(ctx, run) + " vs batch_norm"
    _agree(run.outputs["y"], bn.outputs["y"], b["y"] + bb["y"], "y", at)
    _compare_grads(run, bn, b, bb, [r for r in ("x", "weight", "bias") if case.get(r) is not None], at)


def _own_bounds(ctx: Context, run, names=("y",)):
    ref, ref_grads = ctx.reference(run)
    return ctx.bounds(run, {k: v for k, v in ref.items() if k in names}, ref_grads)


def _agree(actual, expected, bound, what, at):
    assert_close(actual, expected, bound, what, at)


def _compare_grads(run, other, b_run, b_other, roles, at, view=lambda a: a):
    if run.dy is None:  # a forward-only backend: the forward half is checked alone
        return
    for role in roles:
        if role not in run.grads:
            raise PropertyFailure(f"d{role} was not returned [{at}]")
        bound = (np.broadcast_to(b_run[role], run.grads[role].shape)
                 + view(np.broadcast_to(b_other[role], other.grads[role].shape)))
        _agree(run.grads[role], view(other.grads[role]), bound, f"d{role}", at)


def _bn_case(case: Case, x=None, **arrays) -> Case:
    base = {r: case.get(r) for r in ("weight", "bias")}
    base.update(arrays)
    params = {k: case.params[k] for k in ("training", "eps", "momentum", "momentum_style") if k in case.params}
    bn_arrays = {"x": case.x if x is None else x, **{r: a for r, a in base.items() if a is not None}}
    return Case("batch_norm", bn_arrays, params)


# ---------------------------------------------------------------- identities with BatchNorm

@prop("batch_family", applies=traits("renorm"))
def renorm_without_corrections_is_batch_norm(ctx: Context) -> None:
    """Batch Renorm with rmax = 1 and dmax = 0 clips r to 1 and d to 0 exactly, so its training
    output, its gradients (r, d are stop-gradients) and its moving mean equal BatchNorm's
    (Ioffe 2017, sec. 3): the backend's batch_renorm against its own batch_norm, within both bounds."""
    # (Ioffe's form: Keras' keeps BatchNorm's moving mean in moving_mean, updated with another momentum)
    case = ctx.case(training=True, rmax=1.0, dmax=0.0, **({"form": "ioffe"} if ctx.record.takes("form") else {}))
    dtype, layout = ctx.dtype(), ctx.layout()
    dy = _dy(ctx, case.x.shape)
    run = ctx.run(case, dtype, layout, grads=OPTIONAL, dy=dy)
    b = _own_bounds(ctx, run, ("y", "running_mean", "running_std"))
    bn_case = _bn_case(run.case, running_mean=run.case.get("running_mean"), running_var=np.ones(case.x.shape[1]))
    bn, bb = _batch_norm_run(ctx, bn_case, dtype, layout, dy)
    at = where(ctx, run) + " vs batch_norm"
    for name in ("y", "running_mean"):
        _agree(run.outputs[name], bn.outputs[name], b[name] + bb[name], name, at)
    _compare_grads(run, bn, b, bb, [r for r in ("x", "weight", "bias") if case.get(r) is not None], at)


@prop("batch_family", applies=traits("lp_scale"))
def l2_scale_with_eps_inside_is_batch_norm(ctx: Context) -> None:
    """Lp batch norm with p = 2, constant 1 and eps inside the square root is BatchNorm's training
    forward exactly (S is the biased standard deviation): output and gradients equal the
    backend's own batch_norm within both bounds."""
    case = ctx.case(training=True, track_running_stats=False, p=2.0, eps_placement="inside", constant=1.0)
    _training_equals_batch_norm(ctx, case)


@prop("batch_family", applies=traits("whitening"))
def zca_group_size_one_is_batch_norm(ctx: Context) -> None:
    """ZCA whitening of groups of one channel is Phi = 1/sqrt(sigma^2 + eps): BatchNorm's training
    forward (Huang et al. 2018, sec. 3.1), and its gradients; checked against the backend's batch_norm."""
    case = ctx.case(training=True, track_running_stats=False, group_size=1)
    _training_equals_batch_norm(ctx, case)


def _recurrent_vs_bn(ctx: Context, case: Case, to_bn, from_bn, state_to_bn, state_from_bn):
    dtype = ctx.dtype()
    dy = _dy(ctx, case.x.shape)
    run = ctx.run(case, dtype, "contiguous", grads=OPTIONAL, dy=dy)
    ref, ref_grads = ctx.reference(run)
    from normspec.norms.recurrent_batch_norm import population_bounds
    b = population_bounds(run.case, dtype, ref, run.dy, ref_grads)
    arrays = {r: state_to_bn(run.case.get(r)) for r in ("running_mean", "running_var") if run.case.get(r) is not None}
    bn_case = _bn_case(run.case, x=to_bn(run.case.x), **arrays)
    bn_case = bn_case.with_params(running_var_style=case.params.get("running_var_style", "unbiased"))
    bn, bb = _batch_norm_run(ctx, bn_case, dtype, "contiguous", to_bn(dy))
    at = where(ctx, run) + " vs batch_norm" + f" on {bn_case.describe()}"
    _agree(run.outputs["y"], from_bn(bn.outputs["y"]),
           b["y"] + from_bn(np.broadcast_to(bb["y"], bn.outputs["y"].shape)), "y", at)
    for name in ("running_mean", "running_var"):
        if name in ref:
            _agree(state_to_bn(run.outputs[name]), bn.outputs[name], state_to_bn(b[name]) + bb[name], name, at)
    _compare_grads(run, bn, b, bb, ["weight", "bias"] if case.get("weight") is not None else [], at)
    _compare_grads(run, bn, b, bb, ["x"], at, view=from_bn)


@prop("batch_family", applies=traits("per_step_population_stats"))
def frame_wise_single_step_is_batch_norm(ctx: Context) -> None:
    """Frame-wise recurrent BN on a sequence of one step (T = 1, T_max = 1) is BatchNorm on the
    (N, F) input of that step: output, gradients and running statistics (Cooijmans et al. 2017)."""
    running = ctx.draw(st.booleans(), "track_running_stats")
    case = ctx.case(statistics="frame", steps=1, t_max=1, track_running_stats=running)
    ctx.assume(case.params["training"] or running or case.x.shape[0] > 1,
               "eval without running statistics needs more than one sample")
    _recurrent_vs_bn(ctx, case, lambda a: a[:, 0, :], lambda a: a[:, None, :], lambda s: s[0], lambda s: s[None])


@prop("batch_family", applies=traits("per_step_population_stats"))
def sequence_wise_is_batch_norm_on_flattened_steps(ctx: Context) -> None:
    """Sequence-wise recurrent BN (Laurent et al. 2016) is BatchNorm on the (N*T, F) matrix, in
    training and in eval with population statistics: output, gradients and running statistics."""
    running = ctx.draw(st.booleans(), "track_running_stats")
    case = ctx.case(statistics="sequence", track_running_stats=running)
    n, t, f = case.x.shape
    _recurrent_vs_bn(ctx, case, lambda a: a.reshape(n * t, f), lambda a: a.reshape(n, t, f), lambda s: s, lambda s: s)


# ---------------------------------------------------------------- whitening

def _groups(a: np.ndarray, gs: int) -> np.ndarray:
    from normspec.spec.decorrelated_batch_norm import grouped
    return grouped(a, gs)


@prop("batch_family", applies=traits("whitening"))
def whitened_covariance(ctx: Context) -> None:
    """The training output's covariance per group is Phi Sigma Phi = D diag(l/(l + eps)) D^T =
    I - eps (Sigma + eps I)^-1 exactly (-> I as eps -> 0; Huang et al. 2018, eq. 4), with Sigma the
    biased covariance of the (dtype-rounded) input. Bound: the model's elementwise output bound
    propagated through the covariance."""
    case = ctx.case(training=True, affine=False, track_running_stats=False)
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    gs, eps = run.case.params["group_size"], run.case.params.get("eps", 1e-5)
    from normspec.spec.decorrelated_batch_norm import whitening
    w = whitening(_groups(run.case.x, gs), eps)
    ratio = w.lam / (w.lam + eps)
    expected = np.einsum("gij,gj,gkj->gik", w.vecs, ratio, w.vecs)  # = I - eps (Sigma + eps I)^-1
    y = _groups(run.outputs["y"], gs)
    m = y.shape[1]
    yc = y - y.mean(axis=1, keepdims=True)
    cov = np.einsum("gmi,gmj->gij", yc, yc) / m
    ref, _ = ctx.reference(run)
    e = _groups(np.broadcast_to(ctx.bounds(run, {"y": ref["y"]}, {})["y"], case.x.shape), gs)
    e = e + e.mean(axis=1, keepdims=True)  # the centering of y moves by at most the mean error
    ay = np.abs(yc)
    bound = (np.einsum("gmi,gmj->gij", ay, e) + np.einsum("gmi,gmj->gij", e, ay) + np.einsum("gmi,gmj->gij", e, e)) / m
    u64 = tolerance.UNIT_ROUNDOFF["float64"]  # the float64 evaluation of cov(y) and of the expected matrix
    # the float64 eigendecomposition behind `expected` is itself accurate only to u64 times the
    # condition (lmax + eps)/(lmin + eps) of the whitening
    lam = np.maximum(w.lam, 0.0)
    kappa = ((lam.max(axis=1) + eps) / (lam.min(axis=1) + eps))[:, None, None]
    bound = bound + tolerance.SAFETY * u64 * (tolerance.growth(m) * np.einsum("gmi,gmj->gij", ay, ay) / m
                                              + tolerance.growth(gs) * kappa * ratio.max(axis=1)[:, None, None])
    assert_close(cov, expected, bound, "cov(y)", where(ctx, run) + " vs I - eps (Sigma + eps I)^-1")


def _rotate(a: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Channels of a (N, C, *S) rotated group by group: each sample's group vector v -> Q_g v."""
    gcount, gs, _ = q.shape
    moved = np.moveaxis(a, 1, -1)
    parts = moved.reshape(moved.shape[:-1] + (gcount, gs))
    rotated = np.einsum("...gj,gij->...gi", parts, q)
    return np.moveaxis(rotated.reshape(moved.shape), -1, 1)


@prop("batch_family", applies=traits("whitening"))
def zca_rotation_equivariance(ctx: Context) -> None:
    """ZCA whitening commutes with rotations of each group's channels: f(X Q^T) = f(X) Q^T for
    orthogonal Q (Sigma -> Q Sigma Q^T, Phi -> Q Phi Q^T; Huang et al. 2018, sec. 3.1, the reason
    ZCA and not PCA whitening). Exact in exact arithmetic; the rotated input reaches the backend
    rounded to the dtype, and the float64 spec measures what that rounding moves (|f(round(X Q^T)) -
    f(X) Q^T|), so the bound is |Q| b(X) + b(X Q^T) + that. PCA whitening fails it."""
    case = ctx.case(training=True, affine=False)
    dtype, layout = ctx.dtype(), ctx.layout()
    gs = case.params["group_size"]
    rng = np.random.default_rng(ctx.seed("rotation_seed"))
    q = np.stack([np.linalg.qr(rng.standard_normal((gs, gs)))[0] for _ in range(case.x.shape[1] // gs)])
    r0 = ctx.run(case, dtype, layout)
    r1 = ctx.run(r0.case.with_arrays(x=_rotate(r0.case.x, q)), dtype, layout)
    ref0, _ = ctx.reference(r0)
    ref1, _ = ctx.reference(r1)
    b0 = np.broadcast_to(ctx.bounds(r0, {"y": ref0["y"]}, {})["y"], case.x.shape)
    b1 = np.broadcast_to(ctx.bounds(r1, {"y": ref1["y"]}, {})["y"], case.x.shape)
    expected = _rotate(r0.outputs["y"], q)
    # rounding X Q^T to the dtype perturbs the input; the spec measures what that moves
    moved = np.abs(ref1["y"] - _rotate(ref0["y"], q))
    assert_close(r1.outputs["y"], expected, _rotate(b0, np.abs(q)) + b1 + moved, "y(X Q^T)",
                 where(ctx, r1) + " vs y(X) Q^T")


# ---------------------------------------------------------------- exact scaling

def _scale_rule(ctx: Context):
    """(case, eps power, {role/output: power}) for a = 2^k: f_{eps a^e}(a x, a^p state) = a^p f(x, state)."""
    name = ctx.record.name
    if name == "batch_renorm":
        return ctx.case(), 2, {"x": 1, "running_mean": 1, "running_std": 1, "moving_mean": 1, "moving_std": 1}
    if name == "lp_batch_norm":
        # exact for p in {1, 2, inf}: |a z|^p and its p-th root are exactly homogeneous only there
        p = ctx.draw(st.sampled_from([1.0, 2.0, math.inf]), "p")
        case = ctx.case(p=p)
        return case, 1 if case.params.get("eps_placement", "outside") == "outside" else 2, \
            {"x": 1, "running_mean": 1, "running_scale": 1}
    raise PropertyFailure(f"no exact scaling rule for {name}")


def _fits(a: np.ndarray, dtype: str) -> bool:
    mags = np.abs(a[a != 0])
    return mags.size == 0 or (mags.max() < MAX_FINITE[dtype] / 2**16 and mags.min() > tolerance.TINY[dtype] * 2**12)


@prop("batch_family", applies=traits("exact_scale_rule"))
def exact_scale_invariance_with_state(ctx: Context) -> None:
    """Scaling the input and the moving statistics by a = 2^k, with eps scaled by a^2 (eps inside a
    square root) or a (Lp's eps outside, S + eps), leaves the output bitwise unchanged, scales the
    new moving statistics by a and the input gradient by 1/a: every step commutes exactly with a
    power-of-two scale. Catches eps placed differently from the declared convention."""
    case, eps_power, powers = _scale_rule(ctx)
    dtype, layout = ctx.dtype(), ctx.layout()
    k = ctx.draw(st.integers(-4, 4).filter(bool), "log2_a")
    a = 2.0**k
    base = ctx.rounded(case, dtype)
    eps = base.params.get("eps", 1e-5)
    scaled = base.with_arrays(**{r: arr * a ** powers[r] for r, arr in base.arrays.items() if r in powers})
    scaled = scaled.with_params(eps=eps * a**eps_power)
    ctx.assume(all(_fits(arr, dtype) for arr in scaled.arrays.values())
               and _fits(np.array([eps * a**eps_power, eps]), dtype),
               "the scaled case or its eps does not fit the dtype")
    dy = _dy(ctx, case.x.shape)
    r0 = ctx.run(base, dtype, layout, grads=OPTIONAL, dy=dy)
    r1 = ctx.run(scaled, dtype, layout, grads=OPTIONAL, dy=dy)
    at = where(ctx, r1) + f" a=2^{k}"
    for name, value in r0.outputs.items():
        assert_equal(r1.outputs[name], value * a ** powers.get(name, 0), f"{name}(a x)", at)
    for role, g in r0.grads.items():
        assert_equal(r1.grads[role], g * a ** -powers.get(role, 0), f"d{role}(a x)", at)


# ---------------------------------------------------------------- population statistics

STATE_ROLES = {"batch_renorm": ("running_mean", "running_std"), "lp_batch_norm": ("running_mean", "running_scale"),
               "decorrelated_batch_norm": ("running_mean", "running_whitening"),
               "recurrent_batch_norm": ("running_mean", "running_var")}


@prop("batch_family", applies=traits("population_statistics"))
def train_equals_eval_on_own_statistics(ctx: Context) -> None:
    """When the moving statistics are the batch's own (the spec's update with momentum 1: mean and
    std for Batch Renorm, mean and Lp scale, mean and whitening matrix, per-step mean and biased
    variance), the eval output equals the training output (for Batch Renorm r = 1, d = 0). The state
    reaches the backend rounded to the dtype: the spec measures what that moves (eval on the rounded
    state vs training), added to both bounds."""
    case = ctx.case(training=True, track_running_stats=True)
    dtype, layout = ctx.dtype(), ctx.layout()
    roles = STATE_ROLES[ctx.record.name]
    rounded = ctx.rounded(case, dtype)
    replace = dict(momentum=1.0, momentum_style="new", running_var_style="biased")
    if "renorm_momentum" in rounded.params:  # Keras' renorm form: its r/d statistics have their own momentum
        replace["renorm_momentum"] = 1.0
    own = ctx.record.reference(rounded.with_params(**replace))
    roles = roles + tuple(r for r in ("moving_mean", "moving_std") if r in own)  # Keras' inference statistics
    stated = rounded.with_arrays(**{r: own[r] for r in roles})
    train = ctx.run(stated, dtype, layout)
    evaluated = ctx.run(train.case.with_params(training=False), dtype, layout)
    bt = _own_bounds(ctx, train)["y"]
    be = _own_bounds(ctx, evaluated)["y"]
    # the state's rounding to the dtype, measured by the spec: eval on the rounded state vs training
    moved = np.abs(ctx.record.reference(evaluated.case)["y"] - ctx.record.reference(train.case)["y"])
    assert_close(evaluated.outputs["y"], train.outputs["y"], bt + be + moved, "y_eval(own statistics)",
                 where(ctx, evaluated) + " vs training output")


def longer_than_t_max(backend, record) -> list[SweepPoint]:
    """Eval of a sequence longer than T_max with frame-wise statistics, every run: the steps past
    T_max must reuse the last step's statistics (Cooijmans et al. 2017, sec. 3), a rule a kernel
    can get wrong only there (reusing step 0 instead)."""
    return [SweepPoint("eval, frame statistics, T = 4 > T_max = 2", {},
                       case_overrides={"training": False, "statistics": "frame", "steps": 4, "t_max": 2})]


@prop("batch_family", applies=traits("per_step_population_stats"), sweep=longer_than_t_max)
def population_statistics_match_spec(ctx: Context) -> None:
    """With per-step population statistics of any T_max: training updates steps 0..T-1 only, eval
    normalizes step t by the statistics of step min(t, T_max - 1) (Cooijmans et al. 2017, sec. 3),
    so sequences longer than T_max reuse the last; outputs, updated statistics and gradients equal
    the spec within the model."""
    case = ctx.case(track_running_stats=True)
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout, grads=OPTIONAL)
    ref, ref_grads = ctx.reference(run)
    from normspec.norms.recurrent_batch_norm import population_bounds
    b = population_bounds(run.case, dtype, ref, run.dy, ref_grads)
    at = where(ctx, run)
    for name, expected in ref.items():
        if name not in run.outputs:
            raise PropertyFailure(f"{name} was not returned, but should be the updated {name} [{at}]")
        assert_close(run.outputs[name], expected, b[name], name, at)
    for role, expected in ref_grads.items():
        assert_close(run.grads[role], expected, b[role], f"d{role}", at)
