"""Running every property x norm x backend, with expected failures applied."""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable

from normspec.expected import expected_failure
from normspec.impls.base import Backend, available_backends
from normspec.properties import PROPERTIES, Verdict, run_property
from normspec.registry import NormRecord, norms


class SelectionError(ValueError):
    """A norm, backend or property name that does not exist (a usage error, exit status 2)."""


@dataclass
class Plan:
    records: list[NormRecord]
    backends: list[Backend]
    properties: list[str]
    absent_backends: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.records) * len(self.backends) * len(self.properties)


def _pick(kind: str, wanted: Iterable[str] | None, known: Iterable[str]) -> list[str]:
    known = list(known)
    if not wanted:
        return known
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise SelectionError(f"unknown {kind}(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return list(wanted)


def plan(norm_names=None, backend_names=None, property_names=None) -> Plan:
    records = norms()
    chosen_norms = _pick("norm", norm_names, records)
    try:
        backends, absent = available_backends(list(backend_names) if backend_names else None)
    except KeyError as exc:
        raise SelectionError(exc.args[0]) from None
    chosen_props = _pick("property", property_names, PROPERTIES)
    return Plan([records[n] for n in chosen_norms], list(backends.values()), chosen_props, absent)


def judge(name: str, record: NormRecord, backend: Backend, profile: str) -> Verdict:
    """Run one property and apply the expected-failure table to its verdict."""
    verdict = run_property(PROPERTIES[name], record, backend, profile)
    xf = expected_failure(name, record.name, backend.name, verdict.message, verdict.dtype)
    if xf is not None and verdict.status == "failed":
        if xf.dtypes:
            # confined to some dtypes: the property must hold in all the others
            rest = run_property(PROPERTIES[name], record, backend, profile, exclude_dtypes=xf.dtypes)
            if rest.status == "failed":
                other = expected_failure(name, record.name, backend.name, rest.message, rest.dtype)
                if other is None:
                    rest.seconds += verdict.seconds
                    return rest
                xf = other  # a second documented deviation outside the first one's dtypes
        verdict.status, verdict.reason, verdict.link = "xfail", xf.reason, xf.link
    elif xf is not None and verdict.status == "passed" and not xf.conditional:
        # an unconditional expected failure that passed: the upstream bug may be fixed
        verdict.status, verdict.reason, verdict.link = "xpass", xf.reason, xf.link
    return verdict


def run_plan(p: Plan, profile: str, on_result: Callable[[Verdict], None] = lambda v: None, *,
             into: list[Verdict] | None = None, warned: dict[str, int] | None = None) -> list[Verdict]:
    """Judge every cell of the plan. Verdicts are appended to `into` as they come (an interrupted
    run keeps them). With `warned`, Python warnings raised while judging (a backend's NumPy
    overflow, say) are counted there by origin instead of reaching the terminal."""
    verdicts = [] if into is None else into
    for record in p.records:
        for backend in p.backends:
            for name in p.properties:
                if warned is None:
                    verdict = judge(name, record, backend, profile)
                else:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("default")
                        verdict = judge(name, record, backend, profile)
                    for w in caught:
                        where = f"{w.category.__name__}: {w.message} ({os.path.basename(w.filename)}:{w.lineno})"
                        warned[where] = warned.get(where, 0) + 1
                verdicts.append(verdict)
                on_result(verdict)
    return verdicts
