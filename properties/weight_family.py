"""Properties and identities of the weight-side normalizations: Weight Norm (Salimans & Kingma
2016), Centered Weight Norm (Huang et al. 2017), Spectral Norm (Miyato et al. 2018) and
Normalization Propagation (Arpit et al. 2016). Exact invariances are checked bitwise with
power-of-two factors (every intermediate then scales exactly); the rest within the model."""
from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.tolerance import SAFETY, TINY, compute_roundoff, storage_roundoff
from normspec.properties.agreement import compare_outputs, where
from normspec.properties.core import OPTIONAL, Context, PropertyFailure, assert_close, assert_equal, prop
from normspec.properties.invariance import MAX_FINITE, _fits, _on_grid
from normspec.registry import get_norm
from normspec.spec.norm_prop import RELU_MEAN, RELU_STD
from normspec.spec.spectral_norm import weight_matrix
from normspec.spec.weight_norm import g_shape, norm_axes


def _exact_range(ctx: Context, dtype: str, *arrays) -> None:
    """Discard the example unless every nonzero value is a normal number of `dtype` with headroom:
    power-of-two scaling is exact only while no intermediate is subnormal or overflows."""
    lo, hi = TINY[dtype] * 16, MAX_FINITE[dtype] / 16
    for a in arrays:
        mags = np.abs(np.asarray(a, dtype=np.float64))
        mags = mags[mags != 0]
        ctx.assume(mags.size == 0 or (mags.min() > lo and mags.max() < hi),
                   "weight magnitudes outside the range the dtype resolves")


def _intermediates(case: Case, c: float) -> list:
    """The values a weight-normalization computes on the way, at v and at c v: the squared norm,
    g/||v||, g/||v||^2, and the float64 reference outputs and gradients."""
    v = case.x if case.norm != "norm_prop" else case.get("weight")
    dim = 0 if case.norm == "norm_prop" else case.params.get("dim", 0)
    axes = norm_axes(v.ndim, dim)
    if case.norm == "centered_weight_norm":
        v = v - v.mean(axis=axes, keepdims=True)
    sq = (v * v).sum(axis=axes, keepdims=True)
    out = []
    for f in (1.0, c):
        out += [sq * f * f, 1 / (sq * f * f), 1 / np.sqrt(sq * f * f), v * f]
    return out


from normspec.properties.core import named  # noqa: E402  (applies to the named norms only)


def _scaled_pair(ctx: Context, roles_powers: dict[str, int], label="log2_c"):
    """(base, scaled, c): the dtype-rounded case and the case with roles scaled by c**power."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    k = ctx.draw(st.integers(-6, 6).filter(bool), label)
    c = 2.0**k
    base = ctx.rounded(case, dtype)
    scaled = base.with_arrays(**{r: base.get(r) * c**p for r, p in roles_powers.items() if base.get(r) is not None})
    ctx.assume(all(_fits(a, dtype) for a in scaled.arrays.values())
               and all(_fits(a, dtype) for a in base.arrays.values()),
               "the scaled or base case does not fit the dtype")
    return base, scaled, c, dtype, layout


def _check_scaled(ctx, base, scaled, c, dtype, layout, grad_powers: dict[str, int]):
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal(ctx.record.reference(base)["y"].shape)
    ref_grads = ctx.record.reference_grad(base, dy)
    _exact_range(ctx, dtype, *_intermediates(base, c), *[g * f for g in ref_grads.values() for f in (1.0, 1 / c)])
    r0 = ctx.run(base, dtype, layout, grads=OPTIONAL, dy=dy)
    r1 = ctx.run(scaled, dtype, layout, grads=OPTIONAL, dy=dy)
    at = where(ctx, r1) + f" c={c!r}"
    for name, value in r0.outputs.items():
        assert_equal(r1.outputs[name], value, f"{name}(c x)", at)
    for role, g in r0.grads.items():
        assert_equal(r1.grads[role], g * c ** grad_powers.get(role, 0), f"d{role}(c x)", at)


# ---------------------------------------------------------------- Weight Norm

@prop("invariance", applies=named("weight_norm"))
def weight_norm_scale_invariance(ctx: Context) -> None:
    """w(c v) = w(v) for c > 0 (Salimans & Kingma 2016, sec. 2.1): with c a power of two the norm
    scales exactly, so w must be bitwise equal, dg bitwise equal and dv exactly dv/c. An eps added
    to the norm, or a norm clamped from below, breaks it."""
    base, scaled, c, dtype, layout = _scaled_pair(ctx, {"x": 1})
    _check_scaled(ctx, base, scaled, c, dtype, layout, {"x": -1})


@prop("statistics", applies=named("weight_norm"))
def weight_norm_gradient_orthogonal(ctx: Context) -> None:
    """dv is orthogonal to v in every slice (dv = (g/||v||)(I - w w^T/g^2) dw, eq. 4): the
    gradient never changes ||v|| to first order. A backward that treats ||v|| as a constant
    (dv = g dw/||v||) passes every forward check and fails here."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout, grads=True)
    ref, ref_grads = ctx.reference(run)
    bound = np.broadcast_to(ctx.bounds(run, ref, ref_grads)["x"], run.grads["x"].shape)
    v, axes = run.case.x, norm_axes(run.case.x.ndim, run.case.params.get("dim", 0))
    inner = (run.grads["x"] * v).sum(axis=axes, keepdims=True)
    slack = ((bound * np.abs(v)).sum(axis=axes, keepdims=True)
             + 1e-13 * (np.abs(run.grads["x"] * v)).sum(axis=axes, keepdims=True))
    assert_close(inner, np.zeros_like(inner), slack, "sum(dv * v)", where(ctx, run))


