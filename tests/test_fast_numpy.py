"""The `numpy:fast` backend: every property holds, also when inputs span many tiles and threads;
and the properties reject a realistic tiling bug (dropping Chan's between-tile variance term)."""
from __future__ import annotations

import numpy as np
import pytest

from normspec.impls import fast_numpy_kernels as k
from normspec.impls.base import available_backends
from normspec.properties import PROPERTIES, run_property
from normspec.registry import get_norm, norms

NORMS = [n for n in ("layer_norm", "rms_norm", "batch_norm") if n in norms()]


@pytest.fixture
def fast():
    backends, absent = available_backends(["numpy:fast"])
    assert not absent, absent
    return backends["numpy:fast"]


@pytest.fixture
def tiny_tiles(monkeypatch):
    """Tiles of 64 bytes in blocks of 256: the small property shapes span many tiles, blocks and Chan merges."""
    monkeypatch.setattr(k, "TILE_BYTES", 64)
    monkeypatch.setattr(k, "BLOCK_BYTES", 256)


def _verdicts(record, backend, names=None):
    return [run_property(p, record, backend, "ci") for p in PROPERTIES.values() if names is None or p.name in names]


@pytest.mark.parametrize("norm", NORMS)
def test_every_property_holds(norm, fast):
    bad = [v for v in _verdicts(get_norm(norm), fast) if v.status not in ("passed", "skipped")]
    assert not bad, [(v.property, v.message) for v in bad]


CORE = ("forward_matches_spec", "backward_matches_spec", "constant_group_gives_beta", "ill_conditioned_inputs",
        "deterministic", "inputs_unmodified", "output_moments", "gradient_orthogonality", "layout_consistency")


@pytest.mark.parametrize("norm", NORMS)
def test_properties_hold_across_many_tiles(norm, fast, tiny_tiles):
    bad = [v for v in _verdicts(get_norm(norm), fast, CORE) if v.status not in ("passed", "skipped")]
    assert not bad, [(v.property, v.message) for v in bad]


@pytest.mark.parametrize("norm", NORMS)
def test_threaded_tiles_are_deterministic_and_correct(norm, fast, tiny_tiles, monkeypatch):
    monkeypatch.setattr(k, "THREADS", 2)
    monkeypatch.setattr(k, "PARALLEL_MIN_BYTES", 0)
    names = ("forward_matches_spec", "backward_matches_spec", "deterministic")
    bad = [v for v in _verdicts(get_norm(norm), fast, names) if v.status not in ("passed", "skipped")]
    assert not bad, [(v.property, v.message) for v in bad]


def _moments_without_between_tile_term(x3):
    """A tiled variance that averages the tiles' own variances, forgetting delta^2 n_a n_b / n."""
    n, c, s = x3.shape
    acc = k.accumulation_dtype(x3.dtype)
    tiles = k._channel_tiles(n, c, s, acc)
    total, count, m2 = np.zeros(c), np.zeros(c), np.zeros(c)
    for n0, n1, c0, c1 in tiles:
        t = x3[n0:n1, c0:c1].astype(np.float64)
        total[c0:c1] += t.sum(axis=(0, 2))
        m2[c0:c1] += ((t - t.mean(axis=(0, 2), keepdims=True)) ** 2).sum(axis=(0, 2))
        count[c0:c1] += t.shape[0] * s
    return total / count, m2 / count


def test_seeded_tile_merge_bug_is_rejected(fast, tiny_tiles, monkeypatch):
    monkeypatch.setattr(k, "channel_moments", _moments_without_between_tile_term)
    verdict = run_property(PROPERTIES["forward_matches_spec"], get_norm("batch_norm"), fast, "ci")
    assert verdict.status == "failed", verdict


def test_reference_moments_accept_the_same_cases(fast, tiny_tiles):
    x3 = np.random.default_rng(0).normal(5.0, 2.0, (7, 3, 5)).astype(np.float32)
    mean, var = k.channel_moments(x3)
    x64 = x3.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2)), rtol=1e-5)
    bugged_mean, bugged_var = _moments_without_between_tile_term(x3)
    assert np.all(bugged_var < var)  # the bug loses the between-tile spread


def test_pooled_outputs_are_never_shared_while_referenced():
    x = np.random.default_rng(1).standard_normal((512, 1024)).astype(np.float32)  # 2 MiB: pooled
    y1 = k.layer_norm_forward(x, None, None, (1024,), 1e-5)
    keep = y1.copy()
    y2 = k.layer_norm_forward(x * 2 + 1, None, None, (1024,), 1e-5)
    assert not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, keep)
    freed = id(y2.base)  # the pool keeps the buffer alive, so its id stays valid
    del y2
    y3 = k.rms_norm_forward(x, None, (1024,), None)
    assert id(y3.base) == freed  # the buffer nobody refers to any more is reused
    assert not np.shares_memory(y1, y3)


def test_unguarded_one_pass_moments_are_rejected(fast, monkeypatch):
    """The textbook one-pass variance (sum x^2 - n mean^2) everywhere, without the var >= mean^2 guard."""
    monkeypatch.setattr(k, "one_pass_is_accurate", lambda m2, mean, count: True)
    verdict = run_property(PROPERTIES["ill_conditioned_inputs"], get_norm("batch_norm"), fast, "ci")
    assert verdict.status == "failed", verdict


def test_folded_affine_without_the_constant_channel_rule_is_rejected(fast, monkeypatch):
    """y = x * scale + shift alone does not give exactly beta on a constant channel (pytorch#5410)."""
    folded = k.folded_affine
    monkeypatch.setattr(k, "folded_affine", lambda mean, var, w, b, eps, batch: folded(mean, var, w, b, eps, False))
    verdict = run_property(PROPERTIES["constant_group_gives_beta"], get_norm("batch_norm"), fast, "ci")
    assert verdict.status == "failed", verdict
