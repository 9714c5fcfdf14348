"""The unit of work that flows between spec, backends and properties: one call of a norm."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np

# Input roles, in the order a forward call takes them. Arrays absent from a case are None.
ROLES = ("x", "weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class Case:
    """One call of normalization `norm`: float64 input arrays by role and keyword parameters.

    Cases are values: properties derive new cases with `with_arrays` / `with_params` and never
    modify one in place (the arrays are made read-only on construction).
    """

    norm: str
    arrays: Mapping[str, np.ndarray]
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        frozen = {}
        for role, a in self.arrays.items():
            if a is None:
                continue
            a = np.array(a, dtype=np.float64, copy=True)
            a.setflags(write=False)
            frozen[role] = a
        object.__setattr__(self, "arrays", frozen)
        object.__setattr__(self, "params", dict(self.params))

    @property
    def x(self) -> np.ndarray:
        return self.arrays["x"]

    def get(self, role: str) -> np.ndarray | None:
        return self.arrays.get(role)

    def array_or(self, role: str, shape: tuple[int, ...], fill: float) -> np.ndarray:
        """The array of `role` reshaped to `shape`, or `fill` everywhere where the case has none
        (an absent weight acts as ones, an absent bias as zeros: PyTorch's affine=False)."""
        a = self.arrays.get(role)
        return np.full(shape, float(fill)) if a is None else a.reshape(shape)

    def kwargs(self, *names: str) -> dict[str, Any]:
        """The parameters among `names` that this case sets (to pass on to a spec function)."""
        return {k: self.params[k] for k in names if k in self.params}

    def present(self, grads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The gradients of x and of the roles this case has (a spec backward may return more)."""
        return {role: g for role, g in grads.items() if role == "x" or self.arrays.get(role) is not None}

    def with_arrays(self, **arrays) -> "Case":
        merged = dict(self.arrays)
        for role, a in arrays.items():
            if a is None:
                merged.pop(role, None)
            else:
                merged[role] = a
        return replace(self, arrays=merged)

    def with_params(self, **params) -> "Case":
        return replace(self, params={**self.params, **params})

    def describe(self) -> str:
        """Short one-line form for messages: shapes and parameters, not values."""
        shapes = ", ".join(f"{r}{tuple(a.shape)}" for r, a in self.arrays.items())
        params = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{self.norm}({shapes}; {params})"

    def to_source(self) -> str:
        """Python source that rebuilds this case exactly (float64 values round-trip via repr)."""
        arrays = ",\n        ".join(
            f"{role!r}: np.array({a.ravel().tolist()!r}, dtype=np.float64).reshape({tuple(a.shape)!r})"
            for role, a in self.arrays.items()
        )
        return (
            f"Case(\n    norm={self.norm!r},\n    arrays={{\n        {arrays},\n    }},\n"
            f"    params={dict(self.params)!r},\n)"
        )
