"""Record: Layer Normalization (Ba, Kiros & Hinton 2016) over the trailing normalized_shape, or
over Keras' `axis` set; optionally with the saved statistics (mean, rstd) of torch.native_layer_norm
and ONNX LayerNormalization as outputs."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning
from normspec.library.strategies import (
    Reach,
    affine_vector,
    channels_first_values,
    eps_values,
    grouped_values,
    reach_values,
    seeds,
)
from normspec.library.tolerance import Bounds, moment_bounds, saved_statistics_bounds
from normspec.registry import NormRecord, register
from normspec.spec import layer_norm, layer_norm_backward, moments
from normspec.spec.layer_norm import normalize_axes, param_shape


@st.composite
def layer_norm_cases(draw, *, elementwise_affine=None, bias=None, allow_constant=True, min_batch=1, conventions=True,
                     reach: Reach | None = None, channels_first=False, spatial_dims=None):
    """LayerNorm calls: 1-2 batch dims, normalized_shape of 1-3 trailing dims; with conventions,
    sometimes Keras' `axis` (any non-empty set of the axes after the first, which stays a batch
    axis) instead, and sometimes the saved statistics (mean, rstd) asked for as outputs.
    channels_first: LayerNorm over dim 1 of (N, C, *S) only, with (C,) parameters (ConvNeXt's
    channels_first LayerNorm, timm's LayerNorm2d), `spatial_dims` spatial dims (0-2 when None)."""
    if channels_first:
        return draw(_channels_first_cases(elementwise_affine, bias, allow_constant, min_batch, reach, spatial_dims))
    if reach is not None:  # `reach.sets` rows of `reach.length` features at the reach's magnitudes
        batch, normalized = (reach.sets,), (reach.length,)
    else:
        batch = tuple(draw(st.integers(min_batch, 4), label="batch")
                      for _ in range(draw(st.integers(1, 2), label="batch_dims")))
        normalized = tuple(draw(st.integers(1, 8), label="feature")
                           for _ in range(draw(st.integers(1, 3), label="normalized_dims")))
    shape = batch + normalized
    axes = None
    if reach is None and conventions and draw(st.integers(0, 3), label="keras_axes") == 0:
        axes = tuple(sorted(draw(st.lists(st.sampled_from(range(1, len(shape))), min_size=1, max_size=len(shape) - 1,
                                          unique=True), label="axes")))
    reduced = tuple(range(len(batch), len(shape))) if axes is None else axes
    if reach is not None:
        x = reach_values(np.random.default_rng(draw(seeds, label="seed")), shape, (0,), reach)
    else:
        x = draw(grouped_values(shape, tuple(a for a in range(len(shape)) if a not in reduced),
                                allow_constant=allow_constant), label="x")
    arrays = {"x": x}
    pshape = tuple(shape[a] for a in reduced)
    affine = draw(st.booleans(), label="elementwise_affine") if elementwise_affine is None else elementwise_affine
    if affine:
        arrays["weight"] = draw(affine_vector(pshape, kind="weight"))
        if (draw(st.booleans(), label="bias") if bias is None else bias):
            arrays["bias"] = draw(affine_vector(pshape, kind="bias"))
    eps = reach.eps if reach is not None and reach.eps is not None else draw(eps_values, label="eps")
    params = {"normalized_shape": normalized, "eps": eps} if axes is None else {"axes": axes, "eps": eps}
    if reach is None and conventions and draw(st.integers(0, 3), label="saved_statistics") == 0:
        params["saved_statistics"] = True
    return Case("layer_norm", arrays, params)


@st.composite
def _channels_first_cases(draw, elementwise_affine, bias, allow_constant, min_batch, reach, spatial_dims):
    """LayerNorm over the channels of (N, C, *S): Keras' axis=1, the layout of a convolutional network."""
    rank = draw(st.integers(0, 2), label="spatial_dims") if spatial_dims is None else spatial_dims
    x = draw(channels_first_values(rank, allow_constant, reach, min_batch))
    arrays = {"x": x}
    affine = draw(st.booleans(), label="elementwise_affine") if elementwise_affine is None else elementwise_affine
    if affine:
        arrays["weight"] = draw(affine_vector((x.shape[1],), kind="weight"))
        if (draw(st.booleans(), label="bias") if bias is None else bias):
            arrays["bias"] = draw(affine_vector((x.shape[1],), kind="bias"))
    eps = reach.eps if reach is not None and reach.eps is not None else draw(eps_values, label="eps")
    return Case("layer_norm", arrays, {"axes": (1,), "eps": eps})


def _geometry(case: Case) -> tuple[tuple[int, ...], dict]:
    """(normalized axes, the spec's keyword for them)."""
    x = case.x
    if case.params.get("axes") is not None:
        axes = normalize_axes(case.params["axes"], x.ndim)
        return axes, {"normalized_shape": None, "axes": axes}
    k = len(case.params["normalized_shape"])
    return tuple(range(x.ndim - k, x.ndim)), {"normalized_shape": case.params["normalized_shape"]}


def reference(case: Case) -> dict[str, np.ndarray]:
    _, kw = _geometry(case)
    eps = case.params.get("eps", 1e-5)
    if case.params.get("saved_statistics"):
        r = layer_norm(case.x, weight=case.get("weight"), bias=case.get("bias"), eps=eps, saved_statistics=True, **kw)
        return {"y": r.y, "mean": r.mean, "rstd": r.rstd}
    return {"y": layer_norm(case.x, weight=case.get("weight"), bias=case.get("bias"), eps=eps, **kw)}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    _, kw = _geometry(case)
    grads = layer_norm_backward(dy, case.x, weight=case.get("weight"), eps=case.params.get("eps", 1e-5), **kw)
    return case.present(grads)


def conditioning(case: Case) -> Conditioning:
    x = case.x
    axes, _ = _geometry(case)
    m = moments(x, axes, case.params.get("eps", 1e-5))
    pshape = param_shape(x, axes)
    gamma = case.array_or("weight", pshape, 1.0).reshape(pshape)
    beta = case.array_or("bias", pshape, 0.0).reshape(pshape)
    return Conditioning(m.xhat, m.mean, m.std, m.count, gamma, beta, axes,
                        tuple(a for a in range(x.ndim) if a not in axes), True)


def bounds(case: Case, dtype: str, reference: dict, dy=None, ref_grads=None):
    """The moment model, plus the saved statistics where asked for: the mean errs by
    u g(m) (|mu| + sigma), rstd = 1/sqrt(var + eps) by a relative u g(m) (1 + |mu|/sigma)."""
    c = conditioning(case)
    core = {k: v for k, v in reference.items() if k not in ("mean", "rstd")}
    b = dict(moment_bounds(c, dtype, core, dy, ref_grads).values)
    if "mean" in reference:
        b.update(saved_statistics_bounds(c, dtype, reference["mean"], reference["rstd"]))
    return Bounds(b)


def bench_case(shape, rng) -> Case | None:
    """LayerNorm over the last dim (transformer hidden) or over (C, H, W) for a CNN activation."""
    normalized = tuple(shape[1:]) if len(shape) > 2 else (shape[-1],)
    arrays = {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, normalized),
              "bias": rng.normal(size=normalized)}
    return Case("layer_norm", arrays, {"normalized_shape": normalized, "eps": 1e-5})


register(NormRecord(
    name="layer_norm",
    family="layer",
    paper="Ba, Kiros & Hinton 2016, Layer Normalization, eq. 4",
    reference=reference,
    reference_grad=reference_grad,
    cases=layer_norm_cases,
    overrides=frozenset({'allow_constant', 'bias', 'channels_first', 'conventions', 'elementwise_affine', 'min_batch',
                         'reach', 'spatial_dims'}),
    conditioning=conditioning,
    error_model=bounds,
    traits=frozenset({"moment_normalizer", "batch_independent", "scale_invariant", "shift_invariant", "accepts_empty"}),
    torch_modules=("torch.nn.LayerNorm",),
    torch_functional="torch.nn.functional.layer_norm",
    outputs=("y", "mean", "rstd"),  # mean and rstd only where a case asks for the saved statistics
    bench_case=bench_case,
))
