"""The mathematics of each normalization, as float64 NumPy reference functions.

Every function here is pure (no argument is modified), works in float64 whatever it is
given, returns new state instead of mutating old state, and cites the paper it encodes.
Conventions that differ across frameworks are keyword arguments with PyTorch's defaults.
"""
from normspec.spec.batch_norm import BatchNormResult, batch_norm, batch_norm_backward
from normspec.spec.layer_norm import layer_norm, layer_norm_backward
from normspec.spec.moments import Moments, moments, moments_backward

__all__ = [
    "BatchNormResult",
    "Moments",
    "batch_norm",
    "batch_norm_backward",
    "layer_norm",
    "layer_norm_backward",
    "moments",
    "moments_backward",
]
