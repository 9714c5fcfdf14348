"""normspec: an executable specification of deep-learning normalization layers, cross-checked by
property-based tests against several backends."""
from normspec.case import Case
from normspec.registry import NormRecord, get_norm, norms

__version__ = "0.1.0"
__all__ = ["Case", "NormRecord", "get_norm", "norms", "__version__"]
