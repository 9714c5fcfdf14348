"""The `numpy:fast` backend: every property holds, also when inputs span many tiles and threads
and when BatchNorm takes its cache-resident path; and the properties reject realistic bugs of
both BatchNorm paths (dropping Chan's between-tile variance term, an unguarded one-pass
variance, the folded affine without the constant-channel rule)."""
from __future__ import annotations

import numpy as np
import pytest

from normspec.impls.base import available_backends
from normspec.impls.fast_numpy import batch_norm, reductions, row_norms, runtime
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
    """Tiles of 64 bytes in blocks of 256: the small property shapes span many tiles, blocks and Chan merges
    (BatchNorm's cache-resident path is switched off, so its two-pass tile path is what runs)."""
    monkeypatch.setattr(runtime, "TILE_BYTES", 64)
    monkeypatch.setattr(runtime, "BLOCK_BYTES", 256)
    monkeypatch.setattr(batch_norm, "RESIDENT_BYTES", 0)


@pytest.fixture(params=[None, 1], ids=["resident-groups", "resident-one-channel"])
def resident(request, monkeypatch):
    """BatchNorm's cache-resident path on every property case whose channels fit (the short rows of the
    property shapes included), with the default groups of whole channels or one channel per group."""
    monkeypatch.setattr(batch_norm, "RESIDENT_MIN_ROW_BYTES", 0)
    if request.param is not None:
        groups = batch_norm._resident_groups

        def one_channel_groups(n, c, s, acc, buffers=1):
            fits = groups(n, c, s, acc, buffers)
            return None if fits is None else [(0, n, ch, ch + 1) for ch in range(c)]

        monkeypatch.setattr(batch_norm, "_resident_groups", one_channel_groups)


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
    monkeypatch.setattr(runtime, "THREADS", 2)
    monkeypatch.setattr(runtime, "PARALLEL_MIN_BYTES", 0)
    names = ("forward_matches_spec", "backward_matches_spec", "deterministic")
    bad = [v for v in _verdicts(get_norm(norm), fast, names) if v.status not in ("passed", "skipped")]
    assert not bad, [(v.property, v.message) for v in bad]


def _moments_without_between_tile_term(x3):
    """A tiled variance that averages the tiles' own variances, forgetting delta^2 n_a n_b / n."""
    n, c, s = x3.shape
    acc = runtime.accumulation_dtype(x3.dtype)
    tiles = runtime.channel_tiles(n, c, s, acc)
    total, count, m2 = np.zeros(c), np.zeros(c), np.zeros(c)
    for n0, n1, c0, c1 in tiles:
        t = x3[n0:n1, c0:c1].astype(np.float64)
        total[c0:c1] += t.sum(axis=(0, 2))
        m2[c0:c1] += ((t - t.mean(axis=(0, 2), keepdims=True)) ** 2).sum(axis=(0, 2))
        count[c0:c1] += t.shape[0] * s
    return total / count, m2 / count


def test_seeded_tile_merge_bug_is_rejected(fast, tiny_tiles, monkeypatch):
    monkeypatch.setattr(batch_norm, "channel_moments", _moments_without_between_tile_term)
    verdict = run_property(PROPERTIES["forward_matches_spec"], get_norm("batch_norm"), fast, "ci")
    assert verdict.status == "failed", verdict


def test_reference_moments_accept_the_same_cases(fast, tiny_tiles):
    x3 = np.random.default_rng(0).normal(5.0, 2.0, (7, 3, 5)).astype(np.float32)
    mean, var = reductions.channel_moments(x3)
    x64 = x3.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(axis=(0, 2)), rtol=1e-6)
    np.testing.assert_allclose(var, x64.var(axis=(0, 2)), rtol=1e-5)
    bugged_mean, bugged_var = _moments_without_between_tile_term(x3)
    assert np.all(bugged_var < var)  # the bug loses the between-tile spread


def test_pooled_outputs_are_never_shared_while_referenced(monkeypatch):
    monkeypatch.setattr(runtime, "_pool", [])  # free buffers left by earlier tests would be reused first
    x = np.random.default_rng(1).standard_normal((512, 1024)).astype(np.float32)  # 2 MiB: pooled
    y1 = row_norms.layer_norm_forward(x, None, None, (1024,), 1e-5)
    keep = y1.copy()
    y2 = row_norms.layer_norm_forward(x * 2 + 1, None, None, (1024,), 1e-5)
    assert not np.shares_memory(y1, y2)
    np.testing.assert_array_equal(y1, keep)
    freed = id(y2.base)  # the pool keeps the buffer alive, so its id stays valid
    del y2
    y3 = row_norms.rms_norm_forward(x, None, (1024,), None)
    assert id(y3.base) == freed  # the buffer nobody refers to any more is reused
    assert not np.shares_memory(y1, y3)


