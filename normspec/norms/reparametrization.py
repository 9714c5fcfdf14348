"""Records: normalization by reparametrization (spec/reparametrization.py): the whitened layer of
Natural Neural Networks (Desjardins et al. 2015), the mean-normalized layer (Wiesler et al. 2014) and
Raiko, Valpola & LeCun's transformed tanh units (2012)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library import tolerance
from normspec.library.case import Case
from normspec.library.strategies import centre_ratios, eps_values, seeds, spreads, standard_values
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.reparametrization import (
    mean_normalized_linear,
    mean_normalized_linear_backward,
    raiko_tanh,
    raiko_tanh_backward,
    whitened_linear,
    whitened_linear_backward,
)

REPARAMETRIZED = register_trait(
    "reparametrized",
    "a layer rewritten around statistics refreshed every T steps; each refresh updates the parameters so "
    "that the function is unchanged",
)

DISTRIBUTIONS = ("normal", "uniform", "outliers")


@st.composite
def schedule(draw, *, refresh=None, training=None):
    """(training, step, interval): the update interval T in 1-3 and a step that does (refresh=True) or
    does not (False) fall on a refresh, or either (None)."""
    interval = draw(st.integers(1, 3), label="interval")
    if refresh is None:
        training = draw(st.booleans(), label="training") if training is None else training
        return training, draw(st.integers(0, 6), label="step"), interval
    if refresh:
        return True, interval * draw(st.integers(0, 2), label="period"), interval
    training = draw(st.booleans(), label="training") if training is None else training
    if training:
        interval = max(interval, 2)
        offset = draw(st.integers(1, interval - 1), label="offset")
        return True, interval * draw(st.integers(0, 2), label="period") + offset, interval
    return False, draw(st.integers(0, 6), label="step"), interval


@st.composite
def layer_input(draw, n, n_in, *, correlated=True, allow_constant=True):
    """x (N, in): features with their own location and spread, mixed so that they are correlated."""
    rng = np.random.default_rng(draw(seeds, label="x_seed"))
    base = standard_values(rng, (n, n_in), draw(st.sampled_from(DISTRIBUTIONS), label="distribution"))
    if correlated and n_in > 1 and draw(st.booleans(), label="correlated"):
        base = base @ (np.eye(n_in) + rng.normal(0.0, 0.7, (n_in, n_in)))
    scale = draw(spreads, label="spread") * rng.uniform(0.5, 2.0, n_in)
    loc = draw(centre_ratios, label="centre_ratio") * scale * rng.uniform(0.5, 1.5, n_in)
    x = loc + scale * base
    if allow_constant and n_in > 1 and draw(st.booleans(), label="constant_feature"):
        x[:, rng.integers(0, n_in)] = x[0, 0]  # a feature without variance: Sigma is singular
    return x


def _near_mean(x, rng):
    """A running mean near the data's own mean, randomized as mid-training state has it."""
    return x.mean(axis=0) + (x.std(axis=0) + 1e-3) * rng.normal(0.0, 0.5, x.shape[1])


def _old_whitening(x, rng, eps):
    """A previous whitening: (Sigma_old + eps)^(-1/2) of a perturbed covariance, rotated (PCA-like)."""
    n_in = x.shape[1]
    spread = x.std(axis=0) + 1e-3
    q, _ = np.linalg.qr(rng.standard_normal((n_in, n_in)))
    scales = np.exp(rng.uniform(-1.0, 1.0, n_in)) / np.sqrt(spread.mean() ** 2 + eps)
    return (q * scales) @ np.linalg.qr(rng.standard_normal((n_in, n_in)))[0].T


@st.composite
def whitened_cases(draw, *, refresh=None, training=None, method=None, eps=None, allow_constant=True,
                   identity_whitening=False):
    """Whitened layer calls: N 1-8 samples of in 1-4 correlated features, out 1-4 units, a previous
    state (c, U) away from the data's statistics, the conventions drawn (PCA/ZCA, eps, T, step)."""
    n = draw(st.integers(1, 8), label="N")
    n_in, n_out = draw(st.integers(1, 4), label="in_features"), draw(st.integers(1, 4), label="out_features")
    x = draw(layer_input(n, n_in, allow_constant=allow_constant), label="x")
    rng = np.random.default_rng(draw(seeds, label="param_seed"))
    eps = draw(eps_values, label="eps") if eps is None else eps
    training, step, interval = draw(schedule(refresh=refresh, training=training), label="schedule")
    u = np.eye(n_in) if identity_whitening else _old_whitening(x, rng, eps)
    w = rng.normal(0.0, 1.0, (n_out, n_in))
    arrays = {"x": x, "weight": w, "bias": rng.normal(0.0, 2.0, n_out),
              "running_mean": np.zeros(n_in) if identity_whitening else _near_mean(x, rng), "whitening": u}
    params = {"training": training, "step": step, "interval": interval, "eps": eps,
              "method": draw(st.sampled_from(["pca", "zca"]), label="method") if method is None else method}
    return Case("whitened_linear", arrays, params)


