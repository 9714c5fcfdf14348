"""`normspec validate`: put a user's own normalization implementation through every property.

    from normspec.validate import validate
    result = validate("mypkg.norms:FusedLayerNorm")      # or "path/to/file.py:MyBatchNorm2d"
    assert result.accepted, result.failures

The candidate runs in a worker process (see `candidate`), adapted to the norm's calls by
`adapters`, and judged by the same properties, spec and tolerance model as the built-in backends.
The names below are imported on first use, so that the processes that only run a candidate
(`worker`, the ranks of `ranks`) do not import the property suite.
"""
__all__ = ["DEFAULT_PROFILE", "Contract", "ContractError", "Outcome", "UsageError", "ValidationResult", "contract",
           "validate"]
_CONTRACT = {"Contract", "ContractError", "contract"}


def __getattr__(name):
    if name in _CONTRACT:
        from normspec.validate import contract as module
    elif name in __all__:
        from normspec.validate import runner as module
    else:
        raise AttributeError(f"module 'normspec.validate' has no attribute {name!r}")
    return getattr(module, name)
