"""Records: Local Response Normalization (five conventions) and MatConvNet's cross-channel and
spatial normalizations, y = x (offset + scale W(x^2))^-beta (spec: `normspec.spec.lrn`)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library import tolerance
from normspec.library.case import Case
from normspec.library.conditioning import ResponseCondition
from normspec.library.strategies import grouped_values
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.lrn import (
    LRN_CONVENTIONS,
    SPATIAL_REDUCTIONS,
    lrn_window,
    matconvnet_window,
    response_backward,
    response_forward,
    response_gradient_magnitude,
    spatial_window,
)

RESPONSE = register_trait("response_normalizer",
                          "y = x * (offset + scale * W(x^2))^-beta "
                          "for a window reduction W of the squares (LRN family)")
HOMOGENEOUS = register_trait("zero_offset_homogeneous",
                             "with the additive offset (k, kappa) set to 0, f(a x) = a^(1 - 2 beta) f(x) for a > 0; "
                             "cases accept the override zero_offset=True")

ODD_ONLY = ("caffe_across", "caffe_within", "tensorflow")
# mostly windows whose squares matter against k (alpha up to 3), and PyTorch's default 1e-4
alphas = st.one_of(st.floats(-2.0, 0.5).map(lambda e: float(10.0**e)), st.just(1e-4))
betas = st.one_of(st.sampled_from([0.75, 0.5, 1.0, 2.0]), st.floats(0.05, 3.0))
offsets = st.one_of(st.sampled_from([1.0, 2.0, 0.5]), st.floats(0.05, 4.0))


@st.composite
def response_shape(draw, *, spatial_dims=None, min_spatial=1):
    """(N, C, *S) with N != C (a kernel that loops over the batch axis where it should loop over
    channels agrees with the spec whenever N == C; the catalogue's LRN bug)."""
    nsp = draw(st.integers(min_spatial, 3), label="spatial_dims") if spatial_dims is None else spatial_dims
    n = draw(st.integers(1, 4), label="N")
    c = draw(st.integers(1, 7), label="C")
    if c == n:
        c += draw(st.integers(1, 3), label="C_offset")
    sides = tuple(draw(st.integers(1, 5 if nsp < 3 else 3), label="side") for _ in range(nsp))
    return (n, c) + sides


def window_size(draw, odd: bool, label: str = "size") -> int:
    size = draw(st.integers(1, 8), label=label)
    return size | 1 if odd else size


@st.composite
def lrn_cases(draw, *, convention=None, parity=None, zero_offset=False, spatial_dims=None, allow_constant=True):
    """LocalResponseNorm calls in every convention, odd and even sizes (windows wider than C too).
    zero_offset=True sets k = 0 and leaves out caffe_within, whose offset is fixed at 1."""
    offset_conventions = [c for c in LRN_CONVENTIONS if not (zero_offset and c == "caffe_within")]
    convention = draw(st.sampled_from(offset_conventions), label="convention") if convention is None else convention
    shape = draw(response_shape(spatial_dims=spatial_dims))
    odd = convention in ODD_ONLY or parity == "odd"
    size = window_size(draw, odd)
    if parity == "even" and size % 2:
        size += 1
    x = draw(grouped_values(shape, (1,), allow_constant=allow_constant), label="x")
    params = {"size": size, "alpha": draw(alphas, label="alpha"), "beta": draw(betas, label="beta"),
              "k": 0.0 if zero_offset else draw(offsets, label="k"), "convention": convention}
    return Case("local_response_norm", {"x": x}, params)


@st.composite
def matconvnet_cross_channel_cases(draw, *, parity=None, zero_offset=False, spatial_dims=None, allow_constant=True):
    shape = draw(response_shape(spatial_dims=spatial_dims))
    size = window_size(draw, parity == "odd")
    if parity == "even" and size % 2:
        size += 1
    x = draw(grouped_values(shape, (1,), allow_constant=allow_constant), label="x")
    params = {"size": size, "kappa": 0.0 if zero_offset else draw(offsets, label="kappa"),
              "alpha": draw(alphas, label="alpha"), "beta": draw(betas, label="beta")}
    return Case("matconvnet_cross_channel", {"x": x}, params)


@st.composite
def matconvnet_spatial_cases(draw, *, reduction=None, spatial_dims=None, allow_constant=True):
    shape = draw(response_shape(spatial_dims=spatial_dims))
    sizes = tuple(draw(st.integers(1, 5), label="window") for _ in shape[2:])
    x = draw(grouped_values(shape, (1,), allow_constant=allow_constant), label="x")
    reduction = draw(st.sampled_from(SPATIAL_REDUCTIONS), label="reduction") if reduction is None else reduction
    params = {"size": sizes, "alpha": draw(st.one_of(st.just(10.0), alphas), label="alpha"),
              "beta": draw(st.one_of(st.just(2.0), betas), label="beta"), "reduction": reduction}
    return Case("matconvnet_spatial", {"x": x}, params)


def lrn_params(case: Case) -> tuple:
    p = case.params
    return p["size"], p.get("alpha", 1e-4), p.get("beta", 0.75), p.get("k", 1.0), p.get("convention", "pytorch")


def window_of(case: Case):
    """The spec's ResponseWindow and beta for a case of any of the three records."""
    p, shape = case.params, case.x.shape
    if case.norm == "local_response_norm":
        size, alpha, beta, k, convention = lrn_params(case)
        return lrn_window(shape, size, alpha, k, convention), beta
    if case.norm == "matconvnet_cross_channel":
        window = matconvnet_window(shape, p.get("size", 5), p.get("kappa", 1.0), p.get("alpha", 1e-4))
        return window, p.get("beta", 0.75)
    window = spatial_window(shape, p.get("size", (2, 2)), p.get("alpha", 10.0), p.get("reduction", "mean"))
    return window, p.get("beta", 2.0)


def reference(case: Case) -> dict[str, np.ndarray]:
    window, beta = window_of(case)
    return {"y": response_forward(case.x, window, beta)}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    window, beta = window_of(case)
    return {"x": response_backward(dy, case.x, window, beta)}


def error_model(case: Case, dtype: str, ref, dy=None, ref_grads=None):
    window, beta = window_of(case)
    terms = int(np.prod([before + after + 1 for _, before, after in window.windows]))
    magnitude = None if dy is None else response_gradient_magnitude(dy, case.x, window, beta)
    return tolerance.response_bounds(ResponseCondition(terms, beta, magnitude), dtype, ref, dy, ref_grads)


def lrn_bench_case(shape, rng) -> Case | None:
    """AlexNet's LRN (size 5, alpha 1e-4, beta 0.75, k 2) on a CNN activation; needs (N, C, H, W)."""
    if len(shape) < 3:
        return None
    return Case("local_response_norm", {"x": rng.standard_normal(shape)},
                {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0, "convention": "pytorch"})


def mcn_cross_bench_case(shape, rng) -> Case | None:
    if len(shape) < 3:
        return None
    return Case("matconvnet_cross_channel", {"x": rng.standard_normal(shape)},
                {"size": 5, "kappa": 1.0, "alpha": 2e-5, "beta": 0.75})


def mcn_spatial_bench_case(shape, rng) -> Case | None:
    if len(shape) != 4:
        return None
    return Case("matconvnet_spatial", {"x": rng.standard_normal(shape)},
                {"size": (2, 2), "alpha": 10.0, "beta": 2.0, "reduction": "mean"})


COMMON = dict(reference=reference, reference_grad=reference_grad, error_model=error_model, differentiable=("x",))

register(NormRecord(
    name="local_response_norm",
    family="response",
    paper="Krizhevsky, Sutskever & Hinton 2012, ImageNet Classification with Deep CNNs, sec. 3.3",
    cases=lrn_cases,
    overrides=frozenset({'allow_constant', 'convention', 'parity', 'spatial_dims', 'zero_offset'}),
    traits=frozenset({RESPONSE, HOMOGENEOUS, "batch_independent", "channel_axis_1"}),
    torch_modules=("torch.nn.LocalResponseNorm",),
    torch_functional="torch.nn.functional.local_response_norm",
    bench_case=lrn_bench_case,
    **COMMON,
))

register(NormRecord(
    name="matconvnet_cross_channel",
    family="response",
    paper="Vedaldi & Lenc 2015, MatConvNet manual, vl_nnnormalize (cross-channel normalization)",
    cases=matconvnet_cross_channel_cases,
    overrides=frozenset({'allow_constant', 'parity', 'spatial_dims', 'zero_offset'}),
    traits=frozenset({RESPONSE, HOMOGENEOUS, "batch_independent", "channel_axis_1"}),
    bench_case=mcn_cross_bench_case,
    **COMMON,
))

register(NormRecord(
    name="matconvnet_spatial",
    family="response",
    paper="Vedaldi & Lenc 2015, MatConvNet manual, vl_nnspnorm (spatial normalization)",
    cases=matconvnet_spatial_cases,
    overrides=frozenset({'allow_constant', 'reduction', 'spatial_dims'}),
    traits=frozenset({RESPONSE, "batch_independent", "channel_axis_1"}),
    bench_case=mcn_spatial_bench_case,
    **COMMON,
))