@st.composite
def mean_normalized_cases(draw, *, refresh=None, training=None, momentum=None, allow_constant=True):
    """Mean-normalized layer calls: N 1-8, in 1-6 features with large and small means, out 1-6 units,
    a running mean away from the data's, momentum 1 (re-estimate) or a blend."""
    n = draw(st.integers(1, 8), label="N")
    n_in, n_out = draw(st.integers(1, 6), label="in_features"), draw(st.integers(1, 6), label="out_features")
    x = draw(layer_input(n, n_in, correlated=False, allow_constant=allow_constant), label="x")
    rng = np.random.default_rng(draw(seeds, label="param_seed"))
    training, step, interval = draw(schedule(refresh=refresh, training=training), label="schedule")
    if momentum is None:
        momentum = draw(st.one_of(st.just(1.0), st.floats(0.01, 1.0)), label="momentum")
    arrays = {"x": x, "weight": rng.normal(0.0, 1.0, (n_out, n_in)), "bias": rng.normal(0.0, 2.0, n_out),
              "running_mean": _near_mean(x, rng)}
    return Case("mean_normalized_linear", arrays,
                {"training": training, "step": step, "interval": interval, "momentum": momentum})


@st.composite
def raiko_cases(draw, *, refresh=None, training=None, allow_constant=True):
    """Raiko units: N 1-8 samples, in 1-5, hidden 1-5, out 1-5; B scaled so that the pre-activations
    reach tanh's linear and saturated parts; alpha, beta of a previous refresh (alpha in (0, 1])."""
    n = draw(st.integers(1, 8), label="N")
    n_in, h, n_out = (draw(st.integers(1, 5), label=k) for k in ("in_features", "hidden", "out_features"))
    x = draw(layer_input(n, n_in, allow_constant=allow_constant), label="x")
    rng = np.random.default_rng(draw(seeds, label="param_seed"))
    training, step, interval = draw(schedule(refresh=refresh, training=training), label="schedule")
    gain = 10.0 ** draw(st.floats(-1.0, 1.0), label="log10_gain")
    spread = x.std(axis=0) + np.abs(x.mean(axis=0)) + 1e-3
    b_w = gain * rng.normal(0.0, 1.0, (h, n_in)) / (spread * np.sqrt(n_in))
    arrays = {"x": x, "weight": b_w, "bias": rng.normal(0.0, 1.0, h) - b_w @ x.mean(axis=0) * rng.uniform(0, 1),
              "out_weight": rng.normal(0.0, 1.0, (n_out, h)), "shortcut": rng.normal(0.0, 0.5, (n_out, n_in)),
              "out_bias": rng.normal(0.0, 1.0, n_out), "alpha": rng.uniform(0.05, 1.0, h),
              "beta": rng.normal(0.0, 0.3, h)}
    return Case("raiko_tanh", arrays, {"training": training, "step": step, "interval": interval})


def _kw(case, keys):
    return {k: case.params[k] for k in keys if k in case.params}


_SCHEDULE = ("training", "step", "interval")
_WHITENED = ("x", "weight", "bias", "running_mean", "whitening")
_MEAN = ("x", "weight", "bias", "running_mean")
_RAIKO = ("x", "weight", "bias", "out_weight", "shortcut", "out_bias", "alpha", "beta")


def whitened_reference(case: Case) -> dict[str, np.ndarray]:
    return whitened_linear(*(case.get(r) for r in _WHITENED), **_kw(case, _SCHEDULE + ("eps", "method")))


def whitened_reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    return whitened_linear_backward(dy, *(case.get(r) for r in _WHITENED))


