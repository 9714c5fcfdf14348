"""Record: Spectral Normalization (Miyato et al. 2018): W/sigma by power iteration with state (u, v)."""
from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from normspec.library import tolerance
from normspec.library.case import Case
from normspec.library.strategies import seeds
from normspec.norms.weight_norm import (
    WEIGHT_REPARAMETRIZATION,
    dims_for,
    layer_weight_shape,
    weight_shapes,
    weight_values,
)
from normspec.registry import NormRecord, register, register_trait
from normspec.spec.spectral_norm import (
    POWER_ITERATION_ORDERS,
    power_iteration,
    spectral_norm,
    spectral_norm_backward,
    weight_matrix,
)

POWER_ITERATION_STATE = register_trait(
    "power_iteration_state",
    "keeps power-iteration vectors (u, v) updated in training only and used as given in eval",
)


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a)


@st.composite
def spectral_norm_cases(draw, *, training=None, dim="draw", n_power_iterations=None, conventions=True):
    """SN calls: W of rank 2-4, any dim; (u, v) a random start or the state after a few
    iterations (as in a trained module); train or eval; 0-5 iterations; with conventions, the
    power-iteration order u-first (the parametrization) or v-first (Algorithm 1, the legacy hook)."""
    shape = draw(weight_shapes(min_rank=2), label="shape")
    dim = draw(dims_for(len(shape), allow_none=False), label="dim") if dim == "draw" else dim
    w = draw(weight_values(shape, (dim % len(shape),), centred=draw(st.booleans(), label="centred")), label="W")
    w_mat = weight_matrix(w, dim)
    rng = np.random.default_rng(draw(seeds, label="state_seed"))
    u, v = unit(rng.standard_normal(w_mat.shape[0])), unit(rng.standard_normal(w_mat.shape[1]))
    order = draw(st.sampled_from(POWER_ITERATION_ORDERS), label="power_iteration_order") if conventions else None
    u, v = power_iteration(w_mat, u, v, draw(st.sampled_from([0, 1, 3]), label="warm_up"), 1e-12, order or "u_first")
    params = {
        "dim": dim,
        "n_power_iterations": draw(st.sampled_from([1, 1, 0, 2, 5]), label="n_power_iterations")
        if n_power_iterations is None else n_power_iterations,
        "eps": draw(st.sampled_from([1e-12, 1e-12, 1e-8]), label="eps"),
        "training": draw(st.booleans(), label="training") if training is None else training,
    }
    if order is not None:
        params["power_iteration_order"] = order
    return Case("spectral_norm", {"x": w, "u": u, "v": v}, params)


def _kwargs(case):
    return case.kwargs(*("dim", "n_power_iterations", "eps", "training", "power_iteration_order"))


def reference(case: Case) -> dict[str, np.ndarray]:
    r = spectral_norm(case.x, case.get("u"), case.get("v"), **_kwargs(case))
    return {"y": r.y, "u": r.u, "v": r.v}


def reference_grad(case: Case, dy: np.ndarray) -> dict[str, np.ndarray]:
    return spectral_norm_backward(dy, case.x, case.get("u"), case.get("v"), **_kwargs(case))


def bench_case(shape, rng) -> Case | None:
    """One training step (1 power iteration, PyTorch's default) on a layer weight the size of the activation."""
    w = rng.standard_normal(layer_weight_shape(shape))
    w_mat = weight_matrix(w, 0)
    u, v = unit(rng.standard_normal(w_mat.shape[0])), unit(rng.standard_normal(w_mat.shape[1]))
    return Case("spectral_norm", {"x": w, "u": u, "v": v},
                {"dim": 0, "n_power_iterations": 1, "eps": 1e-12, "training": True})


register(NormRecord(
    name="spectral_norm",
    family="weight",
    paper="Miyato, Kataoka, Koyama & Yoshida 2018, Spectral Normalization, Algorithm 1",
    reference=reference,
    reference_grad=reference_grad,
    cases=spectral_norm_cases,
    overrides=frozenset({'conventions', 'dim', 'n_power_iterations', 'training'}),
    error_model=tolerance.spectral_norm_bounds,
    traits=frozenset({WEIGHT_REPARAMETRIZATION, POWER_ITERATION_STATE}),
    differentiable=("x",),
    torch_modules=("torch.nn.utils.parametrizations.spectral_norm", "torch.nn.utils.spectral_norm"),
    outputs=("y", "u", "v"),
    bench_case=bench_case,
))
