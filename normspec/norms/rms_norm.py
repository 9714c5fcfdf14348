"""Record: RMSNorm (Zhang & Sennrich 2019) over the trailing normalized_shape."""
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
from normspec.library.tolerance import moment_bounds
from normspec.registry import NormRecord, register
from normspec.spec.layer_norm import normalize_axes, param_shape
from normspec.spec.rms_norm import gain, resolve_eps, rms, rms_norm, rms_norm_backward


@st.composite
def rms_norm_cases(draw, *, elementwise_affine=None, allow_constant=True, eps_none=False, conventions=True,
                   reach: Reach | None = None, channels_first=False, spatial_dims=None):
    """RMSNorm calls: 1-2 batch dims, normalized_shape of 1-3 trailing dims, weight or none;
    with conventions, the gain convention weight_offset 0 (PyTorch) or 1 (Gemma, x̂ (1 + w)).
    channels_first: over dim 1 of (N, C, *S) only (axes=(1,), a (C,) weight: timm's RmsNorm2d),
    `spatial_dims` spatial dims (0-2 when None).

    eps=None means a dtype-dependent eps (PyTorch's rule), which a dtype-blind reference cannot
    evaluate: such cases are drawn only with eps_none=True, by the property that knows the dtype
    (`rms_norm_eps_none_rule`)."""
    geometry: dict = {}
    if channels_first:
        rank = draw(st.integers(0, 2), label="spatial_dims") if spatial_dims is None else spatial_dims
        x = draw(channels_first_values(rank, allow_constant, reach))
        normalized, geometry = (x.shape[1],), {"axes": (1,)}
    elif reach is not None:  # `reach.sets` rows of `reach.length` features at the reach's magnitudes
        batch, normalized = (reach.sets,), (reach.length,)
        x = reach_values(np.random.default_rng(draw(seeds, label="seed")), batch + normalized, (0,), reach)
    else:
        batch = tuple(draw(st.integers(1, 4), label="batch")
                      for _ in range(draw(st.integers(1, 2), label="batch_dims")))
        normalized = tuple(draw(st.integers(1, 8), label="feature")
                           for _ in range(draw(st.integers(1, 3), label="normalized_dims")))
        shape = batch + normalized
        x = draw(grouped_values(shape, tuple(range(len(batch))), allow_constant=allow_constant), label="x")
    arrays = {"x": x}
    if draw(st.booleans(), label="elementwise_affine") if elementwise_affine is None else elementwise_affine:
        arrays["weight"] = draw(affine_vector(normalized, kind="weight"))
    eps = None if eps_none else (reach.eps if reach is not None and reach.eps is not None
                                 else draw(eps_values, label="eps"))
    params = {**(geometry or {"normalized_shape": normalized}), "eps": eps}
    if conventions and "weight" in arrays and draw(st.booleans(), label="gemma_offset"):
        params["weight_offset"] = 1.0
        arrays["weight"] = arrays["weight"] - 1.0  # the same spread of gains, stored as Gemma stores them
    return Case("rms_norm", arrays, params)


def reference(case: Case, dtype: str = "float64") -> dict[str, np.ndarray]:
    p = case.params
    return {"y": rms_norm(case.x, p.get("normalized_shape"), case.get("weight"), eps=p.get("eps"), dtype=dtype,
                          weight_offset=p.get("weight_offset", 0.0), axes=p.get("axes"))}


def reference_grad(case: Case, dy: np.ndarray, dtype: str = "float64") -> dict[str, np.ndarray]:
    p = case.params
    grads = rms_norm_backward(dy, case.x, p.get("normalized_shape"), case.get("weight"), eps=p.get("eps"),
                              dtype=dtype, weight_offset=p.get("weight_offset", 0.0), axes=p.get("axes"))
    return case.present(grads)


def conditioning(case: Case, dtype: str = "float64") -> Conditioning:
    """RMSNorm y = gamma x/r, r = sqrt(mean x^2 + eps), as the moment model with no centering: mean
    0 (no |mean|/s term), x/r in the place of xhat and r in the place of s. The mean of squares
    sums positive terms, so its relative error is u g(m) whatever the input."""
    x = case.x
    if case.params.get("axes") is not None:
        axes = normalize_axes(case.params["axes"], x.ndim)
    else:
        axes = tuple(range(x.ndim - len(case.params["normalized_shape"]), x.ndim))
    shape = tuple(x.shape[a] for a in axes)
    r = rms(x, None, eps=resolve_eps(case.params.get("eps"), dtype), axes=axes)
    gamma = case.array_or("weight", shape, 1.0)
    if case.get("weight") is not None:
        gamma = gain(gamma, case.params.get("weight_offset", 0.0))  # Gemma: 1 + w
    return Conditioning(x / r, np.zeros_like(r), r, int(np.prod(shape)), np.reshape(gamma, param_shape(x, axes)),
                        np.zeros(()), axes, tuple(a for a in range(x.ndim) if a not in axes), True)


def error_model(case: Case, dtype: str, ref, dy=None, ref_grads=None):
    """The moment model on the conditioning with the eps the run's dtype resolves (eps=None)."""
    return moment_bounds(conditioning(case, dtype), dtype, ref, dy, ref_grads)


def bench_case(shape, rng) -> Case | None:
    """RMSNorm over the hidden dim of a transformer activation (tokens, hidden), as in LLaMA."""
    hidden = (shape[-1],)
    return Case("rms_norm", {"x": rng.standard_normal(shape), "weight": rng.uniform(0.5, 2.0, hidden)},
                {"normalized_shape": hidden, "eps": 1e-6})


register(NormRecord(
    name="rms_norm",
    family="rms",
    paper="Zhang & Sennrich 2019, Root Mean Square Layer Normalization, eq. 4",
    reference=reference,
    reference_grad=reference_grad,
    cases=rms_norm_cases,
    overrides=frozenset({'allow_constant', 'channels_first', 'conventions', 'elementwise_affine', 'eps_none',
                         'reach', 'spatial_dims'}),
    error_model=error_model,
    traits=frozenset({"batch_independent", "scale_invariant", "accepts_empty"}),
    differentiable=("x", "weight"),
    torch_modules=("torch.nn.RMSNorm",),
    torch_functional="torch.nn.functional.rms_norm",
    bench_case=bench_case,
))
