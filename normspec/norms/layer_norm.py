"""Record: Layer Normalization (Ba, Kiros & Hinton 2016) over the trailing normalized_shape."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library.case import Case
from normspec.library.conditioning import Conditioning
from normspec.registry import NormRecord, register
from normspec.spec import layer_norm, layer_norm_backward, moments
from normspec.library.strategies import Reach, affine_vector, eps_values, grouped_values, reach_values, seeds


@st.composite
def layer_norm_cases(draw, *, elementwise_affine=None, bias=None, allow_constant=True, min_batch=1,
                     reach: Reach | None = None):
    """LayerNorm calls: 1-2 batch dims, normalized_shape of 1-3 trailing dims. With `reach`,
    `reach.sets` rows of `reach.length` features at the reach's magnitudes."""
    if reach is not None:
        batch, normalized = (reach.sets,), (reach.length,)
        x = reach_values(np.random.default_rng(draw(seeds, label="seed")), batch + normalized, (0,), reach)
    else:
        batch = tuple(draw(st.integers(min_batch, 4), label="batch") for _ in range(draw(st.integers(1, 2), label="batch_dims")))
        normalized = tuple(draw(st.integers(1, 8), label="feature") for _ in range(draw(st.integers(1, 3), label="normalized_dims")))
        shape = batch + normalized
        x = draw(grouped_values(shape, tuple(range(len(batch))), allow_constant=allow_constant), label="x")
    arrays = {"x": x}
    affine = draw(st.booleans(), label="elementwise_affine") if elementwise_affine is None else elementwise_affine
    if affine:
        arrays["weight"] = draw(affine_vector(normalized, kind="weight"))
        if (draw(st.booleans(), label="bias") if bias is None else bias):
            arrays["bias"] = draw(affine_vector(normalized, kind="bias"))
    eps = reach.eps if reach is not None and reach.eps is not None else draw(eps_values, label="eps")
    return Case("layer_norm", arrays, {"normalized_shape": normalized, "eps": eps})


def reference(case: Case) -> dict[str, np.ndarray]:
    return {"y": layer_norm(case.x, case.params["normalized_shape"], case.get("weight"), case.get("bias"),
                            eps=case.params.get("eps", 1e-5))}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    grads = layer_norm_backward(dy, case.x, case.params["normalized_shape"], case.get("weight"),
                                eps=case.params.get("eps", 1e-5))
    return case.present(grads)


def conditioning(case: Case) -> Conditioning:
    x = case.x
    k = len(case.params["normalized_shape"])
    axes = tuple(range(x.ndim - k, x.ndim))
    m = moments(x, axes, case.params.get("eps", 1e-5))
    gamma = case.array_or("weight", x.shape[x.ndim - k:], 1.0)
    beta = case.array_or("bias", x.shape[x.ndim - k:], 0.0)
    return Conditioning(m.xhat, m.mean, m.std, m.count, gamma, beta, axes, tuple(range(x.ndim - k)), True)


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
    overrides=frozenset({'allow_constant', 'bias', 'elementwise_affine', 'min_batch', 'reach'}),
    conditioning=conditioning,
    traits=frozenset({"moment_normalizer", "batch_independent", "scale_invariant", "shift_invariant", "accepts_empty"}),
    torch_modules=("torch.nn.LayerNorm",),
    torch_functional="torch.nn.functional.layer_norm",
    bench_case=bench_case,
))
