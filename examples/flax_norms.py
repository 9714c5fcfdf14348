"""flax.linen's LayerNorm and RMSNorm under `normspec validate` (forward only: jax runs them).

    normspec validate examples/flax_norms.py:FlaxLayerNorm
    normspec validate examples/flax_norms.py:FlaxLayerNormStableVariance
    normspec validate examples/flax_norms.py:FlaxRMSNorm

(or `python examples/flax_norms.py`). Each class is a torch.nn.Module with torch.nn's constructor
whose forward hands the tensor to the flax module (jax on the CPU, float64 enabled) with the
torch parameters as flax's `scale` and `bias`, and hands the result back. flax's LayerNorm
defaults to use_fast_variance=True (variance as E[x^2] - E[x]^2); FlaxLayerNormStableVariance
sets it to False. Needs `pip install flax` (jax, about 600 MB).
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen

from normspec.validate import Contract

jax.config.update("jax_enable_x64", True)
_JAX = {torch.float64: jnp.float64, torch.float32: jnp.float32, torch.float16: jnp.float16,
        torch.bfloat16: jnp.bfloat16}


def _to_jax(t: torch.Tensor):
    return jnp.asarray(t.detach().to(torch.float64).numpy()).astype(_JAX[t.dtype])


def _to_torch(a, dtype):
    return torch.from_numpy(np.asarray(a.astype(jnp.float64))).to(dtype)


class _FlaxNorm(torch.nn.Module):
    flax_kwargs: dict = {}
    flax_class = linen.LayerNorm

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True):
        super().__init__()
        n = normalized_shape if isinstance(normalized_shape, int) else normalized_shape[-1]
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(n))
        self.bias = torch.nn.Parameter(torch.zeros(n)) if bias and self.flax_class is linen.LayerNorm else None

    def forward(self, x):
        dtype = _JAX[x.dtype]
        extra = {"use_bias": self.bias is not None} if self.flax_class is linen.LayerNorm else {}
        module = self.flax_class(epsilon=self.eps, dtype=dtype, param_dtype=dtype, **extra, **self.flax_kwargs)
        params = {"scale": _to_jax(self.weight.to(x.dtype))}
        if self.bias is not None:
            params["bias"] = _to_jax(self.bias.to(x.dtype))
        return _to_torch(module.apply({"params": params}, _to_jax(x)), x.dtype)


class FlaxLayerNorm(_FlaxNorm):
    """flax.linen.LayerNorm with its defaults (use_fast_variance=True)."""


class FlaxLayerNormStableVariance(_FlaxNorm):
    """flax.linen.LayerNorm(use_fast_variance=False): the two-pass variance."""

    flax_kwargs = {"use_fast_variance": False}


class FlaxRMSNorm(_FlaxNorm):
    """flax.linen.RMSNorm."""

    flax_class = linen.RMSNorm


_C = dict(axes="last", affine=True, forward_only=True, eps_none=False, source="examples/flax_norms.py")
NORMSPEC_CONTRACT = {"FlaxLayerNorm": Contract(**_C), "FlaxLayerNormStableVariance": Contract(**_C),
                     "FlaxRMSNorm": Contract(**_C)}

if __name__ == "__main__":
    from normspec.cli import main

    here = os.path.abspath(__file__)
    sys.exit(max(main(["validate", f"{here}:{name}", "--quiet"]) for name in NORMSPEC_CONTRACT))
