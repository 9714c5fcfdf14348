"""The one tolerance model: how far a correct floating-point implementation may stray from the
float64 spec, evaluated on the same (already dtype-rounded) inputs.

The bound is a product of two things and nothing else:
- the dtype's unit roundoff u (2^-p): `storage` for rounding the results, `compute` for the
  arithmetic; half-precision types must accumulate in float32, as frameworks do, so their
  compute roundoff is float32's (an implementation that accumulates in float16 fails);
- the condition of the input: for centering, |mu|/s (digits lost subtracting the mean); for a
  reduction of length m, a growth factor 2 + sqrt(m) (rounding errors of a sum of m terms grow
  like sqrt(m) for random-signed errors and like log m for pairwise sums; Higham, "Accuracy and
  Stability of Numerical Algorithms", 2nd ed., ch. 4).
Multiplied by one global SAFETY factor, never chosen per test. A correct implementation stays
well inside the bound; the realistic bugs (one-pass variance, eps misplaced, biased vs
unbiased, wrong axes) miss it by orders of magnitude, which is what the harness's tests show.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import numpy as np

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning, DivisiveCondition, MvnCondition, ResponseCondition

SAFETY = 16.0

UNIT_ROUNDOFF = {
    "float64": 2.0**-53,
    "float32": 2.0**-24,
    "float16": 2.0**-11,
    "bfloat16": 2.0**-8,
}
MAX_FINITE = {"float64": 1.7976931348623157e308, "float32": 3.4028234663852886e38, "float16": 65504.0,
              "bfloat16": 3.3895313892515355e38}
# Smallest positive normal number: an absolute floor for results that round to (almost) zero.
TINY = {"float64": 2.2250738585072014e-308, "float32": 1.1754943508222875e-38, "float16": 6.103515625e-05,
        "bfloat16": 1.1754943508222875e-38}


# A compute precision an implementation under test declares (`normspec validate --compute`):
# input dtype -> the dtype its arithmetic is done in. "Computes in float32" maps float64 to
# float32 (its parameters and results pass through float32 too, so storage is float32's); the
# lower tier of half intermediates maps float16/bfloat16 to themselves. Empty: the defaults above.
_DECLARED: dict[str, str] = {}


@contextmanager
def declared_compute(mapping: dict[str, str]):
    """Within the block, judge each dtype in `mapping` at the roundoff of the dtype it maps to."""
    saved = dict(_DECLARED)
    _DECLARED.clear()
    _DECLARED.update(mapping)
    try:
        yield
    finally:
        _DECLARED.clear()
        _DECLARED.update(saved)


def compute_dtype(dtype: str) -> str:
    """The dtype the arithmetic is done in for inputs of `dtype`."""
    if dtype in _DECLARED:
        return _DECLARED[dtype]
    return "float64" if dtype == "float64" else "float32"


def storage_roundoff(dtype: str) -> float:
    return max(UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF[_DECLARED.get(dtype, dtype)])


def compute_roundoff(dtype: str) -> float:
    """Roundoff of the arithmetic: float32's for half types (float32 accumulation is required),
    unless a lower compute precision is declared (`declared_compute`)."""
    if dtype in _DECLARED:
        return UNIT_ROUNDOFF[_DECLARED[dtype]]
    return min(UNIT_ROUNDOFF[dtype], UNIT_ROUNDOFF["float32"])


def growth(count: int) -> float:
    """Error growth of a float reduction of `count` terms (random-signed rounding errors)."""
    return 2.0 + float(np.sqrt(max(count, 1)))


@dataclass(frozen=True)
class Bounds:
    """Elementwise absolute error bounds, by output or gradient name."""

    values: dict[str, np.ndarray]

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values


# The one signature of a record's bound function (`NormRecord.error_model`):
# bounds(case, dtype, reference, dy=None, ref_grads=None) -> Bounds, where `reference` holds the
# float64 spec's outputs on the dtype-rounded case and `ref_grads` its gradients for upstream `dy`.
# The model cores below take a condition object (what the model needs about the case) in the
# place of the case, with the same tail.
BoundFn = Callable[[Case, str, Mapping[str, np.ndarray], Optional[np.ndarray], Optional[Mapping[str, np.ndarray]]],
                   Bounds]


def moment_model(conditioning: Callable[[Case], Conditioning]) -> BoundFn:
    """The bound function of a mean/variance normalizer described by `conditioning(case)`."""

    def bounds(case, dtype, reference, dy=None, ref_grads=None) -> Bounds:
        return moment_bounds(conditioning(case), dtype, reference, dy, ref_grads)

    bounds.__doc__ = f"The moment model on {getattr(conditioning, '__qualname__', 'a conditioning')}(case)."
    return bounds


def _mean_over(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return a.mean(axis=axes, keepdims=True) if axes else a


def moment_bounds(c: Conditioning, dtype: str, reference: dict[str, np.ndarray],
                  dy: np.ndarray | None = None, ref_grads: dict[str, np.ndarray] | None = None) -> Bounds:
    """Bounds for a normalizer y = gamma (x - mean)/std + beta and its gradients.

    err(xhat_i) <= u g(m) (1 + |xhat_i| + |mean|/std): the mean is off by u g(m) (|mean| + std),
    the std by a relative u g(m), and the centered value by u |x_i|. Where `c.view_shape` is set
    (GroupNorm's (N, G, C/G, *S)), the model is evaluated in that view and the bounds come back in
    the input's shape, parameter-gradient bounds one per parameter.
    """
    if c.view_shape is not None:
        return _in_view(c, dtype, reference, dy, ref_grads)
    u, v = compute_roundoff(dtype), storage_roundoff(dtype)
    tiny = TINY[dtype]
    offset = np.abs(c.mean) / c.std
    cond = 1.0 + np.abs(c.xhat) + offset
    err_xhat = SAFETY * u * growth(c.count) * cond
    y = reference["y"]
    out = {"y": np.abs(c.gamma) * err_xhat + SAFETY * v * (np.abs(y) + np.abs(c.beta)) + tiny}

    if "running_mean" in reference:
        g = growth(c.count)
        size = reference["running_mean"].size
        mean = np.abs(c.mean)
        std = np.broadcast_to(c.std, c.mean.shape)
        var = (std**2) * c.running_var_scale
        # per-set statistics (one per channel for BatchNorm, per (n, c) for InstanceNorm, whose
        # running statistics are their batch-means) reduced to one bound per running entry
        def per_entry(a):
            return np.reshape(a, (-1, size)).mean(axis=0)
        out["running_mean"] = SAFETY * (u * g * per_entry(mean + std) + v * np.abs(reference["running_mean"])) + tiny
        out["running_var"] = SAFETY * (u * g * per_entry(var + 2 * std * (mean + std))
                                       + v * np.abs(reference["running_var"])) + tiny

    if dy is not None:
        ref_grads = ref_grads or {}
        g_hat = c.gamma * dy
        g = growth(c.count)
        if c.batch_stats:
            spread = _mean_over(np.abs(g_hat) * cond, c.stats_axes)
            dx = SAFETY * u * g * cond * (np.abs(g_hat) + spread) / c.std
        else:
            dx = SAFETY * u * cond * np.abs(g_hat) / c.std
        out["x"] = dx + SAFETY * v * np.abs(ref_grads.get("x", 0.0)) + tiny
        n_param = int(np.prod([dy.shape[a] for a in c.param_axes])) if c.param_axes else 1
        gp = growth(n_param) + g
        absdy = np.abs(dy)
        out["weight"] = SAFETY * (u * gp * (absdy * cond).sum(axis=c.param_axes)
                                  + v * np.abs(ref_grads.get("weight", 0.0))) + tiny
        out["bias"] = SAFETY * (u * gp * absdy.sum(axis=c.param_axes) + v * np.abs(ref_grads.get("bias", 0.0))) + tiny
    # (a result whose exact value lies past the dtype's largest finite value rounds to +-inf: a
    # constant channel with eps = 1e-8 gives float16 dx = 66527 > 65504)
    return Bounds({k: overflow_allowed(val, {**reference, **(ref_grads or {})}.get(k), dtype)
                   for k, val in out.items()})


# ---------------------------------------------------------------- response normalizations
# (LRN, MatConvNet cross-channel and spatial normalization: y = x * d^-beta, d = offset + scale * W(x^2))

def response_bounds(c: ResponseCondition, dtype: str, reference: dict[str, np.ndarray], dy: np.ndarray | None = None,
                    ref_grads: dict[str, np.ndarray] | None = None) -> Bounds:
    """Bounds for y = x d^-beta with d = offset + scale * (window sum of squares), offset, scale > 0.

    The sum of `window` positive squares has relative error u growth(window), d adds one rounding
    and the power amplifies the relative error of d by |beta| (plus its own rounding), so
    err(y) <= u (3 + |beta| (2 + growth(window))) |y|. The input gradient sums `window` products of
    such terms once more: its error is relative to `grad_magnitude` (the sum of the absolute
    terms of the backward formula), with one more growth(window) factor.
    """
    window, beta, grad_magnitude = c.window_terms, c.beta, c.grad_magnitude
    u, v, tiny = compute_roundoff(dtype), storage_roundoff(dtype), TINY[dtype]
    rel = 3.0 + abs(beta) * (2.0 + growth(window))
    y = np.abs(reference["y"])
    out = {"y": SAFETY * (u * rel + v) * y + tiny}
    if dy is not None and grad_magnitude is not None:
        ref_dx = np.abs((ref_grads or {}).get("x", 0.0))
        out["x"] = SAFETY * (u * (rel + 1.0) * growth(window) * grad_magnitude + v * ref_dx) + tiny
    return Bounds(out)


def divisive_bounds(c: DivisiveCondition, dtype: str, reference: dict[str, np.ndarray], dy: np.ndarray | None = None,
                    ref_grads: dict[str, np.ndarray] | None = None) -> Bounds:
    """Bounds for divisive normalization y = gamma v/r + beta, v = z - mean_A z, r = sqrt(eps + mean_B v^2).

    The moment model with fields in place of reduction sets: err(v/r) <= u g (1 + |v/r| + offset),
    `offset` = mean_A|z| / r (digits lost centering), g = growth(count) for the larger field.
    The input gradient's error is relative to `grad_magnitude` (the absolute terms of the backward
    formula), amplified by the worst conditioning of the sample.
    """
    xhat, offset, gamma, beta, count = c.xhat, c.offset, c.gamma, c.beta, c.count
    param_axes, grad_magnitude = c.param_axes, c.grad_magnitude
    u, v, tiny = compute_roundoff(dtype), storage_roundoff(dtype), TINY[dtype]
    g = growth(count)
    cond = 1.0 + np.abs(xhat) + offset
    out = {"y": SAFETY * u * g * cond * np.abs(gamma) + SAFETY * v * (np.abs(reference["y"]) + np.abs(beta)) + tiny}
    if dy is not None:
        ref_grads = ref_grads or {}
        worst = cond.max(axis=tuple(range(1, cond.ndim)), keepdims=True) if cond.ndim > 1 else cond
        out["x"] = SAFETY * (u * g * g * worst * grad_magnitude + v * np.abs(ref_grads.get("x", 0.0))) + tiny
        n_param = int(np.prod([dy.shape[a] for a in param_axes])) if param_axes else 1
        gp = growth(n_param) + g
        absdy = np.abs(dy)
        out["weight"] = SAFETY * (u * gp * (absdy * cond).sum(axis=param_axes)
                                  + v * np.abs(ref_grads.get("weight", 0.0))) + tiny
        out["bias"] = SAFETY * (u * gp * absdy.sum(axis=param_axes) + v * np.abs(ref_grads.get("bias", 0.0))) + tiny
    return Bounds(out)


# ---------------------------------------------------------------- weight-side normalizations
# Weight Norm, Centered Weight Norm, Spectral Norm and Normalization Propagation. The same two
# terms: reductions (norms, dot products, mat-vecs) of m terms carry u_compute * growth(m), and
# every elementwise operation that a composed implementation may round to the storage dtype
# carries u_storage; both are scaled by the input's condition (|mean|/spread for centering,
# 1/|sigma| and the power iteration's contraction for spectral norm, the ReLU kink).

def _reduction(count: int, dtype: str) -> float:
    """Relative error of a reduction of `count` terms whose products may be rounded to storage."""
    return compute_roundoff(dtype) * growth(count) + storage_roundoff(dtype)


def weight_norm_bounds(case, dtype: str, reference: dict, dy=None, ref_grads=None) -> Bounds:
    """w = g v/||v||: every element has a relative error of one norm (a reduction of m terms)
    plus a few storage roundings. dg = sum dw w_hat and dv = (g/n)(dw - w_hat dg) carry the
    reduction error on the sums of |terms| (cancellation in them is the gradient's condition)."""
    from normspec.spec.weight_norm import g_shape, norm_axes

    v, dim = case.x, case.params.get("dim", 0)
    axes = norm_axes(v.ndim, dim)
    m = int(np.prod([v.shape[a] for a in axes])) if axes else 1
    red, s, tiny = _reduction(m, dtype), storage_roundoff(dtype), TINY[dtype]
    out = {"y": SAFETY * (red + s) * np.abs(reference["y"]) + tiny}
    if dy is not None:
        g = case.get("weight").reshape(g_shape(v.shape, dim))
        n = np.sqrt((v * v).sum(axis=axes, keepdims=True))
        w_hat = np.abs(v) / n
        spread = (np.abs(dy) * w_hat).sum(axis=axes, keepdims=True)
        out["x"] = SAFETY * (red + 2 * s) * np.abs(g) / n * (np.abs(dy) + w_hat * spread) + tiny
        out["weight"] = (SAFETY * (red + 2 * s) * spread + tiny).reshape(g_shape(v.shape, dim))
    return Bounds(out)


def centered_weight_norm_bounds(case, dtype: str, reference: dict, dy=None, ref_grads=None) -> Bounds:
    """w = g c/(||c|| + eps), c = v - mean v. Centering loses |mean|/spread digits, as in the
    moment model: err(c_i) <= (u g(m) + u_s)(|mean| + spread) + u_s |c_i|, and the norm of c is
    off by a relative K = (u g(m) + u_s)(2 + |mean|/spread), spread = ||c||/sqrt(m)."""
    from normspec.spec.weight_norm import g_shape, norm_axes

    v, dim = case.x, case.params.get("dim", 0)
    eps = case.params.get("eps", 0.0)
    axes = norm_axes(v.ndim, dim)
    m = int(np.prod([v.shape[a] for a in axes])) if axes else 1
    red, s, tiny = _reduction(m, dtype), storage_roundoff(dtype), TINY[dtype]
    shape = g_shape(v.shape, dim)
    g = (np.full(shape, float(case.params.get("scale", 1.0))) if case.get("weight") is None
         else case.get("weight").reshape(shape))
    mean = v.mean(axis=axes, keepdims=True)
    c = v - mean
    r = np.sqrt((c * c).sum(axis=axes, keepdims=True))
    d = r + eps
    spread = r / np.sqrt(m)
    K = (red + s) * (2 + np.abs(mean) / spread)
    err_c = (red + s) * (np.abs(mean) + spread) + s * np.abs(c)
    out = {"y": SAFETY * (np.abs(g) * (err_c + np.abs(c) * K) / d + s * np.abs(reference["y"])) + tiny}
    if dy is not None:
        c_hat, ady = np.abs(c) / r, np.abs(dy)
        sum_cd = (c_hat * ady).sum(axis=axes, keepdims=True)
        sum_d = ady.sum(axis=axes, keepdims=True) / np.sqrt(m)
        terms = ady + c_hat * (sum_cd + sum_d) + sum_cd * (c_hat + 1 / np.sqrt(m))
        err_dc = np.abs(g) / d * (K + s) * terms
        mean_dc = np.abs(g) / d * (ady + c_hat * sum_cd).mean(axis=axes, keepdims=True)
        out["x"] = SAFETY * (err_dc + err_dc.mean(axis=axes, keepdims=True) + red * mean_dc) + tiny
        if case.get("weight") is not None:
            out["weight"] = (SAFETY * (K + s) * (sum_cd + sum_d) * (r / d) + tiny).reshape(case.get("weight").shape)
    return Bounds(out)


def _tangent_gain(a_mat: np.ndarray, x: np.ndarray) -> float:
    """Norm of the first-order map of errors in the unit vector x through x -> A x/||A x||:
    ||(I - y y^T) A (I - x x^T)|| / ||A x||, y = A x/||A x|| (radial errors cancel)."""
    x_hat = x / np.linalg.norm(x)
    ax = a_mat @ x_hat
    y = ax / np.linalg.norm(ax)
    proj = a_mat - np.outer(ax, x_hat)
    proj = proj - np.outer(y, y @ proj)
    return float(np.linalg.norm(proj, 2) / np.linalg.norm(ax))


def spectral_norm_bounds(case, dtype: str, reference: dict, dy=None, ref_grads=None) -> Bounds:
    """Power iteration followed by W / (u^T W v). Each step rounds a mat-vec (relative
    (u g(len) + u_s) ||(|W||x|)||/||W x||) and a normalization, and passes the incoming error on
    through its tangent gain (the contraction sigma_2/sigma_1 near convergence, computed along the
    float64 trajectory); sigma's error is divided by |sigma| (its condition, large when u, v are
    nearly orthogonal to W's action), and W_SN and its gradient inherit it."""
    from normspec.spec.spectral_norm import _normalize, weight_matrix

    p = case.params
    dim, eps = p.get("dim", 0), p.get("eps", 1e-12)
    w_mat = weight_matrix(case.x, dim)
    k, n_cols = w_mat.shape
    s, tiny = storage_roundoff(dtype), TINY[dtype]
    abs_w = np.abs(w_mat)
    u, v = case.get("u"), case.get("v")
    err_u = err_v = 0.0
    if p.get("training", True):
        v_first = p.get("power_iteration_order", "u_first") == "v_first"
        for _ in range(p.get("n_power_iterations", 1)):
            if v_first:  # Algorithm 1 / the legacy hook: the v half-step comes first
                b = w_mat.T @ u
                step = (_reduction(k, dtype) * np.linalg.norm(abs_w.T @ np.abs(u)) / np.linalg.norm(b)
                        + 2 * _reduction(n_cols, dtype))
                err_v = (_tangent_gain(w_mat.T, u) * err_u if err_u else 0.0) + step
                v = _normalize(b, eps)
            a = w_mat @ v
            step = (_reduction(n_cols, dtype) * np.linalg.norm(abs_w @ np.abs(v)) / np.linalg.norm(a)
                    + 2 * _reduction(k, dtype))
            err_u = (_tangent_gain(w_mat, v) * err_v if err_v else 0.0) + step
            u = _normalize(a, eps)
            if not v_first:
                b = w_mat.T @ u
                step = (_reduction(k, dtype) * np.linalg.norm(abs_w.T @ np.abs(u)) / np.linalg.norm(b)
                        + 2 * _reduction(n_cols, dtype))
                err_v = _tangent_gain(w_mat.T, u) * err_u + step
                v = _normalize(b, eps)
    wv = w_mat @ v
    sigma = float(u @ wv)
    d_sigma = (np.linalg.norm(wv) * err_u + np.linalg.norm(w_mat.T @ u) * err_v
               + _reduction(n_cols, dtype) * float(np.abs(u) @ abs_w @ np.abs(v))
               + _reduction(k, dtype) * float(np.abs(u) @ np.abs(wv)))
    rel = d_sigma / abs(sigma)
    out = {"y": SAFETY * (rel + 2 * s) * np.abs(reference["y"]) + tiny,
           "u": SAFETY * (err_u + s * np.abs(reference["u"])) + tiny,
           "v": SAFETY * (err_v + s * np.abs(reference["v"])) + tiny}
    if dy is not None:
        d = (case.params.get("dim", 0)) % case.x.ndim
        dy_mat = np.moveaxis(dy, d, 0).reshape(k, n_cols)
        y_mat = np.moveaxis(reference["y"], d, 0).reshape(k, n_cols)
        c = float((dy_mat * y_mat).sum())
        cab = float(np.abs(dy_mat * y_mat).sum())
        uv = np.abs(np.outer(u, v))
        err = ((np.abs(dy_mat) + abs(c) * uv) * (rel + 2 * s)
               + abs(c) * (err_u * np.abs(v)[None, :] + np.abs(u)[:, None] * err_v + err_u * err_v)
               + _reduction(k * n_cols, dtype) * cab * uv) / abs(sigma)
        full = np.moveaxis(err.reshape((case.x.shape[d],) + tuple(np.delete(case.x.shape, d))), 0, d)
        out["x"] = SAFETY * full + tiny
    return Bounds(out)


def norm_prop_bounds(case, dtype: str, reference: dict, dy=None, ref_grads=None) -> Bounds:
    """u = x W_n^T + beta with W_n = gamma W/||W_row||: a dot product of `in` terms and a row norm.
    The ReLU is 1-Lipschitz but its derivative jumps at 0: where |u| is within u's own error
    bound the gradient may take either side, so the bound there includes the whole |dy|/c."""
    from normspec.spec.norm_prop import RELU_MEAN, RELU_STD

    x, w = case.x, case.get("weight")
    n, n_in = x.shape
    n_out = w.shape[0]
    s, tiny = storage_roundoff(dtype), TINY[dtype]
    red_in = _reduction(n_in, dtype)
    gamma = np.ones(n_out) if case.get("gamma") is None else case.get("gamma")
    beta = np.zeros(n_out) if case.get("bias") is None else case.get("bias")
    r = np.sqrt((w * w).sum(axis=1, keepdims=True))
    w_hat = np.abs(w) / r
    w_n = np.abs(gamma)[:, None] * w_hat
    u = x @ (gamma[:, None] * w / r).T + beta
    e_u = (2 * red_in + s) * (np.abs(x) @ w_n.T) + s * np.abs(u)
    relu = case.params.get("activation", "relu") == "relu"
    if relu:
        e_y = (e_u + s * (np.maximum(u, 0) + RELU_MEAN)) / RELU_STD + s * np.abs(reference["y"])
    else:
        e_y = e_u
    out = {"y": SAFETY * e_y + tiny}
    if dy is not None:
        c = RELU_STD if relu else 1.0
        du = np.where(u > 0, dy / c, 0.0) if relu else dy
        kink = (np.abs(u) <= SAFETY * e_u) if relu else np.zeros(u.shape, bool)
        e_du = np.where(kink, np.abs(dy) / c, 0.0) + 2 * s * np.abs(du)
        adu = np.abs(du) + e_du
        out["x"] = SAFETY * (e_du @ w_n + (_reduction(n_out, dtype) + red_in) * (adu @ w_n)) + tiny
        out["bias"] = SAFETY * (e_du.sum(axis=0) + _reduction(n, dtype) * adu.sum(axis=0)) + tiny
        big_g = du.T @ x
        e_g = e_du.T @ np.abs(x) + _reduction(n, dtype) * (adu.T @ np.abs(x))
        sum_eg = (w_hat * e_g).sum(axis=1, keepdims=True)
        sum_g = (w_hat * np.abs(big_g)).sum(axis=1, keepdims=True)
        out["gamma"] = SAFETY * (sum_eg + (red_in + 2 * s) * sum_g).reshape(-1) + tiny
        out["weight"] = SAFETY * np.abs(gamma)[:, None] / r * (
            e_g + w_hat * sum_eg + (red_in + 2 * s) * (np.abs(big_g) + w_hat * sum_g)) + tiny
    return Bounds(out)


# ---------------------------------------------------------------- BatchNorm's relatives (batch family)
# Batch Renorm, Lp batch norm and ZCA whitening are not plain mean/variance normalizers; their
# bounds below use the same two ingredients (unit roundoff x condition), derived per operator.

def _batch_axes(x: np.ndarray) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return (0,) + tuple(range(2, x.ndim)), (1, x.shape[1]) + (1,) * (x.ndim - 2)


def _affine_arrays(case, shape):
    return case.array_or("weight", shape, 1.0), case.array_or("bias", shape, 0.0)


def batch_renorm_bounds(case, dtype, reference, dy=None, ref_grads=None) -> Bounds:
    """Batch Renorm y = gamma (r xhat + d) + beta: the moment model with effective affine
    (gamma r, gamma d + beta), plus the error of d = (mu_B - mu)/sigma, u g (|mu_B| + |mu| + s_B)/sigma,
    and of the moving statistics (|mu| and |sigma| enter the update). Keras' form: sigma floored at
    sqrt(eps); its inference statistics (moving_mean, moving_std) bounded like the running ones,
    and its inference divisor sqrt(relu(s^2 - eps) + eps) errs by a few u relative (eps is added back)."""
    from normspec.spec.batch_renorm import renorm_factors
    from normspec.spec.moments import moments

    x, p = case.x, case.params
    axes, shape = _batch_axes(x)
    eps = p.get("eps", 1e-5)
    keras = p.get("form", "ioffe") == "keras"
    gamma, beta = _affine_arrays(case, shape)
    rm, rs = case.get("running_mean").reshape(shape), case.get("running_std").reshape(shape)
    u, v, tiny = compute_roundoff(dtype), storage_roundoff(dtype), TINY[dtype]
    if not p.get("training", True):
        if keras:
            mm, ms = case.get("moving_mean").reshape(shape), case.get("moving_std").reshape(shape)
            sigma = np.sqrt(np.maximum(ms * ms - eps, 0.0) + eps)
            c = Conditioning((x - mm) / sigma, mm, sigma, 1, gamma, beta, axes, axes, False)
        else:
            c = Conditioning((x - rm) / rs, rm, rs, 1, gamma, beta, axes, axes, False)
        return moment_bounds(c, dtype, reference, dy, ref_grads)
    m = moments(x, axes, eps)
    r, d = renorm_factors(m, case.get("running_mean"), case.get("running_std"), p.get("rmax", 3.0), p.get("dmax", 5.0),
                          p.get("rmin"), p.get("form", "ioffe"), eps)
    c = Conditioning(m.xhat, m.mean, m.std, m.count, gamma * r, gamma * d + beta, axes, axes, True)
    core = {k: reference[k] for k in ("y",) if k in reference}
    b = dict(moment_bounds(c, dtype, core, dy, ref_grads).values)
    g = growth(m.count)
    floor = np.maximum(rs, np.sqrt(eps)) if keras else rs
    d_err = SAFETY * u * g * (np.abs(m.mean) + np.abs(rm) + m.std) / floor
    b["y"] = b["y"] + np.abs(gamma) * d_err
    states = [("running_mean", "running_std", rm, rs)]
    if keras:
        states.append(("moving_mean", "moving_std", case.get("moving_mean").reshape(shape),
                       case.get("moving_std").reshape(shape)))
    for mean_name, std_name, old_mean, old_std in states:
        if mean_name in reference:
            b[mean_name] = (SAFETY * (u * g * (np.abs(m.mean) + m.std) + u * np.abs(old_mean))).reshape(-1) \
                + SAFETY * v * np.abs(reference[mean_name]) + tiny
            b[std_name] = (SAFETY * (u * g * (np.abs(m.mean) + m.std) + u * np.abs(old_std))).reshape(-1) \
                + SAFETY * v * np.abs(reference[std_name]) + tiny
    if dy is not None and "weight" in b:
        n = int(np.prod([dy.shape[a] for a in axes]))
        cond = 1.0 + np.abs(m.xhat) + np.abs(m.mean) / m.std
        b["weight"] = SAFETY * (u * (growth(n) + g) * (np.abs(dy) * (r * cond + np.abs(d) + d_err)).sum(axis=axes)
                                + v * np.abs((ref_grads or {}).get("weight", 0.0))) + tiny
    return Bounds(b)


def lp_batch_norm_bounds(case, dtype, reference, dy=None, ref_grads=None) -> Bounds:
    """Lp batch norm y = gamma z/D + beta, D = h(S): the moment model with s -> D (S has relative
    error u g (1 + |mu|/S), like sigma), plus, for the gradient, the term of dS/dz, which top-k
    concentrates on k values (m/k times BatchNorm's spread term). Near-ties at the top-k boundary
    closer than the forward error may select differently: a jump of the subgradient, not covered."""
    from normspec.spec.lp_batch_norm import _ddenominator, _denominator, _flat, _unflat, lp_scale

    x, p = case.x, case.params
    axes, shape = _batch_axes(x)
    eps, placement = p.get("eps", 1e-5), p.get("eps_placement", "outside")
    gamma, beta = _affine_arrays(case, shape)
    has_running = case.get("running_mean") is not None and case.get("running_scale") is not None
    u, v, tiny = compute_roundoff(dtype), storage_roundoff(dtype), TINY[dtype]
    if has_running and not p.get("training", True):
        den = _denominator(case.get("running_scale"), eps, placement).reshape(shape)
        mean = case.get("running_mean").reshape(shape)
        c = Conditioning((x - mean) / den, mean, den, 1, gamma, beta, axes, axes, False)
        return moment_bounds(c, dtype, reference, dy, ref_grads)
    mean, z, s, ds = lp_scale(x, p.get("p", 1.0), p.get("k", 1), p.get("constant"))
    den = _denominator(s, eps, placement)
    c = Conditioning(_unflat(z / den, x.shape), mean.reshape(shape), den.reshape(shape), z.shape[0], gamma, beta,
                     axes, axes, True)
    b = dict(moment_bounds(c, dtype, {"y": reference["y"]}, dy, ref_grads).values)
    g = growth(z.shape[0])
    if "running_mean" in reference:
        b["running_mean"] = SAFETY * (u * g * (np.abs(mean) + s) + u * np.abs(case.get("running_mean"))
                                      + v * np.abs(reference["running_mean"])) + tiny
        b["running_scale"] = SAFETY * (u * g * (np.abs(mean) + s) + u * np.abs(case.get("running_scale"))
                                       + v * np.abs(reference["running_scale"])) + tiny
    if dy is not None:
        gf = _flat(gamma * dy)
        cond = 1.0 + np.abs(z) / den + np.abs(mean) / den
        slope = _ddenominator(s, eps, placement) / den**2
        term = np.abs(ds) * slope * (np.abs(gf) * np.abs(z)).sum(axis=0)
        # The subgradient of |z| at 0 (p = 1) and of top-k at a tie is a set, not a value: where z
        # lies within the forward error of the kink, rounding picks any member of that set, moving
        # dS/dz_i by up to 2 C/m (p = 1) or C/k (top-k). That jump is part of the bound there only.
        p_, k = p.get("p", 1.0), p.get("k", 1)
        near = SAFETY * u * g * (np.abs(mean) + s)
        from normspec.spec.lp_batch_norm import gaussian_constant
        c = gaussian_constant(p_, z.shape[0]) if p.get("constant") is None else float(p["constant"])
        if np.isinf(p_):
            a = np.abs(z)
            kth = -np.sort(-a, axis=0)[k - 1]
            ambiguous, jump = np.abs(a - kth) <= near, c / k
        elif p_ == 1.0:
            ambiguous, jump = np.abs(z) <= near, 2 * c / z.shape[0]
        else:
            ambiguous, jump = np.zeros(z.shape, bool), 0.0
        kink = ambiguous * jump * slope * np.abs((gf * z).sum(axis=0))
        b["x"] = b["x"] + _unflat(SAFETY * u * g * cond * (term + np.abs(term).mean(axis=0)) + kink + kink.mean(axis=0),
                                  x.shape)
    return Bounds({k: overflow_allowed(val, {**reference, **(ref_grads or {})}.get(k), dtype) for k, val in b.items()})


def overflow_allowed(bound, expected, dtype):
    """Where |expected| + bound reaches past the dtype's largest finite value, a correct result may
    round to +-inf (eps outside a root gives 1/eps = 1e5 > float16's 65504): the bound there admits
    every value of the dtype already, and now admits the infinities too."""
    if expected is None:
        return bound
    expected = np.asarray(expected, dtype=np.float64)
    bound = np.broadcast_to(bound, expected.shape)
    return np.where(np.abs(expected) + bound > MAX_FINITE[dtype], np.inf, bound)


def _group_norms(a: np.ndarray) -> np.ndarray:
    return np.sqrt((a * a).sum(axis=-1, keepdims=True))


def zca_bounds(case, dtype, reference, dy=None, ref_grads=None) -> Bounds:
    """ZCA whitening y = Xc Phi, Phi = (Sigma + eps I)^(-1/2), per group, by first-order perturbation.

    Sigma is computed with ||dSigma|| <= u (g(m) + 2 gs) (lambda_max + eps) (summation and eigh's
    backward error). Phi = f(Sigma) moves by D (K o D^T dSigma D) D^T, where the divided differences
    K_ij = (f(l_i) - f(l_j))/(l_i - l_j) are at most K_i = 1/(s_i s_min (s_i + s_min)), s = sqrt(l + eps):
    so |dy_n| <= ||dSigma|| sum_i |c_ni| K_i, with c_n = Xc_n D the sample's eigen-coordinates; this
    needs no eigenvalue gap, only the smallest eigenvalue + eps. Centering adds u g(m) (||mu|| + sqrt(tr
    Sigma))/s_min, the product Xc Phi u g(gs) |Xc| |Phi|. Gradients involve f'' too: their relative
    error carries the condition number kappa = (lambda_max + eps)/(lambda_min + eps)."""
    from normspec.spec.decorrelated_batch_norm import divided_differences, grouped, ungrouped, whitening

    x, p = case.x, case.params
    gs, eps = p["group_size"], p.get("eps", 1e-5)
    axes, shape = _batch_axes(x)
    gamma, beta = _affine_arrays(case, shape)
    u, v, tiny = compute_roundoff(dtype), storage_roundoff(dtype), TINY[dtype]
    xg = grouped(x, gs)
    m = xg.shape[1]
    has_running = case.get("running_mean") is not None and case.get("running_whitening") is not None
    batch = p.get("training", True) or not has_running
    out = {}
    if batch:
        w = whitening(xg, eps)
        s = np.sqrt(w.lam + eps)  # (G, gs)
        s_min, lam_max = s[:, :1], w.lam[:, -1:]
        k_row = 1.0 / (s * s_min * (s + s_min))  # (G, gs)
        coords = np.abs(np.einsum("gmi,gij->gmj", w.xc, w.vecs))  # (G, m, gs)
        d_sigma = (growth(m) + 2 * gs) * (lam_max + eps)  # (G, 1), in units of u
        t_sigma = d_sigma[:, None] * (coords * k_row[:, None, :]).sum(axis=-1, keepdims=True)
        mu_norm = np.sqrt((w.mean**2).sum(axis=-1, keepdims=True))  # (G, 1, 1)
        t_mean = growth(m) * (mu_norm + np.sqrt(np.trace(w.sigma, axis1=1, axis2=2))[:, None, None]) / s_min[:, None]
        t_mult = growth(gs) * np.einsum("gmi,gij->gmj", np.abs(w.xc), np.abs(w.phi))
        err_hat = SAFETY * u * (t_sigma + t_mean + t_mult)
        yhat = np.einsum("gmi,gij->gmj", w.xc, w.phi)
    else:
        phi = case.get("running_whitening")
        mean = case.get("running_mean").reshape(xg.shape[0], 1, gs)
        err_hat = SAFETY * u * growth(gs) * np.einsum("gmi,gij->gmj", np.abs(xg) + np.abs(mean), np.abs(phi))
        yhat = np.einsum("gmi,gij->gmj", xg - mean, phi)
    err_hat_x = ungrouped(err_hat, x.shape)
    out["y"] = np.abs(gamma) * err_hat_x + SAFETY * v * (np.abs(reference["y"]) + np.abs(beta)) + tiny
    if "running_mean" in reference:
        g = growth(m)
        spread = np.sqrt(np.maximum(np.diagonal(w.sigma, axis1=1, axis2=2), 0)).reshape(-1)
        out["running_mean"] = SAFETY * (u * g * (np.abs(w.mean.reshape(-1)) + spread)
                                        + u * np.abs(case.get("running_mean"))
                                        + v * np.abs(reference["running_mean"])) + tiny
        rel = (d_sigma[:, :, None] * (1.0 / (2 * s_min**3))[:, :, None])  # ||dPhi|| / u
        out["running_whitening"] = SAFETY * (u * rel + u * np.abs(case.get("running_whitening"))
                                             + v * np.abs(reference["running_whitening"])) + tiny
    if dy is None:
        return Bounds(out)
    ref_grads = ref_grads or {}
    gg = grouped(gamma * dy, gs)
    if batch:
        kappa = (lam_max + eps) / s_min**2  # (G, 1)
        a = np.einsum("gmi,gmj->gij", w.xc, gg)
        a = (a + a.transpose(0, 2, 1)) / 2
        inner = np.einsum("gki,gkl,glj->gij", w.vecs, a, w.vecs) * divided_differences(w.lam, eps)
        bmat = np.einsum("gik,gkl,gjl->gij", w.vecs, inner, w.vecs)
        size = np.einsum("gmi,gij->gmj", np.abs(gg), np.abs(w.phi)) + 2 * np.einsum(
            "gmi,gij->gmj", np.abs(w.xc), np.abs(bmat)) / m
        size = size + size.mean(axis=1, keepdims=True)
        err_dx = SAFETY * u * (growth(m) + 2 * gs) * (1 + kappa[:, :, None]) * size
    else:
        err_dx = SAFETY * u * growth(gs) * np.einsum("gmi,gji->gmj", np.abs(gg), np.abs(case.get("running_whitening")))
    out["x"] = ungrouped(err_dx, x.shape) + SAFETY * v * np.abs(ref_grads.get("x", 0.0)) + tiny
    n = int(np.prod([dy.shape[q] for q in axes]))
    yh = ungrouped(yhat, x.shape)
    out["weight"] = (SAFETY * (u * growth(n) * (np.abs(dy) * np.abs(yh)).sum(axis=axes))
                     + (np.abs(dy) * err_hat_x).sum(axis=axes)
                     + SAFETY * v * np.abs(ref_grads.get("weight", 0.0)) + tiny)
    out["bias"] = SAFETY * (u * growth(n) * np.abs(dy).sum(axis=axes) + v * np.abs(ref_grads.get("bias", 0.0))) + tiny
    return Bounds(out)


# ---------------------------------------------------------------- the moment-normalizer family
# (GroupNorm, RMSNorm, MVN): the same terms, in the geometry each of them needs.

def _in_view(c: Conditioning, dtype: str, reference: dict[str, np.ndarray], dy: np.ndarray | None,
             ref_grads: dict[str, np.ndarray] | None) -> Bounds:
    """`moment_bounds` in the view `c.view_shape` where the reduction sets are axis-aligned."""
    view_shape = c.view_shape
    flat = Conditioning(**{**c.__dict__, "view_shape": None})
    shape = reference["y"].shape
    ref = {k: np.reshape(v, view_shape) if k == "y" else v for k, v in reference.items()}
    grads = {k: (np.reshape(v, view_shape) if k == "x" else np.reshape(v, np.shape(c.gamma.sum(axis=c.param_axes))))
             for k, v in (ref_grads or {}).items()}
    b = moment_bounds(flat, dtype, ref, None if dy is None else np.reshape(dy, view_shape), grads)
    return Bounds({k: (np.broadcast_to(v, view_shape).reshape(shape) if k in ("y", "x") else np.reshape(v, -1))
                   for k, v in b.values.items()})


def saved_statistics_bounds(c: Conditioning, dtype: str, mean: np.ndarray, rstd: np.ndarray) -> dict[str, np.ndarray]:
    """The saved statistics of a moment normalizer (torch.native_layer_norm's mean and rstd): the
    mean errs by u g(m) (|mu| + sigma), as in `moment_bounds`; sigma' = sqrt(var + eps) by a relative
    u g(m) (1 + |mu|/sigma'), so rstd = 1/sigma' too; each then rounds to the dtype (v)."""
    u, v, tiny = compute_roundoff(dtype), storage_roundoff(dtype), TINY[dtype]
    g = growth(c.count)
    mu = np.abs(c.mean)
    rel = SAFETY * u * g * (1.0 + mu / c.std)
    return {"mean": SAFETY * (u * g * (mu + c.std) + v * np.abs(mean)) + tiny,
            "rstd": overflow_allowed(rel * np.abs(rstd) + SAFETY * v * np.abs(rstd) + tiny, rstd, dtype)}


def mvn_bounds(c: MvnCondition, dtype: str, reference: dict[str, np.ndarray], dy: np.ndarray | None = None,
               ref_grads: dict[str, np.ndarray] | None = None) -> Bounds:
    """MVN y = (x - mu)/d with d = sigma + eps (eps outside the square root), or y = x - mu
    without variance normalization (eps None). The mean errs by u g(m) (|mu| + sigma) and sigma by
    a relative u g(m); so the centred value errs by u g(m) (|x - mu| + |mu| + sigma), and in units
    of d, cond = 1 + |y| + (|mu| + sigma)/d. The gradient dx = (dy - mean dy)/d - y mean(dy y)/sigma
    carries 1/sigma, not 1/d, in its last term; it is undefined where sigma = 0."""
    centred, mean, sigma, eps, count, stats_axes = c.centred, c.mean, c.sigma, c.eps, c.count, c.stats_axes
    u, v, tiny = compute_roundoff(dtype), storage_roundoff(dtype), TINY[dtype]
    g = growth(count)
    grads = ref_grads or {}
    absdy = None if dy is None else np.abs(dy)
    if eps is None:
        out = {"y": SAFETY * (u * g * (np.abs(centred) + np.abs(mean) + sigma) + v * np.abs(reference["y"])) + tiny}
        if dy is not None:
            out["x"] = SAFETY * (u * g * (absdy + _mean_over(absdy, stats_axes))
                                 + v * np.abs(grads.get("x", 0.0))) + tiny
        return Bounds(out)
    divisor = sigma + eps
    y_hat = centred / divisor
    cond = 1.0 + np.abs(y_hat) + (np.abs(mean) + sigma) / divisor
    out = {"y": SAFETY * (u * g * cond + v * np.abs(reference["y"])) + tiny}
    if dy is not None:
        first = cond * (absdy + _mean_over(absdy, stats_axes)) / divisor
        with np.errstate(divide="ignore", invalid="ignore"):
            second = (cond + np.abs(y_hat)) * _mean_over(absdy * cond, stats_axes) / sigma
            dx = np.where(sigma > 0, SAFETY * u * g * (first + second), np.inf)
        out["x"] = dx + SAFETY * v * np.abs(np.nan_to_num(grads.get("x", 0.0))) + tiny
    return Bounds(out)


# ---------------------------------------------------------------- normalization by reparametrization
# The whitened layer (Natural Neural Networks), the mean-normalized layer and Raiko et al.'s
# transformed units. Every product of m terms carries _reduction(m) on the sum of its |terms| (the
# standard componentwise bound |fl(A B) - A B| <= gamma_m |A| |B|, Higham ch. 3), every stored
# intermediate u_storage. A refresh adds the condition of the covariance: Sigma is computed with
# ||dSigma|| <= (u g(N) + u_s)(lambda_max + eps + ||(|c'| + spread)|| sqrt(tr Sigma)) + u 2 in
# (lambda_max + eps) (centering, summation, eigh's backward error), and U' = f(Sigma), U'^-1 move
# by a relative rho = ||dSigma||/(lambda_min + eps) (the inverse square root's derivative), so the
# refreshed product V' U' (which is W in exact arithmetic) is off by rho relative to the magnitudes
# along the refreshed path. Where the function may be computed either way (a kernel may give y at a
# refresh from the old parameters or the new ones), the bound covers both paths.

def refresh_covariance(x: np.ndarray, eps: float, dtype: str):
    """(c', Sigma, eigenvalues ascending, ||dSigma||, rho) of the refresh fitted on x."""
    from normspec.spec.reparametrization import eigen, input_statistics

    n, n_in = x.shape
    c1, sigma = input_statistics(x)
    lam, vecs = eigen(sigma, eps)
    spread = np.sqrt(np.maximum(np.diagonal(sigma), 0.0))
    d_sigma = (_reduction(n, dtype) + storage_roundoff(dtype)) * (
        lam[-1] + eps + float(np.linalg.norm(np.abs(c1) + spread)) * float(np.sqrt(max(np.trace(sigma), 0.0)))) \
        + compute_roundoff(dtype) * 2 * n_in * (lam[-1] + eps)
    return c1, sigma, lam, vecs, d_sigma, d_sigma / (lam[0] + eps)


def _pca_state_errors(lam, vecs, d_sigma, eps, u1, v1, w):
    """Errors of the PCA rows of U' = (Lambda + eps)^(-1/2) E^T and the columns of V' = W E (Lambda + eps)^(1/2):
    an eigenvector moves by ||dSigma||/gap (Davis-Kahan), its scale by dSigma/(2 s^3); where the
    canonical sign (largest entry positive) is decided by a margin the eigenvector's error covers,
    either sign is a correct result, and the bound admits both (2 |row|)."""
    from normspec.spec.reparametrization import canonical_pca_basis

    lam_d = lam[::-1]
    k = lam_d.size
    diff = np.abs(lam_d[:, None] - lam_d[None, :]) + np.where(np.eye(k, dtype=bool), np.inf, 0.0)
    gap = diff.min(axis=1) if k > 1 else np.array([np.inf])
    with np.errstate(divide="ignore"):
        de = np.minimum(np.where(gap > 0, d_sigma / gap, np.inf), 2.0)
    s = np.sqrt(lam_d + eps)
    e = canonical_pca_basis(vecs)
    top = -np.sort(-np.abs(e), axis=0)
    margin = (top[0] - top[1]) / 2 if k > 1 else np.full(k, np.inf)
    flip = de >= margin
    row_w = np.sqrt((w * w).sum(axis=1, keepdims=True))  # (out, 1)
    err_u = (de / s)[:, None] + np.abs(e.T) * (d_sigma / (2 * s**3))[:, None] + 2 * flip[:, None] * np.abs(u1)
    err_v = row_w * (de * s + d_sigma / (2 * s))[None, :] + 2 * flip[None, :] * np.abs(v1)
    return err_u, err_v


def whitened_linear_bounds(case, dtype: str, reference: dict, dy=None, ref_grads=None) -> Bounds:
    """h = V U (x - c) + d and, at a refresh, c', U', V' = V U U'^-1, d' = d + V U (c' - c): the
    products' componentwise bounds on the old path (and, at a refresh, on the refreshed path, times
    1 + rho, rho the covariance's condition-scaled error); the state's own errors (c' by the mean's,
    U' and V' by the inverse square root's derivative: ||dSigma||/(2 s_min^3), ||dSigma||/(2 s_min)
    for ZCA, per eigenvector for PCA)."""
    from normspec.spec.reparametrization import refreshes

    p = case.params
    x, v, d, c, u = case.x, case.get("weight"), case.get("bias"), case.get("running_mean"), case.get("whitening")
    n, n_in = x.shape
    n_out = v.shape[0]
    eps = p.get("eps", 1e-5)
    red_in, red_out, red_n = _reduction(n_in, dtype), _reduction(n_out, dtype), _reduction(n, dtype)
    s, tiny = storage_roundoff(dtype), TINY[dtype]
    ax, ac, au, av = np.abs(x), np.abs(c), np.abs(u), np.abs(v)
    mag_y = (ax + ac) @ au.T @ av.T + np.abs(d)
    err_y = 2 * (red_in + s) * mag_y
    refresh = refreshes(p.get("training", True), p.get("step", 0), p.get("interval", 1))
    out = {}
    if refresh:
        c1, sigma, lam, vecs, d_sigma, rho = refresh_covariance(x, eps, dtype)
        u1, v1, d1 = reference["whitening"], reference["new_weight"], reference["new_bias"]
        w = v @ u
        au1, av1 = np.abs(u1), np.abs(v1)
        u1_inv = np.linalg.solve(u1, np.eye(n_in))
        mag_y1 = (ax + np.abs(c1)) @ au1.T @ av1.T + np.abs(d1)
        err_w = (red_in + s) * (av @ au)  # W = V U formed by the kernel
        err_c1 = red_n * (np.abs(c1) + np.sqrt(np.maximum(np.diagonal(sigma), 0.0))) + s * np.abs(c1)
        err_d1 = (red_in + s) * (np.abs(d) + (av @ au) @ (ac + np.abs(c1))) + err_w @ (ac + np.abs(c1)) \
            + np.abs(w) @ err_c1
        err_y = err_y + (2 * red_in + 2 * s + 2 * rho) * mag_y1 + err_d1
        s_min = np.sqrt(lam[0] + eps)
        if p.get("method", "pca") == "zca":
            err_u1 = d_sigma / (2 * s_min**3) * np.ones_like(u1)
            row_w = np.sqrt((w * w).sum(axis=1, keepdims=True))
            err_v1 = row_w * d_sigma / (2 * s_min) + (red_in + s) * (np.abs(w) + err_w) @ np.abs(u1_inv)
        else:
            err_u1, err_v1 = _pca_state_errors(lam, vecs, d_sigma, eps, u1, v1, w)
            err_v1 = err_v1 + (red_in + s) * (np.abs(w) + err_w) @ np.abs(u1_inv)
        out["running_mean"] = SAFETY * err_c1 + tiny
        out["whitening"] = SAFETY * (err_u1 + s * au1) + tiny
        out["new_weight"] = SAFETY * (err_v1 + s * av1) + tiny
        out["new_bias"] = SAFETY * (err_d1 + s * np.abs(d1)) + tiny
    out["y"] = SAFETY * (err_y + s * np.abs(reference["y"])) + tiny
    if dy is not None:
        ref_grads = ref_grads or {}
        ady = np.abs(dy)
        mag_dx = ady @ av @ au
        err_dx = (red_out + red_in + 2 * s) * mag_dx
        mag_dv = ady.T @ ((ax + ac) @ au.T)
        err_dv = (red_n + 2 * red_in + 2 * s) * mag_dv
        if refresh:
            err_dx = err_dx + (red_out + red_in + 2 * s + 2 * rho) * (ady @ av1 @ au1)
            path = (ady.T @ ((ax + np.abs(c1)) @ au1.T)) @ np.abs(u1_inv).T @ au.T \
                + np.outer(ady.sum(axis=0), au @ (ac + np.abs(c1)))
            err_dv = err_dv + (red_n + 3 * red_in + 3 * s + 2 * rho) * path
        out["x"] = SAFETY * (err_dx + s * np.abs(ref_grads.get("x", 0.0))) + tiny
        out["weight"] = SAFETY * (err_dv + s * np.abs(ref_grads.get("weight", 0.0))) + tiny
        out["bias"] = SAFETY * (red_n * ady.sum(axis=0) + s * np.abs(ref_grads.get("bias", 0.0))) + tiny
    return Bounds(out)


def mean_normalized_linear_bounds(case, dtype: str, reference: dict, dy=None, ref_grads=None) -> Bounds:
    """h = W (x - mu) + b and, at a refresh, mu' = (1 - m) mu + m mean(x), b' = b + W (mu' - mu): the
    whitened layer's model with U = I (no covariance, so no condition term): products bounded
    componentwise on both paths, mu' by the mean's error u g(N) (|mean| + spread) and the blend's."""
    from normspec.spec.reparametrization import refreshes

    p = case.params
    x, w, b, mu = case.x, case.get("weight"), case.get("bias"), case.get("running_mean")
    n, n_in = x.shape
    red_in, red_out, red_n = _reduction(n_in, dtype), _reduction(w.shape[0], dtype), _reduction(n, dtype)
    s, tiny = storage_roundoff(dtype), TINY[dtype]
    ax, amu, aw = np.abs(x), np.abs(mu), np.abs(w)
    err_y = (red_in + 2 * s) * ((ax + amu) @ aw.T + np.abs(b))
    refresh = refreshes(p.get("training", True), p.get("step", 0), p.get("interval", 1))
    out = {}
    mu1 = mu
    if refresh:
        mu1, b1 = reference["running_mean"], reference["new_bias"]
        mean, spread = x.mean(axis=0), x.std(axis=0)
        err_mu1 = red_n * (np.abs(mean) + spread) + 2 * s * (amu + np.abs(mean)) + s * np.abs(mu1)
        err_b1 = (red_in + 2 * s) * (np.abs(b) + aw @ (amu + np.abs(mu1))) + aw @ err_mu1
        err_y = err_y + (red_in + 2 * s) * ((ax + np.abs(mu1)) @ aw.T + np.abs(b1)) + err_b1
        out["running_mean"] = SAFETY * err_mu1 + tiny
        out["new_bias"] = SAFETY * (err_b1 + s * np.abs(b1)) + tiny
    out["y"] = SAFETY * (err_y + s * np.abs(reference["y"])) + tiny
    if dy is not None:
        ref_grads = ref_grads or {}
        ady = np.abs(dy)
        err_dw = (red_n + 2 * s) * (ady.T @ (ax + amu))
        if refresh:
            path = ady.T @ (ax + np.abs(mu1)) + np.outer(ady.sum(axis=0), amu + np.abs(mu1))
            err_dw = err_dw + (red_n + 2 * s) * path
        out["x"] = SAFETY * ((red_out + s) * (ady @ aw) + s * np.abs(ref_grads.get("x", 0.0))) + tiny
        out["weight"] = SAFETY * (err_dw + s * np.abs(ref_grads.get("weight", 0.0))) + tiny
        out["bias"] = SAFETY * (red_n * ady.sum(axis=0) + s * np.abs(ref_grads.get("bias", 0.0))) + tiny
    return Bounds(out)


def raiko_tanh_bounds(case, dtype: str, reference: dict, dy=None, ref_grads=None) -> Bounds:
    """y = A f(B x + b) + C x + e, f = tanh(a) - alpha a - beta. a errs by the product's bound; tanh
    passes it on with slope 1 - t^2 and adds its own rounding; f's terms cancel (the transformation
    is built to make them cancel on average), so its error is relative to |t| + |alpha a| + |beta|,
    not |f|. At a refresh alpha', beta' are means over N (u g(N) on their |terms|), and a kernel may
    compute y through f', C', e': the magnitudes cover both paths (alpha's own error cancels there:
    f' and C', e' use the same alpha')."""
    from normspec.spec.reparametrization import refreshes

    p = case.params
    x = case.x
    b_w, b, a_w, c_w, e = (case.get(r) for r in ("weight", "bias", "out_weight", "shortcut", "out_bias"))
    al, be = case.get("alpha"), case.get("beta")
    n, n_in = x.shape
    h, n_out = b_w.shape[0], a_w.shape[0]
    red_in, red_h, red_out, red_n = (_reduction(k, dtype) for k in (n_in, h, n_out, n))
    s, uc, tiny = storage_roundoff(dtype), compute_roundoff(dtype), TINY[dtype]
    ax, ab_w, aa_w = np.abs(x), np.abs(b_w), np.abs(a_w)
    a = x @ b_w.T + b
    t = np.tanh(a)
    refresh = refreshes(p.get("training", True), p.get("step", 0), p.get("interval", 1))
    al_mag, be_mag, c_mag, e_mag = np.abs(al), np.abs(be), np.abs(c_w), np.abs(e)
    out = {}
    err_a = (red_in + s) * (ax @ ab_w.T + np.abs(b))
    err_t = err_a * (1 - t * t) + 2 * (uc + s) * np.abs(t)
    if refresh:
        al1, be1 = reference["alpha"], reference["beta"]
        d_al, d_be = np.abs(al1 - al), np.abs(be1 - be)
        al_mag, be_mag = al_mag + np.abs(al1) + d_al, be_mag + np.abs(be1) + d_be
        c_mag = c_mag + (aa_w * d_al) @ ab_w
        e_mag = e_mag + aa_w @ (d_al * np.abs(b) + d_be)
        err_al = red_n * (1 + t * t).mean(axis=0) + (2 * np.abs(t) * err_t).mean(axis=0) + s * np.abs(al1)
        err_be = red_n * (np.abs(t).mean(axis=0) + np.abs(al1) * np.abs(a).mean(axis=0)) + err_t.mean(axis=0) \
            + np.abs(al1) * err_a.mean(axis=0) + err_al * np.abs(a.mean(axis=0)) + s * np.abs(be1)
        out["alpha"] = SAFETY * err_al + tiny
        out["beta"] = SAFETY * err_be + tiny
        out["new_shortcut"] = SAFETY * ((red_h + 2 * s) * c_mag + (aa_w * err_al) @ ab_w
                                        + s * np.abs(reference["new_shortcut"])) + tiny
        out["new_out_bias"] = SAFETY * ((red_h + 2 * s) * e_mag + aa_w @ (err_al * np.abs(b) + err_be)
                                        + s * np.abs(reference["new_out_bias"])) + tiny
    mag_f = np.abs(t) + al_mag * np.abs(a) + be_mag
    err_f = err_t + al_mag * err_a + 2 * (uc + s) * mag_f
    mag_y = mag_f @ aa_w.T + ax @ c_mag.T + e_mag
    err_y = err_f @ aa_w.T + 2 * (red_h + red_in + 2 * s) * mag_y
    out["y"] = SAFETY * (err_y + s * np.abs(reference["y"])) + tiny
    if dy is not None:
        ref_grads = ref_grads or {}
        ady = np.abs(dy)
        mag_da = ady @ aa_w
        slope_mag = 1 + t * t + al_mag
        mag_g = mag_da * slope_mag
        err_g = (red_out + s) * mag_g + mag_da * (2 * np.abs(t) * err_t + 2 * (uc + s) * slope_mag)
        grads = {
            "x": err_g @ ab_w + (red_h + s) * mag_g @ ab_w + (red_out + s) * ady @ c_mag,
            "weight": err_g.T @ ax + (red_n + s) * mag_g.T @ ax,
            "bias": err_g.sum(axis=0) + red_n * mag_g.sum(axis=0),
            "out_weight": ady.T @ err_f + (red_n + s) * ady.T @ mag_f,
            "shortcut": (red_n + s) * ady.T @ ax,
            "out_bias": red_n * ady.sum(axis=0),
        }
        for role, err in grads.items():
            out[role] = SAFETY * (err + s * np.abs(ref_grads.get(role, 0.0))) + tiny
    return Bounds(out)


_STATE_ROLES = {
    "whitened_linear": {"running_mean": "running_mean", "whitening": "whitening", "new_weight": "weight",
                        "new_bias": "bias"},
    "mean_normalized_linear": {"running_mean": "running_mean", "new_bias": "bias"},
    "raiko_tanh": {"alpha": "alpha", "beta": "beta", "new_shortcut": "shortcut", "new_out_bias": "out_bias"},
}


def refreshed_case(case, state: dict):
    """The case with the refreshed state in place of the old parameters, evaluated without a refresh."""
    arrays = {role: state[name] for name, role in _STATE_ROLES[case.norm].items()}
    return case.with_arrays(**arrays).with_params(training=False)


def refresh_preservation_bound(case, dtype: str, reference: dict, probe: np.ndarray, model: BoundFn,
                               spec) -> np.ndarray:
    """Bound on |layer_new(probe) - layer_old(probe)| for two evaluations by one implementation, the
    new state being that implementation's refresh of `case` (reference: the spec's refresh): each
    evaluation's forward bound, plus the refreshed state's errors carried to the output on the probe.
    For the whitened layer the state's errors are carried jointly (V' U' is W up to the relative rho of
    the covariance's condition; the per-entry errors of a PCA basis, which admit a flipped sign, cancel
    in the product)."""
    old = case.with_arrays(x=probe).with_params(training=False)
    new = refreshed_case(old, reference)
    total = model(old, dtype, spec(old))["y"] + model(new, dtype, spec(new))["y"]
    fit = model(case, dtype, reference)
    s = storage_roundoff(dtype)
    ap = np.abs(probe)
    if case.norm == "whitened_linear":
        _, _, _, _, _, rho = refresh_covariance(case.x, case.params.get("eps", 1e-5), dtype)
        u1, v1 = np.abs(reference["whitening"]), np.abs(reference["new_weight"])
        mag = (ap + np.abs(reference["running_mean"])) @ u1.T @ v1.T
        carried = SAFETY * (2 * rho + 2 * s) * mag + fit["new_bias"] + fit["running_mean"] @ (u1.T @ v1.T)
    elif case.norm == "mean_normalized_linear":
        carried = fit["new_bias"] + fit["running_mean"] @ np.abs(case.get("weight")).T
    else:
        a = np.abs(probe @ case.get("weight").T + case.get("bias"))
        carried = (a * fit["alpha"] + fit["beta"]) @ np.abs(case.get("out_weight")).T \
            + ap @ fit["new_shortcut"].T + fit["new_out_bias"]
    return total + carried
