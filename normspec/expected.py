"""Known upstream deviations: properties a real backend fails, reported as expected failures.

Each entry names the property, norm and backend, says why and links the upstream report where
one exists. An entry never loosens a tolerance: the property still runs, and if it passes the
matrix shows XPASS so that a fixed upstream bug is noticed.
"""
from __future__ import annotations

from dataclasses import dataclass
import re
from fnmatch import fnmatch


@dataclass(frozen=True)
class ExpectedFailure:
    property: str
    norm: str
    backend: str  # fnmatch pattern, e.g. "torch:*"
    reason: str
    link: str = ""
    # A regular expression the failure message must match (e.g. the dtype), so that the entry
    # covers only the known deviation and any other failure of the same property stays a FAIL.
    when: str = ""

    def matches(self, prop: str, norm: str, backend: str, message: str = "") -> bool:
        return (fnmatch(prop, self.property) and fnmatch(norm, self.norm) and fnmatch(backend, self.backend)
                and (not self.when or not message or re.search(self.when, message) is not None))


EXPECTED_FAILURES: list[ExpectedFailure] = [
    ExpectedFailure(
        property="constant_group_gives_beta",
        norm="batch_norm",
        backend="torch:cpu",
        reason=(
            "PyTorch's CPU batch_norm computes y = x * scale + (beta - mean * scale) with "
            "scale = gamma/sqrt(var + eps); for a constant channel x == mean but the two products round "
            "differently, so y misses beta by about |x| * |gamma|/sqrt(eps) * u (210 at x = 1e7 in float32)"
        ),
        link="https://github.com/pytorch/pytorch/issues/5410",
    ),
]


def expected_failure(prop: str, norm: str, backend: str, message: str = "") -> ExpectedFailure | None:
    """The entry covering this result; with an empty message (a pass), any entry for the triple."""
    for entry in EXPECTED_FAILURES:
        if entry.matches(prop, norm, backend, message):
            return entry
    return None