def test_unguarded_one_pass_moments_are_rejected(fast, monkeypatch):
    """The textbook one-pass variance (sum x^2 - n mean^2) everywhere, without the var >= mean^2 guard."""
    monkeypatch.setattr(reductions, "one_pass_is_accurate", lambda m2, mean, count, count_mean2=None: True)
    verdict = run_property(PROPERTIES["ill_conditioned_inputs"], get_norm("batch_norm"), fast, "ci")
    assert verdict.status == "failed", verdict


def _drop_constant_channel_rule(monkeypatch):
    """The seeded bug: the folded affine map without its constant-channel rule (batch=False always)."""
    folded = batch_norm.folded_affine

    def without_rule(mean, var, weight, bias, eps, batch):
        return folded(mean, var, weight, bias, eps, False)

    monkeypatch.setattr(batch_norm, "folded_affine", without_rule)


def test_folded_affine_without_the_constant_channel_rule_is_rejected(fast, monkeypatch):
    """y = x * scale + shift alone does not give exactly beta on a constant channel (pytorch#5410)."""
    _drop_constant_channel_rule(monkeypatch)
    verdict = run_property(PROPERTIES["constant_group_gives_beta"], get_norm("batch_norm"), fast, "ci")
    assert verdict.status == "failed", verdict


BN_CORE = CORE + ("train_equals_eval_on_batch_stats", "cumulative_moving_average", "running_var_convention",
                  "single_value_per_channel_raises")


def test_batch_norm_resident_path_holds_every_property(fast, resident):
    bad = [v for v in _verdicts(get_norm("batch_norm"), fast, BN_CORE) if v.status not in ("passed", "skipped")]
    assert not bad, [(v.property, v.message) for v in bad]


def test_batch_norm_2d_activations_take_the_resident_path(monkeypatch):
    calls = []
    for name, groups_at in (("_resident_batch_norm", 2), ("_resident_batch_norm_backward", 3)):
        resident = getattr(batch_norm, name)
        monkeypatch.setattr(batch_norm, name, lambda *a, f=resident, i=groups_at: calls.append(a[i]) or f(*a))
    x = np.random.default_rng(2).standard_normal((8, 6, 16, 16)).astype(np.float32)
    y = batch_norm.batch_norm_forward({"x": x}, {"training": True})["y"]
    grads = batch_norm.batch_norm_backward({"x": x}, {"training": True}, np.ones_like(x))
    assert len(calls) == 2 and all(sorted(c for g in gs for c in range(g[2], g[3])) == list(range(6)) for gs in calls)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-3)
    np.testing.assert_allclose(grads["x"], 0, atol=1e-5)  # a constant dy has no gradient through the batch moments
    calls.clear()
    x1 = x.reshape(8, -1)  # BatchNorm1d: strided columns, two passes
    batch_norm.batch_norm_forward({"x": x1}, {"training": True})
    batch_norm.batch_norm_backward({"x": x1}, {"training": True}, np.ones_like(x1))
    assert not calls


@pytest.mark.parametrize("shape", [(64, 64, 4096), (8, 3, 50176), (256, 512, 49), (2, 7, 300000)])
def test_resident_groups_cover_every_channel_within_budget(shape):
    n, c, s = shape
    acc = np.dtype(np.float32)
    groups = batch_norm._resident_groups(n, c, s, acc)
    fits = n * s * 4 <= batch_norm.RESIDENT_BYTES and s * 4 >= batch_norm.RESIDENT_MIN_ROW_BYTES
    assert (groups is not None) == fits
    if groups is not None:
        assert [ch for _, _, c0, c1 in groups for ch in range(c0, c1)] == list(range(c))
        budget = batch_norm.RESIDENT_BYTES
        assert all(n0 == 0 and n1 == n and (c1 - c0) * n * s * 4 <= budget for n0, n1, c0, c1 in groups)


