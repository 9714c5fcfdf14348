"""Sweep points: the regions every run of a property visits besides its random examples (issue 19).
The reach properties visit 2^16 +- 1 values per set in every dtype and 65535-65537 sets in one, so
a kernel wrong only there (a float16 count that is inf past 65504) is rejected on every run, not
on one run in sixty; the pinned draws are recorded, so the reproducer replays the failure."""
from __future__ import annotations

import numpy as np
import pytest
from bugs import buggy_backend

from normspec.impls.numpy_backend import NumpyBackend
from normspec.properties import PROPERTIES, PropertyFailure, replay, run_property
from normspec.registry import get_norm


class RecordingBackend(NumpyBackend):
    """The NumPy backend, recording (dtype, rows, row length) of every layer_norm forward."""

    name = "numpy+recording"

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[str, int, int]] = []

    def forward(self, name, inputs, params):
        x = inputs["x"]
        n = int(np.prod(params["normalized_shape"]))
        self.seen.append((str(x.dtype), x.size // max(n, 1), n))
        return super().forward(name, inputs, params)


@pytest.mark.parametrize("profile", ["dev", "ci"])
def test_reach_visits_the_long_end_in_every_dtype_and_many_rows(profile):
    backend = RecordingBackend()
    verdict = run_property(PROPERTIES["reach_forward_matches_spec"], get_norm("layer_norm"), backend, profile)
    assert verdict.status == "passed", verdict.message
    longest = {d: max(n for dt, _, n in backend.seen if dt == d) for d in {dt for dt, _, _ in backend.seen}}
    assert set(longest) == set(backend.dtypes)
    assert all(n == 2**16 + 1 for n in longest.values()), longest
    assert max(rows for _, rows, _ in backend.seen) >= 65537


def test_a_bug_at_the_long_end_only_is_rejected_and_replays():
    backend = buggy_backend("layer_norm", "count_in_input_dtype")
    p = PROPERTIES["reach_forward_matches_spec"]
    verdict = run_property(p, get_norm("layer_norm"), backend, "dev")
    assert verdict.status == "failed" and "float16" in verdict.message, verdict.message
    with pytest.raises(PropertyFailure):
        replay(p.name, get_norm("layer_norm"), backend, verdict.draws)


def test_a_sweep_point_in_a_dtype_the_backend_lacks_is_left_out():
    backend = RecordingBackend()
    backend.dtypes = ("float64",)
    verdict = run_property(PROPERTIES["reach_forward_matches_spec"], get_norm("layer_norm"), backend, "dev")
    assert verdict.status == "passed" and {d for d, _, _ in backend.seen} == {"float64"}
