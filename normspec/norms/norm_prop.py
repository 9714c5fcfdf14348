"""Record: Normalization Propagation (Arpit et al. 2016), fully connected layer form."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library import tolerance
from normspec.library.case import Case
from normspec.library.strategies import affine_vector, seeds, standard_values
from normspec.norms.weight_norm import weight_values
from normspec.registry import NormRecord, register
from normspec.spec.norm_prop import norm_prop, norm_prop_backward


@st.composite
def norm_prop_cases(draw, *, out_features=None, activation=None, affine=None):
    """Norm-Prop layer calls: x (N, in), W (out, in) with rows of different scales, optional
    gamma and beta, ReLU or identity. out_features defaults to in_features (a square layer):
    the generic hygiene/layout properties draw dy of x's shape, so they need the output to have
    x's shape; rectangular layers are covered by `norm_prop_rectangular` (properties/weight_family)."""
    n = draw(st.integers(1, 6), label="N")
    n_in = draw(st.integers(1, 8), label="in_features")
    n_out = n_in if out_features is None else out_features
    rng = np.random.default_rng(draw(seeds, label="x_seed"))
    x = standard_values(rng, (n, n_in), draw(st.sampled_from(["normal", "uniform", "outliers"]), label="distribution"))
    arrays = {"x": x, "weight": draw(weight_values((n_out, n_in), (0,)), label="W")}
    if draw(st.booleans(), label="affine") if affine is None else affine:
        arrays["gamma"] = np.asarray(draw(affine_vector((n_out,), kind="weight"), label="gamma"))
        arrays["bias"] = np.asarray(draw(affine_vector((n_out,), kind="bias"), label="beta"))
    act = draw(st.sampled_from(["relu", "relu", "identity"]), label="activation") if activation is None else activation
    return Case("norm_prop", arrays, {"activation": act})


def reference(case: Case) -> dict[str, np.ndarray]:
    return {"y": norm_prop(case.x, case.get("weight"), case.get("gamma"), case.get("bias"),
                           activation=case.params.get("activation", "relu"))}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    grads = norm_prop_backward(dy, case.x, case.get("weight"), case.get("gamma"), case.get("bias"),
                               activation=case.params.get("activation", "relu"))
    return {r: g for r, g in grads.items() if case.get(r) is not None}


def bench_case(shape, rng) -> Case | None:
    """A square Norm-Prop ReLU layer on (tokens, hidden), or on the channels of (N, C, H, W) as rows."""
    x = rng.standard_normal(shape)
    if len(shape) > 2:
        x = np.moveaxis(x, 1, -1).reshape(-1, shape[1])
    c = x.shape[1]
    arrays = {"x": x, "weight": rng.standard_normal((c, c)), "gamma": rng.uniform(0.5, 2.0, c),
              "bias": rng.normal(size=c)}
    return Case("norm_prop", arrays, {"activation": "relu"})


register(NormRecord(
    name="norm_prop",
    family="weight",
    paper="Arpit, Zhou, Kota & Govindaraju 2016, Normalization Propagation, sec. 3-4",
    reference=reference,
    reference_grad=reference_grad,
    cases=norm_prop_cases,
    overrides=frozenset({'activation', 'affine', 'out_features'}),
    error_model=tolerance.norm_prop_bounds,
    traits=frozenset({"batch_independent"}),
    differentiable=("x", "weight", "gamma", "bias"),
    bench_case=bench_case,
))