def test_resident_unguarded_one_pass_moments_are_rejected(fast, resident, monkeypatch):
    monkeypatch.setattr(reductions, "one_pass_is_accurate", lambda m2, mean, count, count_mean2=None: True)
    verdict = run_property(PROPERTIES["ill_conditioned_inputs"], get_norm("batch_norm"), fast, "ci")
    assert verdict.status == "failed", verdict


def test_resident_folded_affine_without_the_constant_channel_rule_is_rejected(fast, resident, monkeypatch):
    _drop_constant_channel_rule(monkeypatch)
    verdict = run_property(PROPERTIES["constant_group_gives_beta"], get_norm("batch_norm"), fast, "ci")
    assert verdict.status == "failed", verdict


def test_row_sums_of_long_rows_match_float64():
    t = np.random.default_rng(3).standard_normal((3, 3 * 4096 + 3 * 1024)).astype(np.float32)  # chunked
    np.testing.assert_allclose(reductions.row_sums(t), t.astype(np.float64).sum(axis=1), rtol=0, atol=1e-3)
    prime = np.random.default_rng(4).standard_normal((2, 10007)).astype(np.float32)  # no divisor: one product
    np.testing.assert_allclose(reductions.row_sums(prime), prime.astype(np.float64).sum(axis=1), rtol=0, atol=1e-3)


def test_row_buffering_caps_the_ufunc_buffer_and_restores_it():
    before = np.getbufsize()
    with runtime.row_buffering(1000):
        assert np.getbufsize() == 992  # a multiple of 16, no longer than the row
    with runtime.row_buffering(64):
        assert np.getbufsize() == before  # short rows: one loop per row would cost more than the buffering
    with runtime.row_buffering(10**6):
        assert np.getbufsize() == before  # long rows: left alone
    assert np.getbufsize() == before


