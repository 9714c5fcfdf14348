"""The invariants normspec checks, the strategies that feed them and the tolerance model.

Importing this package registers every property in `PROPERTIES`.
"""
from normspec.properties import agreement, hygiene, inference, invariance, robustness, statistics  # noqa: F401
from normspec.properties.core import PROPERTIES, Property, PropertyFailure, Verdict, replay, run_property

__all__ = ["PROPERTIES", "Property", "PropertyFailure", "Verdict", "replay", "run_property"]