def mean_reference(case: Case) -> dict[str, np.ndarray]:
    return mean_normalized_linear(*(case.get(r) for r in _MEAN), **_kw(case, _SCHEDULE + ("momentum",)))


def mean_reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    return mean_normalized_linear_backward(dy, *(case.get(r) for r in _MEAN))


def raiko_reference(case: Case) -> dict[str, np.ndarray]:
    return raiko_tanh(*(case.get(r) for r in _RAIKO), **_kw(case, _SCHEDULE))


def raiko_reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    return raiko_tanh_backward(dy, *(case.get(r) for r in _RAIKO))


def _rows(shape, rng):
    x = rng.standard_normal(shape)
    return x if len(shape) == 2 else np.moveaxis(x, 1, -1).reshape(-1, shape[1])


def whitened_bench_case(shape, rng) -> Case | None:
    """A square whitened layer on (tokens, hidden) at a refresh step (the costly one: eigh of hidden^2)."""
    x = _rows(shape, rng)
    c = x.shape[1]
    arrays = {"x": x, "weight": rng.standard_normal((c, c)) / np.sqrt(c), "bias": rng.normal(size=c),
              "running_mean": np.zeros(c), "whitening": np.eye(c)}
    return Case("whitened_linear", arrays, {"training": True, "step": 0, "interval": 1, "eps": 1e-3, "method": "pca"})


def mean_bench_case(shape, rng) -> Case | None:
    x = _rows(shape, rng)
    c = x.shape[1]
    arrays = {"x": x, "weight": rng.standard_normal((c, c)) / np.sqrt(c), "bias": rng.normal(size=c),
              "running_mean": np.zeros(c)}
    return Case("mean_normalized_linear", arrays, {"training": True, "step": 0, "interval": 1, "momentum": 1.0})


def raiko_bench_case(shape, rng) -> Case | None:
    x = _rows(shape, rng)
    c = x.shape[1]
    arrays = {"x": x, "weight": rng.standard_normal((c, c)) / np.sqrt(c), "bias": rng.normal(size=c),
              "out_weight": rng.standard_normal((c, c)) / np.sqrt(c), "shortcut": np.zeros((c, c)),
              "out_bias": np.zeros(c), "alpha": np.full(c, 0.5), "beta": np.zeros(c)}
    return Case("raiko_tanh", arrays, {"training": True, "step": 0, "interval": 1})


register(NormRecord(
    name="whitened_linear",
    family="reparametrization",
    paper="Desjardins et al. NIPS 2015, Natural Neural Networks, sec. 3, Algorithm 1 (PRONG)",
    reference=whitened_reference,
    reference_grad=whitened_reference_grad,
    cases=whitened_cases,
    overrides={"refresh", "training", "method", "eps", "allow_constant", "identity_whitening"},
    error_model=tolerance.whitened_linear_bounds,
    traits=frozenset({REPARAMETRIZED}),
    differentiable=("x", "weight", "bias"),
    outputs=("y", "running_mean", "whitening", "new_weight", "new_bias"),
    bench_case=whitened_bench_case,
))

register(NormRecord(
    name="mean_normalized_linear",
    family="reparametrization",
    paper="Wiesler, Richard, Schlueter & Ney, ICASSP 2014, Mean-normalized SGD, sec. 2",
    reference=mean_reference,
    reference_grad=mean_reference_grad,
    cases=mean_normalized_cases,
    overrides={"refresh", "training", "momentum", "allow_constant"},
    error_model=tolerance.mean_normalized_linear_bounds,
    traits=frozenset({REPARAMETRIZED}),
    differentiable=("x", "weight", "bias"),
    outputs=("y", "running_mean", "new_bias"),
    bench_case=mean_bench_case,
))

register(NormRecord(
    name="raiko_tanh",
    family="reparametrization",
    paper="Raiko, Valpola & LeCun, AISTATS 2012, Linear transformations in perceptrons, sec. 2",
    reference=raiko_reference,
    reference_grad=raiko_reference_grad,
    cases=raiko_cases,
    overrides={"refresh", "training", "allow_constant"},
    error_model=tolerance.raiko_tanh_bounds,
    traits=frozenset({REPARAMETRIZED}),
    differentiable=("x", "weight", "bias", "out_weight", "shortcut", "out_bias"),
    outputs=("y", "alpha", "beta", "new_shortcut", "new_out_bias"),
    bench_case=raiko_bench_case,
))
