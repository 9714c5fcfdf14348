"""`normspec validate`: put a user's own normalization implementation through every property.

    from normspec.validate import validate
    result = validate("mypkg.norms:FusedLayerNorm")      # or "path/to/file.py:MyBatchNorm2d"
    assert result.accepted, result.failures

The candidate runs in a worker process (see `candidate`), adapted to the norm's calls by
`adapters`, and judged by the same properties, spec and tolerance model as the built-in backends.
"""
from normspec.validate.contract import Contract, ContractError, contract
from normspec.validate.runner import DEFAULT_PROFILE, Outcome, UsageError, ValidationResult, validate

__all__ = ["DEFAULT_PROFILE", "Contract", "ContractError", "Outcome", "UsageError", "ValidationResult", "contract",
           "validate"]
