"""Properties and identities of normalization by reparametrization (spec/reparametrization.py): the
whitened layer of Natural Neural Networks (Desjardins et al. 2015), the mean-normalized layer (Wiesler
et al. 2014) and Raiko, Valpola & LeCun's transformed units (2012). What a refresh promises: the layer
computes the same function after it, and the statistic it was fitted for holds right after it."""
from __future__ import annotations

import numpy as np

from normspec.library import tolerance
from normspec.library.case import Case
from normspec.properties.agreement import where
from normspec.properties.core import Context, PropertyFailure, assert_close, prop, traits
from normspec.registry import get_norm

F64 = tolerance.UNIT_ROUNDOFF["float64"]


from normspec.properties.core import named  # noqa: E402  (applies to the named norms only)


def _refresh_run(ctx: Context, **overrides):
    """A refreshing call of the norm, with every state output the record promises checked present."""
    case, dtype, layout = ctx.case(refresh=True, **overrides), ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    for name in ctx.record.outputs[1:]:
        if name not in run.outputs:
            raise PropertyFailure(f"{name} was not returned, but a refresh step should return it [{where(ctx, run)}]")
    return run


@prop("reparametrization", applies=traits("reparametrized"))
def refresh_preserves_function(ctx: Context) -> None:
    """A refresh re-estimates the statistics and updates the parameters so that the layer computes the
    same function (Desjardins et al. 2015, Algorithm 1: V' = W U'^-1, d' = b + W c'; Wiesler et al. 2014:
    b' = b + W (mu' - mu); Raiko et al. 2012: C' = C + A diag(dalpha) B, e' = e + A (dalpha b + dbeta)):
    the backend's layer with its refreshed state equals its layer with the old state on the fitted
    samples and on new ones, within the forward bounds plus the refresh's own error (the covariance's
    condition for the whitened layer). A refresh that skips, or gets wrong, the compensating update
    changes the function by the size of the change of the statistics."""
    fit = _refresh_run(ctx)
    dtype, layout, b = fit.dtype, fit.layout, ctx.backend
    ref, _ = ctx.reference(fit)
    x = fit.case.x
    rng = np.random.default_rng(ctx.seed("probe_seed"))
    spread = x.std(axis=0) + np.abs(x.mean(axis=0)) * 1e-3 + 1e-3
    extra = x.mean(axis=0) + spread * rng.standard_normal((4, x.shape[1]))
    probe = b.to_numpy(b.native(np.concatenate([x, extra]), dtype))
    old = fit.case.with_arrays(x=probe).with_params(training=False)
    new = tolerance.refreshed_case(old, fit.outputs)
    r_old, r_new = ctx.run(old, dtype, layout), ctx.run(new, dtype, layout)
    bound = tolerance.refresh_preservation_bound(fit.case, dtype, ref, probe, ctx.record.bounds, ctx.record.reference)
    assert_close(r_new.outputs["y"], r_old.outputs["y"], bound, "y with the refreshed state",
                 where(ctx, fit) + " vs y with the old state, on the fitted samples and 4 new ones")


@prop("reparametrization", applies=named("whitened_linear", "mean_normalized_linear"))
def refresh_whitens_input(ctx: Context) -> None:
    """Right after a refresh the layer's transformed input z = U'(x - c') has zero mean over the samples
    it was fitted on, and for the whitened layer covariance U' Sigma U'^T = I - eps U' U'^T, i.e.
    U'(Sigma + eps I)U'^T = I for PCA and ZCA alike (Desjardins et al. 2015, sec. 3: U = (Sigma + eps)^-1/2
    up to a rotation); the mean-normalized layer (momentum 1, Wiesler et al. 2014) has z = x - mu'.
    Bounds: the running mean's and, for the covariance, rho = ||dSigma||/(lambda_min + eps) plus the
    storage rounding of U'. A covariance inverted without eps fails (by eps U' U'^T), as does a mean
    blended the wrong way."""
    whitened = ctx.record.name == "whitened_linear"
    run = _refresh_run(ctx) if whitened else _refresh_run(ctx, momentum=1.0)
    ref, _ = ctx.reference(run)
    bounds = ctx.bounds(run, ref, {})
    x, c1 = run.case.x, run.outputs["running_mean"]
    n_in = x.shape[1]
    u1 = run.outputs["whitening"] if whitened else np.eye(n_in)
    at = where(ctx, run)
    z = (x - c1) @ u1.T
    mean_z = z.mean(axis=0)
    slack = 8 * n_in * F64 * (np.abs(x).mean(axis=0) + np.abs(c1)) @ np.abs(u1).T
    assert_close(mean_z, np.zeros(n_in), np.abs(u1) @ bounds["running_mean"] + slack, "mean(z)", at)
    if not whitened:
        return
    eps = run.case.params.get("eps", 1e-5)
    _, sigma, _, _, _, rho = tolerance.refresh_covariance(x, eps, run.dtype)
    zc = z - mean_z
    cov = zc.T @ zc / x.shape[0]
    target = np.eye(n_in) - eps * u1 @ u1.T
    s = tolerance.storage_roundoff(run.dtype)
    spread = np.abs(u1) @ (np.abs(sigma) + eps * np.eye(n_in)) @ np.abs(u1).T
    bound = tolerance.SAFETY * (rho + 2 * s * spread) + 8 * x.shape[0] * F64 * (1 + spread)
    assert_close(cov, target, bound, "cov(z)", at + " vs I - eps U' U'^T")