@pytest.mark.parametrize("threads", [1, 2])
def test_row_buffering_changes_no_result_and_leaks_nowhere(threads, monkeypatch):
    """The buffer size is a speed setting only: outputs are bitwise those of NumPy's default buffering."""
    import contextlib
    monkeypatch.setattr(runtime, "THREADS", threads)
    monkeypatch.setattr(runtime, "PARALLEL_MIN_BYTES", 0)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((64, 1000)).astype(np.float32)
    w, b = rng.uniform(0.5, 2, 1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    x4 = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    before = np.getbufsize()

    def outputs():
        return (row_norms.layer_norm_forward(x, w, b, (1000,), 1e-5).copy(),
                row_norms.rms_norm_forward(x, w, (1000,), None).copy(),
                batch_norm.batch_norm_forward({"x": x4}, {"training": True})["y"].copy(),
                row_norms.layer_norm_backward(x, w, x[::-1].copy(), (1000,), 1e-5)["x"].copy())

    capped = outputs()
    assert np.getbufsize() == before
    monkeypatch.setattr(runtime, "row_buffering", lambda row: contextlib.nullcontext())
    for a, b_ in zip(capped, outputs()):
        np.testing.assert_array_equal(a, b_)


def test_resident_backward_with_statistics_detached_is_rejected(fast, resident, monkeypatch):
    """dx = gamma inv_std dy in training (the batch moments treated as constants) must be caught."""
    real = batch_norm._resident_batch_norm_backward

    def detached(x3, dy3, dx3, groups, gamma, eps, acc):
        sums = real(x3, dy3, dx3, groups, gamma, eps, acc)
        var = x3.astype(np.float64).var(axis=(0, 2))
        dx3[...] = (gamma / np.sqrt(var + eps))[None, :, None] * dy3
        return sums

    monkeypatch.setattr(batch_norm, "_resident_batch_norm_backward", detached)
    verdict = run_property(PROPERTIES["backward_matches_spec"], get_norm("batch_norm"), fast, "ci")
    assert verdict.status == "failed", verdict


@pytest.mark.parametrize("shape", [(259, 1024), (300, 64), (3, 5, 48), (5, 10000)])
def test_per_column_ufuncs_over_k_rows_change_no_result(shape, monkeypatch):
    """gamma and beta (BatchNorm1d: scale and shift) applied over k rows at once, then the ragged rest,
    give bitwise the row-by-row result."""
    rng = np.random.default_rng(6)
    m = shape[-1]
    x = rng.standard_normal(shape).astype(np.float32)
    w, b = rng.uniform(0.5, 2, m).astype(np.float32), rng.normal(size=m).astype(np.float32)
    x16 = x.astype(np.float16)

    x2 = x.reshape(-1, m)  # BatchNorm1d on (N, C): scale and shift per column

    def outputs():
        return (row_norms.layer_norm_forward(x, w, b, (m,), 1e-5).copy(),
                row_norms.rms_norm_forward(x, w, (m,), None).copy(),
                row_norms.layer_norm_forward(x16, w, b, (m,), 1e-5).copy(),
                row_norms.layer_norm_forward(x, None, b, (m,), 1e-5).copy(),
                batch_norm.batch_norm_forward({"x": x2, "weight": w, "bias": b}, {"training": True})["y"].copy())

    columns = runtime.Columns(m, w, b)
    rows = int(np.prod(shape[:-1]))
    assert [p[0][0].shape for p in columns.parts(np.empty((rows, m)))] == (
        [(rows // columns.k, columns.k * m)] * (rows >= columns.k) + [(rows % columns.k, m)] * (rows % columns.k > 0))
    long_rows = outputs()
    monkeypatch.setattr(runtime, "LONG_ROW", 1)
    for a, b_ in zip(long_rows, outputs()):
        np.testing.assert_array_equal(a, b_)


def test_constant_row_pre_test_lets_every_constant_row_through():
    """The two-call pre-test may only skip tiles that have no candidate row: a constant row among
    spread ones, with a large mean (the case where an inexact mean matters most), still gets exact values."""
    rng = np.random.default_rng(7)
    t = rng.standard_normal((8, 1000)).astype(np.float32)
    t[3] = 1234.5678
    mean = reductions.row_sums(t, 1 / 1000)
    centred = t - mean[:, None]
    assert centred[3].any()  # the BLAS mean of the constant row is inexact: the case needs the fix
    sq = np.vecdot(centred, centred)
    reductions.exact_constant_rows(t, mean, sq, centred, 1000)
    assert mean[3] == np.float32(1234.5678) and sq[3] == 0 and not centred[3].any()
    assert (sq[np.arange(8) != 3] > 100).all()  # the spread rows are left alone


def test_skipping_the_constant_row_check_is_rejected(fast, monkeypatch):
    """Without the exact mean of constant rows, x - mean is rounding noise scaled by 1/sqrt(eps), not 0."""
    monkeypatch.setattr(row_norms, "_constant_rows_to_beta", lambda x2, y, parts, beta, m: None)
    verdict = run_property(PROPERTIES["constant_group_gives_beta"], get_norm("layer_norm"), fast, "ci")
    assert verdict.status == "failed", verdict


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("with_bias", [True, False])
def test_constant_rows_across_many_tiles_come_out_exactly_beta(dtype, with_bias, monkeypatch):
    """The constant-row rule, applied once per call to the rows every tile flagged, reaches rows in any tile."""
    monkeypatch.setattr(runtime, "TILE_BYTES", 16 * 1000 * 4)  # 16 rows a tile
    monkeypatch.setattr(runtime, "THREADS", 2)
    monkeypatch.setattr(runtime, "PARALLEL_MIN_BYTES", 0)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((300, 1000)).astype(dtype)
    constant = [0, 17, 150, 299]
    x[constant] = np.array([1234.5, -0.1, 3.3, 7e3])[:, None].astype(dtype)
    w, b = rng.uniform(0.5, 2, 1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    y = row_norms.layer_norm_forward(x, w, b if with_bias else None, (1000,), 1e-5)
    expected = b.astype(dtype) if with_bias else np.zeros(1000, dtype)
    for r in constant:
        np.testing.assert_array_equal(y[r], expected)
    spread = np.setdiff1d(np.arange(300), constant)
    assert np.abs(y[spread].astype(np.float64)).max() > 1  # the other rows are normalized, not touched


@pytest.mark.parametrize("affine", [True, False])
def test_one_channel_groups_in_python_floats_match_the_array_epilogue_bitwise(affine, monkeypatch):
    """The scalar epilogue of one-channel groups repeats row_moments and folded_affine exactly: same
    y, mean and var to the bit, on ordinary, ill-conditioned (two-pass fallback), constant and zero channels."""
    monkeypatch.setattr(runtime, "PARALLEL_MIN_BYTES", 0)
    rng = np.random.default_rng(9)
    x = rng.standard_normal((16, 5, 32, 32)).astype(np.float32)
    x[:, 1] += 1e4  # var far below mean^2: the one-pass guard fails, two-pass runs
    x[:, 2] = 3.25  # constant
    x[:, 3] = 0.0  # all zero: one-pass, var exactly 0
    inputs = {"x": x, "running_mean": np.zeros(5, np.float32), "running_var": np.ones(5, np.float32)}
    if affine:
        inputs.update(weight=rng.uniform(0.5, 2, 5).astype(np.float32), bias=rng.normal(size=5).astype(np.float32))
    monkeypatch.setattr(batch_norm, "RESIDENT_BYTES", 16 * 32 * 32 * 4)  # one channel per group
    params = {"training": True, "momentum": 0.1, "eps": 1e-5}
    taken = []
    scalar_epilogue = batch_norm._one_channel_affine
    monkeypatch.setattr(batch_norm, "_one_channel_affine", lambda *a: taken.append(scalar_epilogue(*a)) or taken[-1])
    scalar = {key: v.copy() for key, v in batch_norm.batch_norm_forward(inputs, params).items()}
    # channels 0, 3 and 4 take the scalar epilogue; 1 (ill-conditioned) and 2 (constant) fall back
    assert len(taken) == 5 and sum(t is not None for t in taken) == 3
    monkeypatch.setattr(batch_norm, "SCALAR_EPILOGUE", False)
    arrays = batch_norm.batch_norm_forward(inputs, params)
    for key in scalar:
        np.testing.assert_array_equal(scalar[key], arrays[key])
    assert (scalar["y"][:, 2] == (inputs["bias"][2] if affine else 0)).all()


@pytest.mark.parametrize("shape", [(0, 8), (3, 0, 8)])
def test_row_norms_of_inputs_without_rows_are_empty(shape):
    """No rows means no tiles: the per-call constant-row rule must have nothing to do, not fail."""
    x = np.zeros(shape, np.float32)
    w = np.ones(8, np.float32)
    assert row_norms.layer_norm_forward(x, w, w, (8,), 1e-5).shape == shape
    assert row_norms.rms_norm_forward(x, w, (8,), None).shape == shape


@pytest.mark.parametrize("rows, cols", [(1, 4096), (2, 1024), (256, 1024), (255, 1000), (501, 64), (7, 97), (3, 2**18)])
def test_row_dots_are_row_dot_products_whatever_the_split(rows, cols):
    """row_dots splits rows into pieces (so NumPy's vecdot releases the GIL) and adds the pieces' sums
    back: each result is within the tolerance model's bound for a dot product of `cols` terms."""
    from normspec.library.tolerance import _reduction
    rng = np.random.default_rng(rows * cols)
    a, b = rng.standard_normal((2, rows, cols)).astype(np.float32)
    pieces = reductions._row_pieces(rows, cols)
    got = reductions.row_dots(a, b)
    exact = np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))
    bound = _reduction(cols, "float32") * np.einsum("ij,ij->i", np.abs(a).astype(np.float64), np.abs(b))
    assert got.shape == (rows,) and got.dtype == np.float32
    assert np.all(np.abs(got - exact) <= bound), (pieces, np.max(np.abs(got - exact) / bound))
    strided = reductions.row_dots(a[:, ::2], b[:, ::2])  # not contiguous: no split, still right
    exact = np.einsum("ij,ij->i", a[:, ::2].astype(np.float64), b[:, ::2].astype(np.float64))
    assert np.all(np.abs(strided - exact) <= bound)


def _tunables_bound_twice(modules) -> list[str]:
    """Upper-case module settings (TILE_BYTES, THREADS, ...) bound in more than one of `modules`."""
    seen: dict[str, str] = {}
    twice = []
    for module in modules:
        for name in vars(module):
            if name.isupper() and not name.startswith("_"):
                if name in seen:
                    twice.append(f"{name}: {seen[name]} and {module.__name__}")
                seen[name] = module.__name__
    return twice


def test_each_tunable_is_bound_in_one_module_only():
    """Tests and docs/speed/floors.py set tunables on the module that reads them; a second binding (say
    `from .runtime import TILE_BYTES` in batch_norm) would make such a setting silently miss that module."""
    assert not _tunables_bound_twice([runtime, reductions, row_norms, batch_norm])
    import types
    copied = types.ModuleType("copied")
    copied.TILE_BYTES = runtime.TILE_BYTES
    assert _tunables_bound_twice([runtime, copied]) == ["TILE_BYTES: normspec.impls.fast_numpy.runtime and copied"]
