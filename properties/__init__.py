"""The invariants normspec checks, the strategies that feed them and the tolerance model.

Importing this package registers every property in `PROPERTIES`: each module here other than
the engine (`core`), the model (`tolerance`) and the strategies is a module of properties and is
imported in alphabetical order.
"""
import importlib
import pkgutil

from normspec.properties.core import PROPERTIES, Property, PropertyFailure, Verdict, replay, run_property

_SUPPORT = {"core"}
for _info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if _info.name not in _SUPPORT and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = ["PROPERTIES", "Property", "PropertyFailure", "Verdict", "replay", "run_property"]
