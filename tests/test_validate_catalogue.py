"""The catalogue of seeded wrong torch.nn drop-ins (tests/candidates/norms.py): `normspec validate`
with its default profile rejects every one, and accepts the correct controls (PyTorch's own
modules and hand-written implementations). A norm whose record is not registered fails, naming
the missing record: a record that disappears must not turn its candidates into silent skips."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from normspec.registry import norms
from normspec.validate import validate

CANDIDATES = Path(__file__).parent / "candidates" / "norms.py"
_spec = importlib.util.spec_from_file_location("normspec_test_candidates", CANDIDATES)
catalogue = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(catalogue)

TORCH_CONTROLS = {
    "torch.nn:BatchNorm2d": "batch_norm", "torch.nn:BatchNorm1d": "batch_norm", "torch.nn:LayerNorm": "layer_norm",
    "torch.nn:GroupNorm": "group_norm", "torch.nn:InstanceNorm2d": "instance_norm", "torch.nn:RMSNorm": "rms_norm",
    "torch.nn:LocalResponseNorm": "local_response_norm", "torch:_weight_norm": "weight_norm",
}


def needs(norm: str) -> None:
    assert norm in norms(), f"no record for {norm!r} in normspec.registry: its candidates cannot be validated"


def test_every_norm_the_catalogue_names_is_registered():
    """Fast (not slow-marked): every norm a seeded bug, a control or a PyTorch module is checked as."""
    named = ({n for _, n in catalogue.CATALOGUE.values()} | {n for _, n in catalogue.CONTROLS.values()}
             | set(TORCH_CONTROLS.values()))
    missing = sorted(named - set(norms()))
    assert not missing, f"no record registered for {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("bug", sorted(catalogue.CATALOGUE))
def test_seeded_bug_rejected(bug):
    attr, norm = catalogue.CATALOGUE[bug]
    needs(norm)
    result = validate(f"{CANDIDATES}:{attr}", as_norm=norm, fail_fast=True)
    assert not result.accepted, f"{bug} was accepted"
    assert result.first_counterexample_s is not None


# Open findings, as non-strict xfails (a fix shows as XPASS). The last three were resolved: the hand
# GroupNorm/InstanceNorm controls differentiated through their shift (tests/candidates/norms.py
# shifted_moments), LocalResponseNorm's float16 y = 0 is PyTorch overflowing its squares (expected.py).
OPEN: dict[str, str] = {}


def _open(names):
    return [pytest.param(n, marks=pytest.mark.xfail(reason=OPEN[n], strict=False)) if n in OPEN else n for n in names]


@pytest.mark.slow
@pytest.mark.parametrize("control", _open(sorted(catalogue.CONTROLS)))
def test_hand_written_control_accepted(control):
    attr, norm = catalogue.CONTROLS[control]
    needs(norm)
    result = validate(f"{CANDIDATES}:{attr}", as_norm=norm)
    assert result.accepted, [f"{o.verdict.property}: {o.verdict.message}" for o in result.failures]


@pytest.mark.slow
@pytest.mark.parametrize("target", _open(sorted(TORCH_CONTROLS)))
def test_pytorch_module_accepted(target):
    needs(TORCH_CONTROLS[target])
    result = validate(target)
    assert result.accepted, [f"{o.verdict.property}: {o.verdict.message}" for o in result.failures]


def test_catalogue_is_large_and_spread():
    assert len(catalogue.CATALOGUE) >= 25
    assert {n for _, n in catalogue.CATALOGUE.values()} >= {
        "batch_norm", "layer_norm", "group_norm", "instance_norm", "rms_norm", "local_response_norm", "weight_norm"}
