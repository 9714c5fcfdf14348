"""Record: Centered Weight Normalization (Huang et al. ICCV 2017): w = g (v - mean v)/||v - mean v||."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library import tolerance
from normspec.library.case import Case
from normspec.library.strategies import affine_vector
from normspec.norms.weight_norm import (
    WEIGHT_REPARAMETRIZATION,
    dims_for,
    layer_weight_shape,
    weight_shapes,
    weight_values,
)
from normspec.registry import NormRecord, register
from normspec.spec.centered_weight_norm import centered_weight_norm, centered_weight_norm_backward
from normspec.spec.weight_norm import g_shape


@st.composite
def centered_weight_norm_cases(draw, *, dim="draw", eps=None, learned_gain=None):
    """CWN calls: rows (each index of dim) of 2+ elements with a mean offset drawn like the
    moment normalizers' (|mean|/spread up to 1e3); eps 0 (the paper) or 1e-5 (reference code);
    a learned g or the fixed scale."""
    shape = draw(weight_shapes(min_rank=2), label="shape")
    dim = draw(dims_for(len(shape)), label="dim") if dim == "draw" else dim
    axes = () if dim is None else (dim % len(shape),)
    # a row of one value has no direction
    if int(np.prod(shape)) // (1 if dim is None else shape[dim % len(shape)]) < 2:
        shape = tuple(s if a in axes else max(s, 2) for a, s in enumerate(shape))
    arrays = {"x": draw(weight_values(shape, axes, centred=False), label="v")}
    params = {"dim": dim, "eps": draw(st.sampled_from([0.0, 0.0, 1e-5]), label="eps") if eps is None else eps}
    if draw(st.booleans(), label="learned_gain") if learned_gain is None else learned_gain:
        arrays["weight"] = np.asarray(draw(affine_vector(g_shape(shape, dim), kind="weight"), label="g"))
    else:
        params["scale"] = draw(st.sampled_from([1.0, 1.414]), label="scale")
    return Case("centered_weight_norm", arrays, params)


def _kwargs(case):
    return case.kwargs(*("dim", "eps", "scale"))


def reference(case: Case) -> dict[str, np.ndarray]:
    return {"y": centered_weight_norm(case.x, case.get("weight"), **_kwargs(case))}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    return centered_weight_norm_backward(dy, case.x, case.get("weight"), **_kwargs(case))


def bench_case(shape, rng) -> Case | None:
    """CWN(dim=0) of a layer weight the size of the activation, learned g, eps 0."""
    w_shape = layer_weight_shape(shape)
    return Case("centered_weight_norm",
                {"x": rng.standard_normal(w_shape), "weight": rng.uniform(0.5, 2.0, g_shape(w_shape, 0))},
                {"dim": 0, "eps": 0.0})


register(NormRecord(
    name="centered_weight_norm",
    family="weight",
    paper="Huang, Liu, Lang & Tao ICCV 2017, Centered Weight Normalization, eq. 3-7",
    reference=reference,
    reference_grad=reference_grad,
    cases=centered_weight_norm_cases,
    overrides=frozenset({'dim', 'eps', 'learned_gain'}),
    error_model=tolerance.centered_weight_norm_bounds,
    traits=frozenset({WEIGHT_REPARAMETRIZATION}),
    differentiable=("x", "weight"),
    bench_case=bench_case,
))