def _contract(w: np.ndarray, x: np.ndarray, dim) -> np.ndarray:
    """A layer with weight w: output unit o (an index of `dim`) is sum over the other dims of w x."""
    axes = norm_axes(w.ndim, dim)
    return (w * x).sum(axis=axes, keepdims=True)


@prop("inference", applies=named("weight_norm"))
def weight_norm_folded_layer(ctx: Context) -> None:
    """The layer with weight normalization equals the plain layer with the folded weight w:
    sum(w x) over each slice = (g/||v||) sum(v x) (Salimans & Kingma 2016, eq. 2, the form used
    for data-dependent initialization). Checks, from the backend's w alone, that g and the norm
    were applied along `dim` and not along another axis."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    v, g, dim = run.case.x, run.case.get("weight"), run.case.params.get("dim", 0)
    x = np.random.default_rng(ctx.seed("input_seed")).standard_normal(v.shape)
    norm = np.sqrt((v * v).sum(axis=norm_axes(v.ndim, dim), keepdims=True))
    expected = g.reshape(g_shape(v.shape, dim)) / norm * _contract(v, x, dim)
    ref, _ = ctx.reference(run)
    bound = _contract(np.broadcast_to(ctx.bounds(run, ref, {})["y"], v.shape), np.abs(x), dim)
    bound = bound + 1e-13 * _contract(np.abs(ref["y"]), np.abs(x), dim)
    assert_close(_contract(run.outputs["y"], x, dim), expected, bound, "layer(x; w)",
                 where(ctx, run) + " vs (g/||v||) layer(x; v)")


# ---------------------------------------------------------------- Centered Weight Norm

@prop("statistics", applies=named("centered_weight_norm"))
def cwn_rows_centered_with_norm_g(ctx: Context) -> None:
    """Every row of w sums to 0 and, with eps = 0, has norm |g| (Huang et al. 2017, eq. 4): the
    weight is centered and lies on the sphere of radius g. A CWN that forgets the centering, or
    divides by the standard deviation instead of the norm, fails it."""
    case, dtype, layout = ctx.case(eps=0.0), ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    w, dim = run.outputs["y"], run.case.params.get("dim", 0)
    axes = norm_axes(w.ndim, dim)
    v = run.case.x
    ctx.assume(bool(np.all(v.max(axis=axes) > v.min(axis=axes))),
               f"a row is constant once rounded to {dtype}: with eps = 0 its centered direction is 0/0")
    ref, _ = ctx.reference(run)
    bound = np.broadcast_to(ctx.bounds(run, ref, {})["y"], w.shape)
    at = where(ctx, run)
    row_sum = w.sum(axis=axes, keepdims=True)
    assert_close(row_sum, np.zeros_like(row_sum),
                 bound.sum(axis=axes, keepdims=True) + 1e-13 * np.abs(w).sum(axis=axes, keepdims=True),
                 "sum_row(w)", at)
    shape = g_shape(w.shape, dim)
    g = (np.full(shape, run.case.params.get("scale", 1.0)) if run.case.get("weight") is None
         else run.case.get("weight").reshape(shape))
    norm = np.sqrt((w * w).sum(axis=axes, keepdims=True))
    assert_close(norm, np.abs(g) * np.ones_like(norm),
                 (bound * np.abs(w)).sum(axis=axes, keepdims=True) / np.maximum(norm, TINY["float64"])
                 + 1e-13 * np.abs(g), "||w_row||", at)


@prop("invariance", applies=named("centered_weight_norm"))
def cwn_affine_invariance(ctx: Context) -> None:
    """CWN is invariant to v -> a v + b 1 per row, a > 0 (Huang et al. 2017, sec. 3): scaling by a
    power of two with eps -> eps/a (eps sits outside the norm) must be bitwise exact, and a shift
    of up to 1e3 row spreads, put on a grid where v + b is exact, must match the spec at v within
    the model. A norm computed as sum v^2 - m mean^2 fails by (|b|/spread)^2 u."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    k = ctx.draw(st.integers(-6, 6).filter(bool), "log2_a")
    a = 2.0**k
    base = ctx.rounded(case, dtype)
    eps = base.params.get("eps", 0.0)
    scaled = base.with_arrays(x=base.x * a).with_params(eps=eps * a)
    ctx.assume(_fits(scaled.x, dtype) and _fits(base.x, dtype), "the scaled or base input does not fit the dtype")
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal(base.x.shape)
    _exact_range(ctx, dtype, *_intermediates(base, a),
                 *[g * f for g in ctx.record.reference_grad(base, dy).values() for f in (1.0, 1 / a)])
    r0, r1 = ctx.run(base, dtype, layout, grads=OPTIONAL, dy=dy), ctx.run(scaled, dtype, layout, grads=OPTIONAL, dy=dy)
    at = where(ctx, r1) + f" a=2^{k}"
    assert_equal(r1.outputs["y"], r0.outputs["y"], "y(a v)", at)
    if "x" in r0.grads:  # none from a forward-only backend: the y half is checked alone
        assert_equal(r1.grads["x"], r0.grads["x"] / a, "dv(a v)", at)
    if "weight" in r0.grads:
        assert_equal(r1.grads["weight"], r0.grads["weight"], "dg(a v)", at)
    # shift: b per row
    dim = base.params.get("dim", 0)
    axes = norm_axes(base.x.ndim, dim)
    mean = base.x.mean(axis=axes, keepdims=True)
    spread = np.sqrt(((base.x - mean) ** 2).mean(axis=axes, keepdims=True))
    ctx.assume(np.all(spread > 0), "a constant weight row")
    rng = np.random.default_rng(ctx.seed("shift_seed"))
    shift = (10.0 ** ctx.draw(st.floats(0.0, 3.0), "log10_shift_over_spread") * spread
             * rng.choice([-1.0, 1.0], spread.shape))
    total = float(np.abs(base.x).max() + np.abs(shift).max())
    ctx.assume(total < MAX_FINITE[dtype] / 2**16, "the shifted weight overflows the dtype")
    v_q, _ = _on_grid(base.x, total, dtype)
    b_q, _ = _on_grid(shift, total, dtype)
    ctx.assume(np.all(np.ptp(v_q, axis=axes) > 0) if axes else True, "a constant weight row after rounding")
    run = ctx.run(base.with_arrays(x=v_q + b_q), dtype, layout)
    ctx.assume(np.array_equal(run.case.x, v_q + b_q), "the shift is not exact in the dtype")
    ref, _ = ctx.reference(run)
    unshifted = ctx.record.reference(base.with_arrays(x=v_q))
    assert_close(run.outputs["y"], unshifted["y"], ctx.bounds(run, ref, {})["y"], "y(v + b)",
                 where(ctx, run) + " vs spec y(v)")


