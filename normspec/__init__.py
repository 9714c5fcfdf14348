"""normspec: an executable specification of deep-learning normalization layers, cross-checked by
property-based tests against several backends.

The package root imports nothing, so that `normspec.spec` (the leaf of the layers) and the
backends load without the records or the property suite; see docs/ARCHITECTURE.md.
"""
__version__ = "0.1.0"
__all__ = ["__version__"]
