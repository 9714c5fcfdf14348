"""Record: Mean-Variance Normalization (Caffe MVNLayer, ONNX MeanVarianceNormalization)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import MvnCondition
from normspec.library.strategies import eps_values, grouped_values
from normspec.library.tolerance import mvn_bounds
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.mvn import centered, mvn, mvn_axes, mvn_backward

register_trait("eps_outside_sqrt",
               "y = (x - mean)/(std + eps): f_eps(a x) = f_{eps/a}(x) for a > 0, not eps/a^2 (MVN, Caffe/ONNX)")

mvn_eps = st.one_of(st.just(1e-9), eps_values)


@st.composite
def _explicit_axes(draw, ndim: int, batch_axes: bool):
    """ONNX's `axes`: its opset-13 default (0, *S) (per channel over batch and space) or any
    non-empty subset of the axes (without axis 0 unless batch_axes)."""
    candidates = tuple(range(0 if batch_axes else 1, ndim))
    if batch_axes and ndim > 2 and draw(st.booleans(), label="onnx_default_axes"):
        return (0,) + tuple(range(2, ndim))
    chosen = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=len(candidates), unique=True),
                  label="axes")
    return tuple(sorted(chosen))


@st.composite
def mvn_cases(draw, *, across_channels=None, normalize_variance=None, spatial_dims=None, allow_constant=True,
              conventions=True, batch_axes=True):
    """MVN calls on (N, C, *S): per (n, c) over S or per n over (C, *S) (Caffe), or, with
    conventions, over ONNX's explicit `axes` (axis 0 among them only if batch_axes: then the
    statistics are the batch's); variance normalization on/off."""
    across = draw(st.booleans(), label="across_channels") if across_channels is None else across_channels
    low = 0 if across else 1
    nsp = draw(st.integers(low, 3), label="spatial_dims") if spatial_dims is None else spatial_dims
    c = draw(st.integers(1, 4), label="C")
    sides = tuple(draw(st.integers(1, 5 if nsp < 3 else 3), label="side") for _ in range(nsp))
    n = draw(st.integers(1, 4), label="N")
    shape = (n, c) + sides
    axes = None
    if conventions and across_channels is None and draw(st.booleans(), label="explicit_axes"):
        axes = draw(_explicit_axes(len(shape), batch_axes))
    reduced = mvn_axes(len(shape), across, axes)
    group_axes = tuple(a for a in range(len(shape)) if a not in reduced)
    x = draw(grouped_values(shape, group_axes, allow_constant=allow_constant), label="x")
    nv = draw(st.booleans(), label="normalize_variance") if normalize_variance is None else normalize_variance
    params = {"across_channels": across, "normalize_variance": nv, "eps": draw(mvn_eps, label="eps")}
    if axes is not None:
        params["axes"] = axes
    return Case("mvn", {"x": x}, params)


def _kwargs(case: Case) -> dict:
    return case.kwargs(*("across_channels", "normalize_variance", "eps", "axes"))


def reference(case: Case) -> dict[str, np.ndarray]:
    return {"y": mvn(case.x, **_kwargs(case))}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    return mvn_backward(dy, case.x, **_kwargs(case))


def statistics(case: Case):
    """(x - mu, mu, biased sigma, reduction axes, count) of an MVN case."""
    axes = mvn_axes(case.x.ndim, case.params.get("across_channels", False), case.params.get("axes"))
    c, mean = centered(case.x, axes)
    sigma = np.sqrt(np.mean(c * c, axis=axes, keepdims=True))
    return c, mean, sigma, axes, int(np.prod([case.x.shape[a] for a in axes]))


def error_model(case, dtype, ref, dy, ref_grads):
    c, mean, sigma, axes, count = statistics(case)
    eps = case.params.get("eps", 1e-9) if case.params.get("normalize_variance", True) else None
    return mvn_bounds(MvnCondition(c, mean, sigma, eps, count, axes), dtype, ref, dy, ref_grads)


def bench_case(shape, rng) -> Case | None:
    """Caffe's default MVN (per (n, c) over H, W, eps 1e-9) on a CNN activation."""
    if len(shape) < 3:
        return None
    return Case("mvn", {"x": rng.standard_normal(shape)},
                {"across_channels": False, "normalize_variance": True, "eps": 1e-9})


register(NormRecord(
    name="mvn",
    family="mvn",
    paper="Caffe MVNLayer; ONNX MeanVarianceNormalization (eps outside the square root)",
    reference=reference,
    reference_grad=reference_grad,
    cases=mvn_cases,
    overrides=frozenset({'across_channels', 'allow_constant', 'batch_axes', 'conventions', 'normalize_variance',
                         'spatial_dims'}),
    error_model=error_model,
    traits=frozenset({"batch_independent", "eps_outside_sqrt", "channel_axis_1"}),
    differentiable=("x",),
    bench_case=bench_case,
))