@prop("identities", applies=named("centered_weight_norm"))
def cwn_equals_weight_norm_of_centered(ctx: Context) -> None:
    """CWN(v, g) = WeightNorm(v - mean v, g) with eps = 0 (Huang et al. 2017, eq. 4 against
    Salimans & Kingma 2016, eq. 2), both computed by the same backend; the centered weight reaches
    the WeightNorm kernel rounded to the dtype, which the bound includes."""
    case = ctx.case(eps=0.0, learned_gain=True)
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    dim = run.case.params.get("dim", 0)
    axes = norm_axes(run.case.x.ndim, dim)
    dim = None if dim is None else dim % run.case.x.ndim  # PyTorch's dim=-1 quirk is weight_norm's own finding
    centered = run.case.x - run.case.x.mean(axis=axes, keepdims=True)
    ctx.assume(np.all(np.abs(centered).max(axis=axes) > 0) if axes else np.abs(centered).max() > 0,
               "a weight row that centres to zero")
    wn = get_norm("weight_norm")
    wn_case = Case("weight_norm",
                   {"x": centered, "weight": run.case.get("weight").reshape(g_shape(centered.shape, dim))},
                   {"dim": dim})
    ctx.supported(wn_case, dtype, layout)
    b = ctx.backend
    wn_rounded = ctx.rounded(wn_case, dtype)
    out = b.to_numpy(b.forward("weight_norm", ctx.natives(wn_rounded, dtype, layout), wn_rounded.params)["y"])
    ref, _ = ctx.reference(run)
    bound = (ctx.bounds(run, ref, {})["y"] + wn.bounds(wn_rounded, dtype, wn.reference(wn_rounded))["y"]
             + SAFETY * storage_roundoff(dtype) * np.abs(ref["y"]) * 2)
    assert_close(out, run.outputs["y"], bound, "weight_norm(v - mean v)",
                 where(ctx, run) + " vs centered_weight_norm(v)")