@prop("reparametrization", applies=named("raiko_tanh"))
def raiko_units_centred(ctx: Context) -> None:
    """Right after a refresh each transformed unit f_i(a) = tanh(a) - alpha_i a - beta_i has zero mean
    output and zero mean slope f_i'(a) = 1 - tanh(a)^2 - alpha_i over the samples it was fitted on
    (Raiko, Valpola & LeCun 2012, sec. 2), evaluated in float64 with the backend's alpha',
    beta' within their bounds. Taking the slope at the mean pre-activation, tanh'(mean a), instead of
    the mean slope fails it."""
    run = _refresh_run(ctx)
    ref, _ = ctx.reference(run)
    bounds = ctx.bounds(run, ref, {})
    c = run.case
    a = c.x @ c.get("weight").T + c.get("bias")
    t = np.tanh(a)
    al, be = run.outputs["alpha"], run.outputs["beta"]
    at = where(ctx, run)
    slack = 8 * c.x.shape[1] * F64 * (1 + np.abs(t) + np.abs(al * a) + np.abs(be)).mean(axis=0)
    assert_close((1 - t * t - al).mean(axis=0), np.zeros_like(al), bounds["alpha"] + slack, "mean f'(a)", at)
    assert_close((t - al * a - be).mean(axis=0), np.zeros_like(be),
                 bounds["beta"] + np.abs(a).mean(axis=0) * bounds["alpha"] + slack, "mean f(a)", at)


@prop("identities", applies=named("whitened_linear"))
def whitened_identity_is_linear(ctx: Context) -> None:
    """With U = I and c = 0 the whitened layer is the plain linear layer x V^T + d (Desjardins et al.
    2015, sec. 3, with the identity reparametrization, the state PRONG starts from), on the backend's own
    output, within the forward bound. A kernel that drops or misplaces the bias fails it."""
    case = ctx.case(refresh=False, identity_whitening=True)
    dtype, layout = ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout)
    ref, _ = ctx.reference(run)
    c = run.case
    assert_close(run.outputs["y"], c.x @ c.get("weight").T + c.get("bias"), ctx.bounds(run, ref, {})["y"],
                 "y(U = I, c = 0)", where(ctx, run) + " vs x V^T + d")


@prop("identities", applies=named("mean_normalized_linear"))
def mean_normalized_is_whitened_with_identity(ctx: Context) -> None:
    """The mean-normalized layer W (x - mu) + b (Wiesler et al. 2014) is the whitened layer with U = I,
    V = W, d = b, c = mu (Desjardins et al. 2015), both computed by the same backend, within the sum of
    their bounds. A mean-normalized kernel that centres with the batch's mean outside a refresh fails it."""
    case = ctx.case(refresh=False)
    dtype, layout = ctx.dtype(), ctx.layout()
    whitened = Case("whitened_linear", {**case.arrays, "whitening": np.eye(case.x.shape[1])},
                    {"training": False, "step": 0, "interval": 1, "eps": 1e-5, "method": "zca"})
    ctx.supported(whitened, dtype, layout)
    run = ctx.run(case, dtype, layout)
    other = ctx.run(whitened, dtype, layout)
    ref, _ = ctx.reference(run)
    wl = get_norm("whitened_linear")
    rounded = other.case
    bound = ctx.bounds(run, ref, {})["y"] + wl.bounds(rounded, dtype, wl.reference(rounded))["y"]
    assert_close(run.outputs["y"], other.outputs["y"], bound, "mean_normalized_linear(x)",
                 where(ctx, run) + " vs whitened_linear(x; U = I)")
