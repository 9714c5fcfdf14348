"""`normspec validate`: put a user's own normalization implementation through every property.

    from normspec.validate import validate
    result = validate("mypkg.norms:FusedLayerNorm")      # or "path/to/file.py:MyBatchNorm2d"
    assert result.accepted, result.failures

The candidate runs in a worker process (see `candidate`), adapted to the norm's calls by
`adapters`, and judged by the same properties, spec and tolerance model as the built-in backends.
The names below are imported on first use, so that the processes that only run a candidate
(`worker`, the ranks of `ranks`) do not import the property suite.
"""
from normspec.validate.contract import Contract, ContractError, contract  # light: the standard library only

__all__ = ["DEFAULT_PROFILE", "Contract", "ContractError", "Outcome", "UsageError", "ValidationResult", "contract",
           "validate"]


def __getattr__(name):
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("normspec.validate.runner"), name)
    raise AttributeError(f"module 'normspec.validate' has no attribute {name!r}")