# ---------------------------------------------------------------- Spectral Norm

@prop("invariance", applies=named("spectral_norm"))
def spectral_norm_scale_invariance(ctx: Context) -> None:
    """W_SN(c W) = W_SN(W) with u, v fixed, for c > 0 (Miyato et al. 2018: sigma(c W) = c sigma(W)):
    with c a power of two the power iteration, sigma and W/sigma scale exactly, so W_SN and the
    new u, v must be bitwise equal and dW exactly dW/c."""
    base, scaled, c, dtype, layout = _scaled_pair(ctx, {"x": 1})
    _check_scaled(ctx, base, scaled, c, dtype, layout, {"x": -1})


def _gapped_weight(rng, shape, dim, ratio):
    """A weight whose matrix view has singular values 1 > ratio >= ... (a gap sigma_2/sigma_1 = ratio)."""
    d = dim % len(shape)
    k = shape[d]
    n_cols = math.prod(shape) // k
    r = min(k, n_cols)
    q1, _ = np.linalg.qr(rng.standard_normal((k, r)))
    q2, _ = np.linalg.qr(rng.standard_normal((n_cols, r)))
    s = np.concatenate([[1.0], ratio * rng.uniform(0.2, 1.0, r - 1)]) * 10.0 ** rng.uniform(-1, 1)
    s[1:2] = ratio * s[0] if r > 1 else s[1:2]
    mat = (q1 * s) @ q2.T
    others = tuple(n for a, n in enumerate(shape) if a != d)
    return np.moveaxis(mat.reshape((k,) + others), 0, d), s


