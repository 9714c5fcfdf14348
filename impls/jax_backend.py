"""`jax`: flax's normalization layers (flax.linen) under `jax.jit`, with their own defaults.

flax computes statistics with `use_fast_variance=True` (var = E[x^2] - E[x]^2, one pass) and in
float32 for half-precision inputs (`force_float32_reductions`); those defaults are kept, since
they are what flax users run, and any deviation they cause is a finding (`normspec/expected.py`).
float64 runs through `jax_enable_x64`. Gradients come from `jax.vjp` of the same jitted function.
PyTorch's (N, C, *S) layout is mapped onto flax's feature axis (BatchNorm axis=1, InstanceNorm
feature_axes=1; GroupNorm, channels-last only, sees x with C moved last and back).

A jitted function is cached per (norm, parameters, roles present); XLA caches its compilations
per shape and dtype.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from normspec.impls.base import Backend, BackendUnavailable, Kernel
from normspec.impls.conventions import beyond_pytorch, biased_running_variance_only, no_running_statistics
from normspec.spec.rms_norm import resolve_eps

INSTALL = "pip install 'normspec[jax]'"
try:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
except ImportError as _exc:  # pragma: no cover - exercised where the extra is absent
    jax = None
    _IMPORT_ERROR = str(_exc)

JAX_DTYPES = ("float64", "float32", "float16", "bfloat16")


def _key(value):
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _key(v)) for k, v in value.items()))
    return value


def _resolve_momentum(params) -> float:
    """flax's decay-style momentum (running = m*running + (1-m)*batch) for PyTorch's convention."""
    m = params.get("momentum", 0.1)
    if m is None:
        return 1.0 - 1.0 / (params.get("num_batches_tracked", 0) + 1)
    return m if params.get("momentum_style", "new") == "decay" else 1.0 - m


# ---------------------------------------------------------------- one builder per norm: (params, roles) -> f(arrays)

def _affine_vars(a, scale="weight", bias="bias"):
    p = {}
    if a.get(scale) is not None:
        p["scale"] = a[scale]
    if a.get(bias) is not None:
        p["bias"] = a[bias]
    return p


def _layer_norm(params, roles):
    k = len(params["normalized_shape"])
    axes = tuple(range(-k, 0))

    def f(a):
        m = nn.LayerNorm(epsilon=params.get("eps", 1e-5), use_scale="weight" in roles, use_bias="bias" in roles,
                         reduction_axes=axes, feature_axes=axes)
        return {"y": m.apply({"params": _affine_vars(a)}, a["x"])}
    return f


def _rms_norm(params, roles):
    k = len(params["normalized_shape"])
    axes = tuple(range(-k, 0))

    def f(a):
        # eps=None is PyTorch's rule, which is float32's epsilon for half inputs too (the dtype the statistics are
        # computed in), not the input dtype's own: float16's 9.8e-4 swamped mean squares near 1e-7.
        eps = resolve_eps(params.get("eps"), str(a["x"].dtype))
        m = nn.RMSNorm(epsilon=eps, use_scale="weight" in roles, reduction_axes=axes, feature_axes=axes)
        return {"y": m.apply({"params": _affine_vars(a)}, a["x"])}
    return f


def _group_norm(params, roles):
    def f(a):
        x = jnp.moveaxis(a["x"], 1, -1)
        m = nn.GroupNorm(num_groups=params["num_groups"], epsilon=params.get("eps", 1e-5),
                         use_scale="weight" in roles, use_bias="bias" in roles)
        return {"y": jnp.moveaxis(m.apply({"params": _affine_vars(a)}, x), -1, 1)}
    return f


def _instance_norm(params, roles):
    def f(a):
        m = nn.InstanceNorm(epsilon=params.get("eps", 1e-5), use_scale="weight" in roles,
                            use_bias="bias" in roles, feature_axes=1)
        return {"y": m.apply({"params": _affine_vars(a)}, a["x"])}
    return f


def _batch_norm(params, roles):
    tracked = "running_mean" in roles and "running_var" in roles
    batch = params.get("training", True) or not tracked

    def f(a):
        x = a["x"]
        c = x.shape[1]
        m = nn.BatchNorm(use_running_average=not batch, axis=1, momentum=_resolve_momentum(params),
                         epsilon=params.get("eps", 1e-5), use_scale="weight" in roles, use_bias="bias" in roles)
        stats = {"mean": a["running_mean"] if tracked else jnp.zeros(c, x.dtype),
                 "var": a["running_var"] if tracked else jnp.ones(c, x.dtype)}
        variables = {"params": _affine_vars(a), "batch_stats": stats}
        if not batch:
            return {"y": m.apply(variables, x)}
        y, updated = m.apply(variables, x, mutable=["batch_stats"])
        out = {"y": y}
        if tracked:
            out["running_mean"], out["running_var"] = updated["batch_stats"]["mean"], updated["batch_stats"]["var"]
        return out
    return f


_batch_norm_unsupported = biased_running_variance_only("flax BatchNorm")
_instance_norm_unsupported = no_running_statistics("flax InstanceNorm")


BUILDERS = {"layer_norm": (_layer_norm, None), "rms_norm": (_rms_norm, None), "group_norm": (_group_norm, None),
            "instance_norm": (_instance_norm, _instance_norm_unsupported),
            "batch_norm": (_batch_norm, _batch_norm_unsupported)}


def _with_conventions(norm, unsupported):
    """The builder's own reason, after the conventions beyond PyTorch's that no builder offers."""
    def check(params):
        return beyond_pytorch(norm, params) or (unsupported(params) if unsupported else None)
    return check


class JaxBackend(Backend):
    name = "jax"
    dtypes = JAX_DTYPES
    layouts = ("contiguous",)
    opt_in = True  # the default `normspec check` keeps its time budget; `--backend NAME` selects it
    native_norms = tuple(BUILDERS)

    def __init__(self):
        if jax is None:
            raise BackendUnavailable(f"jax/flax are not installed ({_IMPORT_ERROR}); {INSTALL}")
        jax.config.update("jax_enable_x64", True)
        self.compiled: dict[tuple, Any] = {}
        self.kernels = {n: Kernel(forward=self._forward_of(n), unsupported=_with_conventions(n, u))
                        for n, (_, u) in BUILDERS.items()}

    def _fn(self, norm: str, inputs: Mapping[str, Any], params: Mapping[str, Any]):
        roles = tuple(sorted(r for r, v in inputs.items() if v is not None))
        key = (norm, roles, _key(dict(params)))
        if key not in self.compiled:
            self.compiled[key] = jax.jit(BUILDERS[norm][0](dict(params), roles))
        return self.compiled[key], roles

    def _forward_of(self, norm: str):
        def forward(inputs, params):
            f, roles = self._fn(norm, inputs, params)
            return f({r: inputs[r] for r in roles})
        return forward

    def native(self, array: np.ndarray, dtype: str, layout: str = "contiguous"):
        return jnp.asarray(np.asarray(array, dtype=np.float64)).astype(dtype)

    def to_numpy(self, value: Any) -> np.ndarray:
        return np.asarray(value).astype(np.float64)

    def gradients(self, norm, inputs, params, dy, wrt):
        """The pullback of y under one `jax.jit` (forward and vjp as one XLA program), as a jitted training
        step runs it: vjp of the jitted forward would run two programs with the residuals between them in memory
        (1.56x the time at 64 MB: docs/speed/engines.md, the independent timer)."""
        f, roles = self._fn(norm, inputs, params)
        diff_roles = tuple(r for r in roles if r in wrt)
        key = ("grad", norm, roles, diff_roles, _key(dict(params)))
        if key not in self.compiled:
            def pullback(diff, rest, dy):
                return jax.vjp(lambda d: f({**rest, **d})["y"], diff)[1](dy)[0]
            self.compiled[key] = jax.jit(pullback)
        diff = {r: inputs[r] for r in diff_roles}
        rest = {r: inputs[r] for r in roles if r not in diff_roles}
        return self.compiled[key](diff, rest, dy)

    def synchronize(self) -> None:
        (jax.device_put(0.0) + 0).block_until_ready()
