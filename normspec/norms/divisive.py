"""Record: Divisive Normalization (Ren et al., ICLR 2017) with summation and suppression fields
over (N, C, *S) (spec: `normspec.spec.divisive`)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library import tolerance
from normspec.library.case import Case
from normspec.library.conditioning import DivisiveCondition
from normspec.library.strategies import affine_arrays, eps_values, grouped_values
from normspec.norms.lrn import response_shape
from normspec.registry import NormRecord, register
from normspec.spec.divisive import BORDERS, divisive_norm, divisive_norm_backward, divisive_parts


@st.composite
def field(draw, ndim: int, *, batch=None, label: str):
    """Per-axis field entries: batch axis 1 or 'all'; other axes 1, 'all' or a window of 2-5."""
    first = draw(st.sampled_from([1, "all"]), label=f"{label}_batch") if batch is None else batch
    rest = tuple(draw(st.sampled_from([1, "all", 2, 3, 5]), label=f"{label}_axis") for _ in range(ndim - 1))
    return (first,) + rest


@st.composite
def divisive_cases(draw, *, batch_field=None, border=None, affine=None, spatial_dims=None, allow_constant=True):
    """Divisive-normalization calls: random fields (BatchNorm-like, LayerNorm-like, local windows)."""
    shape = draw(response_shape(spatial_dims=spatial_dims, min_spatial=0))
    x = draw(grouped_values(shape, (0, 1), allow_constant=allow_constant), label="x")
    summation = draw(field(len(shape), batch=batch_field, label="summation"))
    suppression = draw(field(len(shape), batch=batch_field, label="suppression"))
    arrays = {"x": x, **affine_arrays(draw, (shape[1],), affine)}
    params = {"summation": summation, "suppression": suppression,
              "eps": draw(st.one_of(st.just(1.0), eps_values), label="eps"),
              "border": draw(st.sampled_from(BORDERS), label="border") if border is None else border}
    return Case("divisive_norm", arrays, params)


def _kwargs(case: Case) -> dict:
    p = case.params
    return {"summation": p["summation"], "suppression": p["suppression"], "eps": p.get("eps", 1.0),
            "border": p.get("border", "exclude")}


def reference(case: Case) -> dict[str, np.ndarray]:
    return {"y": divisive_norm(case.x, case.get("weight"), case.get("bias"), **_kwargs(case))}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    grads = divisive_norm_backward(dy, case.x, case.get("weight"), **_kwargs(case))
    return case.present(grads)


def _channel(case: Case, role: str, default: float) -> np.ndarray:
    x = case.x
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    a = case.get(role)
    return np.full(shape, default) if a is None else a.reshape(shape)


def error_model(case: Case, dtype: str, ref, dy=None, ref_grads=None):
    kw = _kwargs(case)
    p = divisive_parts(case.x, kw["summation"], kw["suppression"], kw["eps"], kw["border"])
    counts = [int(np.prod([s if e == "all" else min(int(e), s) for e, s in zip(f.entries, case.x.shape)]))
              for f in (p.summation, p.suppression)]
    gamma, beta = _channel(case, "weight", 1.0), _channel(case, "bias", 0.0)
    offset = p.summation.mean(np.abs(case.x)) / p.r
    magnitude = None
    if dy is not None:
        g = np.abs(gamma * dy)
        dv = g / p.r + np.abs(p.v) * p.suppression.mean_transpose(g * np.abs(p.v) / p.r**3)
        magnitude = dv + p.summation.mean_transpose(dv)
    axes = (0,) + tuple(range(2, case.x.ndim))
    condition = DivisiveCondition(p.v / p.r, offset, gamma, beta, max(counts), axes, magnitude)
    return tolerance.divisive_bounds(condition, dtype, ref, dy, ref_grads)


def bench_case(shape, rng) -> Case | None:
    """The authors' CNN setting (channel mean, 3x3 spatial windows) or a 1-D window of 5 over hidden."""
    c = shape[1]
    if len(shape) == 4:
        fields = (1, "all", 3, 3)
    elif len(shape) == 2:
        fields = (1, 5)
    else:
        return None
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, c), "bias": rng.normal(size=c)}
    return Case("divisive_norm", arrays, {"summation": fields, "suppression": fields, "eps": 1.0, "border": "zero"})


register(NormRecord(
    name="divisive_norm",
    family="divisive",
    paper="Ren, Liao, Urtasun, Sinz & Zemel 2017, Normalizing the Normalizers (ICLR), eqs. 1-2",
    reference=reference,
    reference_grad=reference_grad,
    cases=divisive_cases,
    overrides=frozenset({'affine', 'allow_constant', 'batch_field', 'border', 'spatial_dims'}),
    error_model=error_model,
    traits=frozenset({"scale_invariant", "channel_axis_1"}),
    bench_case=bench_case,
))