@prop("statistics", applies=named("spectral_norm"))
def spectral_norm_sigma_converges(ctx: Context) -> None:
    """With enough power iterations sigma = <W, W>/<W, W_SN> reaches the top singular value of the
    (dim, -1) matrix (numpy.linalg.svd): after n steps from v0 the angle to the top right singular
    vector shrinks like (s2/s1)^(2n) tan(theta0) (Miyato et al. 2018, Algorithm 1), and n is chosen
    so that this is below the dtype's roundoff; what remains is the model's rounding error. Using
    a fixed number of iterations or the Frobenius norm fails it."""
    template = ctx.case(training=True)
    shape, dim = template.x.shape, template.params["dim"]
    dtype, layout = ctx.dtype(), ctx.layout()
    rng = np.random.default_rng(ctx.seed("weight_seed"))
    ratio = ctx.draw(st.floats(0.05, 0.8), "s2_over_s1")
    w, s = _gapped_weight(rng, shape, dim, ratio)
    w_mat = weight_matrix(w, dim)
    u0 = rng.standard_normal(w_mat.shape[0])
    v0 = rng.standard_normal(w_mat.shape[1])
    u0, v0 = u0 / np.linalg.norm(u0), v0 / np.linalg.norm(v0)
    left, _, vt = np.linalg.svd(w_mat)
    # u first starts from v0 (toward the top right singular vector); v first (Algorithm 1) from u0
    v_first = template.params.get("power_iteration_order", "u_first") == "v_first"
    cos0 = abs(float(left[:, 0] @ u0)) if v_first else abs(float(vt[0] @ v0))
    ctx.assume(cos0 > 1e-3, "the initial vector is nearly orthogonal to the top singular vector")
    tan0 = math.sqrt(max(1 - cos0**2, 0.0)) / cos0
    target = compute_roundoff("float64") if min(w_mat.shape) == 1 else storage_roundoff(dtype) * 1e-3
    n = 1 if min(w_mat.shape) == 1 else max(1, math.ceil(math.log(target / tan0) / (2 * math.log(ratio))) + 1)
    case = Case("spectral_norm", {"x": w, "u": u0, "v": v0}, {**template.params, "n_power_iterations": n})
    run = ctx.run(case, dtype, layout)
    wr, y = run.case.x, run.outputs["y"]
    sigma = float((wr * wr).sum() / (wr * y).sum())
    s1 = float(np.linalg.svd(weight_matrix(wr, dim), compute_uv=False)[0])
    ref, _ = ctx.reference(run)
    rel = float((ctx.bounds(run, ref, {})["y"] * np.abs(wr)).sum() / np.abs(wr * ref["y"]).sum())
    assert_close(np.array(sigma), np.array(s1), s1 * (rel + 2 * target) + 1e-13 * s1, "sigma",
                 where(ctx, run) + f" after {n} iterations")


@prop("inference", applies=named("spectral_norm"))
def spectral_norm_state_train_only(ctx: Context) -> None:
    """The power-iteration state is updated in training only (PyTorch's parametrization, Miyato
    et al. 2018, Algorithm 1): in eval the returned u, v are bitwise the given ones and
    W_SN = W/(u^T W v) uses them; in training from a random start they move to the spec's new
    state, away from the old one. A module that iterates in eval too, or never, fails it."""
    training = ctx.draw(st.booleans(), "training")
    case = ctx.case(training=training, n_power_iterations=ctx.draw(st.integers(1, 3), "n"))
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    ref, _ = ctx.reference(run)
    bounds = ctx.bounds(run, ref, {})
    at = where(ctx, run)
    for name in ("u", "v"):
        if name not in run.outputs:
            raise PropertyFailure(f"{name} was not returned, but should be the power-iteration state [{at}]")
        if not training:
            assert_equal(run.outputs[name], run.case.get(name), f"{name} (eval)", at)
        else:
            assert_close(run.outputs[name], ref[name], bounds[name], f"{name} (training)", at)
            moved = np.abs(ref[name] - run.case.get(name)) > 2 * bounds[name]
            if moved.any() and np.array_equal(run.outputs[name], run.case.get(name)):
                raise PropertyFailure(f"{name} was returned unchanged, but training should update it [{at}]")
    assert_close(run.outputs["y"], ref["y"], bounds["y"], "W_SN", at)


# ---------------------------------------------------------------- Normalization Propagation

N_SAMPLES = 20000
Z_BOUND = 6.0


def _relu_output_moments():
    """Exact 4th central moment of o = (ReLU(z) - m)/s, z ~ N(0, 1) (for the variance's standard
    error): E r = m, E r^2 = 1/2, E r^3 = 2m, E r^4 = 3/2 with m = 1/sqrt(2 pi)."""
    m = RELU_MEAN
    mu4 = 1.5 - 4 * m * (2 * m) + 6 * m**2 * 0.5 - 3 * m**4
    return mu4 / RELU_STD**4


@prop("statistics", applies=named("norm_prop"))
def norm_prop_output_moments(ctx: Context) -> None:
    """For standard-normal input and gamma = 1, beta = 0 every output unit has mean 0 and variance 1
    (Arpit et al. 2016, sec. 3: u_i = W_i.x/||W_i|| ~ N(0, 1), and the ReLU output is standardized
    by its exact moments). Statistical: over N = 20000 samples the sample mean has standard error
    1/sqrt(N) and the sample variance sqrt((kurtosis - 1)/N) (kurtosis of the standardized ReLU
    output ~5.41, identity 3); the bound is 6 standard errors (a false alarm has probability
    ~2e-9 per unit), far below what a wrong constant or a missing row norm produces."""
    case = ctx.case(affine=False)
    dtype = ctx.dtype()
    x = np.random.default_rng(ctx.seed("sample_seed")).standard_normal((N_SAMPLES, case.x.shape[1]))
    run = ctx.run(case.with_arrays(x=x), dtype)
    y = run.outputs["y"]
    kurtosis = _relu_output_moments() if case.params.get("activation", "relu") == "relu" else 3.0
    at = where(ctx, run)
    se_mean, se_var = 1 / math.sqrt(N_SAMPLES), math.sqrt((kurtosis - 1) / N_SAMPLES)
    fp = SAFETY * storage_roundoff(dtype) * 4
    assert_close(y.mean(axis=0), np.zeros(y.shape[1]), Z_BOUND * se_mean + fp, "mean(y)", at)
    assert_close(y.var(axis=0), np.ones(y.shape[1]), Z_BOUND * se_var + fp, "var(y)", at)


@prop("invariance", applies=named("norm_prop"))
def norm_prop_weight_scale_invariance(ctx: Context) -> None:
    """Scaling each row W_i by its own c_i > 0 leaves the layer unchanged (only W_i/||W_i|| enters,
    Arpit et al. 2016): with powers of two the output is bitwise equal and dW_i exactly dW_i/c_i.
    Normalizing by the norm of the whole W instead of each row fails it."""
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    base = ctx.rounded(case, dtype)
    rng = np.random.default_rng(ctx.seed("scale_seed"))
    c = 2.0 ** rng.integers(-6, 7, (base.get("weight").shape[0], 1)).astype(float)
    scaled = base.with_arrays(weight=base.get("weight") * c)
    ctx.assume(_fits(scaled.get("weight"), dtype), "the scaled weight does not fit the dtype")
    dy = np.random.default_rng(ctx.seed("dy_seed")).standard_normal((base.x.shape[0], base.get("weight").shape[0]))
    grads = ctx.record.reference_grad(base, dy)
    _exact_range(ctx, dtype, *_intermediates(base, 1.0), *_intermediates(scaled, 1.0), *grads.values(),
                 grads["weight"] / c)
    r0, r1 = ctx.run(base, dtype, layout, grads=OPTIONAL, dy=dy), ctx.run(scaled, dtype, layout, grads=OPTIONAL, dy=dy)
    at = where(ctx, r1) + " rows scaled by powers of two"
    assert_equal(r1.outputs["y"], r0.outputs["y"], "y(c W)", at)
    for role, g in r0.grads.items():
        assert_equal(r1.grads[role], g / c if role == "weight" else g, f"d{role}(c W)", at)


@prop("agreement", applies=named("norm_prop"))
def norm_prop_rectangular(ctx: Context) -> None:
    """Layers with out_features != in_features match the spec, forward and backward, within the
    model (the record's default cases are square so that the generic hygiene properties, which
    draw dy of x's shape, apply). A kernel that confuses W with W^T or normalizes columns fails."""
    n_out = ctx.draw(st.integers(1, 8), "out_features")
    case, dtype, layout = ctx.case(out_features=n_out), ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout, grads=OPTIONAL)
    ref, ref_grads = ctx.reference(run)
    bounds = ctx.bounds(run, ref, ref_grads)
    compare_outputs(ctx, run, ref, bounds)
    for role, expected in ref_grads.items():
        assert_close(run.grads[role], expected, bounds[role], f"d{role}", where(ctx, run))
