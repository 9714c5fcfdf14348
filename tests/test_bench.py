"""`normspec bench`, the byte models and the asv suite: they run, and they count what they claim.

No speed figure is asserted here: timings belong to benchmarks, not to unit tests.
"""
from __future__ import annotations

import csv
import importlib.util
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from normspec import bench
from normspec.cli import main
from normspec.impls.base import available_backends
from normspec.registry import NormRecord, get_norm, norms

ROOT = Path(__file__).resolve().parents[1]


def _numpy():
    return available_backends(["numpy"])[0]["numpy"]


def test_bench_runs_on_tiny_sizes_and_writes_csv_and_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    rc = main(["bench", "--norm", "layer_norm,batch_norm", "--backend", "numpy,numpy:fast", "--shape", "8x16",
               "--shape", "2x4x4x4", "--repeats", "2", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "GB/s" in out and "% copy" in out
    rows = list(csv.DictReader((tmp_path / "bench.csv").open()))
    assert len(rows) == 2 * 2 * 2 * 2  # norms x shapes x passes x backends
    assert set(bench.CSV_FIELDS) <= set(rows[0])
    timed = [r for r in rows if not r["skipped"]]
    assert timed, rows
    for r in timed:
        assert float(r["median_s"]) > 0 and float(r["gbps"]) > 0 and float(r["pct_copy"]) > 0
        assert float(r["ratio_to_fastest"]) >= 1.0
    # per (norm, shape, dtype, pass) group exactly one backend is the fastest
    groups = {}
    for r in timed:
        groups.setdefault((r["norm"], r["shape"], r["dtype"], r["pass"]), []).append(float(r["ratio_to_fastest"]))
    assert all(min(v) == 1.0 for v in groups.values())
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_reports_unsupported_combinations_as_skipped(tmp_path):
    pytest.importorskip("matplotlib")
    plan = bench.Plan([get_norm("layer_norm")], [_numpy()], [("2x3", (2, 3))], ["bfloat16"], ["forward"], repeats=1)
    (result,) = bench.run(plan)
    assert result.skipped and "bfloat16" in result.skipped
    bench.write_csv([result], tmp_path / "b.csv")
    bench.plot([result], tmp_path / "b.png")


def test_bench_usage_errors_exit_2(tmp_path, capsys):
    assert main(["bench", "--norm", "no_such_norm", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--shape", "12", "--out", str(tmp_path)]) == 2
    assert main(["bench", "--pass", "sideways", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no_such_norm" in err and "12" in err and "sideways" in err


def test_byte_model_layer_norm_known_case():
    """(4, 8) float32 with gamma and beta: forward reads x (32) + gamma (8) + beta (8), writes y (32);
    the gradient call reads x, gamma, beta, dy (32) and writes dx, dgamma, dbeta (48)."""
    p = bench.prepare(get_norm("layer_norm"), _numpy(), (4, 8), "float32", "forward")
    assert p.bytes == 4 * (32 + 8 + 8 + 32)
    p = bench.prepare(get_norm("layer_norm"), _numpy(), (4, 8), "float32", "forward+backward")
    assert p.bytes == 4 * (48 + 32 + 48)
    assert p.input_bytes == 4 * 32


def test_byte_model_batch_norm_known_case():
    """(2, 3, 4, 4) float16 in training: reads x (96), gamma, beta, running mean and var (12),
    writes y (96) and the two updated running statistics (6)."""
    p = bench.prepare(get_norm("batch_norm"), _numpy(), (2, 3, 4, 4), "float16", "forward")
    assert p.bytes == 2 * (96 + 12 + 96 + 6)


def test_byte_model_rms_norm_known_case():
    """(16, 64) float64 with gamma: reads x (1024) and gamma (64), writes y (1024)."""
    p = bench.prepare(get_norm("rms_norm"), _numpy(), (16, 64), "float64", "forward")
    assert p.bytes == 8 * (1024 + 64 + 1024)


def test_missing_bench_case_is_not_implemented():
    from dataclasses import replace

    record = replace(get_norm("layer_norm"), bench_case=None)
    with pytest.raises(NotImplementedError, match="bench_case"):
        bench.prepare(record, _numpy(), (4, 8), "float32", "forward")
    none_for_shape = replace(get_norm("layer_norm"), bench_case=lambda shape, rng: None)
    with pytest.raises(NotImplementedError, match="shape"):
        bench.prepare(none_for_shape, _numpy(), (4, 8), "float32", "forward")


BYTE_SHAPES = ((4, 8), (2, 64, 2, 2))  # a tokens-like and a CNN-like shape (GroupNorm needs C % 32 == 0)


def _independent_byte_count(record: NormRecord, case, itemsize: int, pass_: str) -> int:
    """The minimum traffic counted from the arrays themselves, not from bench.py: a forward call
    reads every input array of the case once and writes every output the float64 spec produces
    (y and any updated state) once; forward+backward reads the inputs and dy (shaped like y) and
    writes one gradient per differentiable input the case has."""
    read = sum(np.asarray(a).size for a in case.arrays.values())
    outputs = record.reference(case)
    if pass_ == "forward":
        return itemsize * (read + sum(np.asarray(v).size for v in outputs.values()))
    grads = sum(case.arrays[r].size for r in record.differentiable if r in case.arrays)
    return itemsize * (read + np.asarray(outputs["y"]).size + grads)


@pytest.mark.parametrize("name", sorted(norms()))
def test_every_registered_norm_byte_model_matches_an_independent_count(name):
    """For each registered norm, on the first shape its bench_case accepts: `prepare`'s byte count
    (BYTE_MODELS or the default, fed by the backend's outputs) equals the count from the case's
    arrays and the spec's outputs, in both passes and two dtypes; forward is at least 2|x|."""
    record = get_norm(name)
    assert isinstance(record, NormRecord) and record.bench_case is not None, f"{name} has no bench_case"
    backends = available_backends(["numpy", "torch:cpu"])[0]
    shape = next((s for s in BYTE_SHAPES if record.bench_case(s, np.random.default_rng(0)) is not None), None)
    assert shape is not None, f"{name}: bench_case accepts none of {BYTE_SHAPES}"
    case = bench.bench_case(record, shape)
    for dtype in ("float32", "float64"):
        itemsize = np.dtype(dtype).itemsize
        for pass_ in bench.PASSES:
            backend = next(b for b in backends.values() if not b.unsupported(name, case.params, dtype, "contiguous"))
            p = bench.prepare(record, backend, shape, dtype, pass_)
            expected = _independent_byte_count(record, case, itemsize, pass_)
            assert p.bytes == expected, f"{name} {pass_} {dtype} on {backend.name}: model {p.bytes}, counted {expected}"
            assert p.input_bytes == case.x.size * itemsize
            if pass_ == "forward":
                assert p.bytes >= 2 * p.input_bytes, f"{name}: a forward call moves less than 2|x|"


def test_parse_shape_and_statistics():
    assert bench.parse_shape("tokens-64MB") == ("tokens-64MB", (16384, 1024))
    assert bench.parse_shape("2x3x4") == ("2x3x4", (2, 3, 4))
    for bad in ("7", "0x3", "axb"):
        with pytest.raises(ValueError, match="shape"):
            bench.parse_shape(bad)
    assert bench.median_iqr([1.0, 2.0, 3.0, 4.0, 100.0]) == (3.0, 2.0)
    samples = bench.time_call(lambda: None, repeats=3, min_sample_s=0.001)
    assert len(samples) == 3 and all(s > 0 for s in samples)
    assert bench.copy_gbps(1 << 16, 1e-3) == pytest.approx(2 * (1 << 16) / 1e-3 / 1e9)


def test_paired_timing_alternates_the_yardstick_with_the_call():
    order = []
    samples, ref = bench.time_paired(lambda: order.append("call"), lambda: order.append("copy"),
                                     repeats=3, min_sample_s=0.0)
    assert len(samples) == len(ref) == 3 and all(s > 0 for s in samples + ref)
    timed = order[2:]  # after one calibration call of each
    assert timed == ["copy", "call"] * 3


def test_bench_rows_take_their_copy_bandwidth_from_their_own_samples(monkeypatch):
    """pct_copy is gbps over the copy samples taken alongside that very measurement."""
    seen = []
    paired = bench.time_paired

    def spy(*args, **kwargs):
        samples, ref = paired(*args, **kwargs)
        seen.append(ref)
        return samples, ref

    monkeypatch.setattr(bench, "time_paired", spy)
    plan = bench.Plan([get_norm("layer_norm")], [_numpy()], [("64x64", (64, 64))], ["float32"], ["forward"],
                      repeats=3, min_sample_s=0.0)
    (result,) = bench.run(plan)
    assert len(seen) == 1
    expected = bench.copy_gbps(result.input_bytes, bench.median_iqr(seen[0])[0])
    assert result.copy_gbps == pytest.approx(expected)
    assert result.pct_copy == pytest.approx(100 * result.gbps / expected)


def test_steal_time_is_measured_and_a_contended_run_is_flagged():
    assert bench.steal_pct((10, 1000), (30, 1200)) == pytest.approx(10.0)
    assert math.isnan(bench.steal_pct((10, 1000), (11, 1003)))  # too short a window to judge
    assert math.isnan(bench.steal_pct(None, (30, 1200)))
    if Path("/proc/stat").exists():
        steal, total = bench.cpu_times()
        assert 0 <= steal <= total
    quiet = bench.Result("layer_norm", "forward", "numpy", "float32", "8x8", "8x8", 256, 512, steal_pct=1.0)
    busy = bench.Result("layer_norm", "forward", "torch:cpu", "float32", "8x8", "8x8", 256, 512, steal_pct=30.0)
    assert bench.contention_warning([quiet]) is None
    warning = bench.contention_warning([quiet, busy])
    assert "1 of 2 measurements" in warning and "30%" in warning


def test_asv_suite_covers_the_registry():
    import sys

    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import bench_norms, common
    finally:
        sys.path.remove(str(ROOT))
    assert set(common.NORMS) == set(norms())
    assert "torch:cuda" in common.BACKENDS and "numpy:fast" in common.BACKENDS
    assert bench_norms.Roofline.params[2] == common.LARGE_SHAPES
    for shape in common.SMALL_SHAPES + common.MEDIUM_SHAPES + common.LARGE_SHAPES:
        bench.parse_shape(shape)


@pytest.mark.skipif(importlib.util.find_spec("asv") is None or shutil.which("asv") is None,
                    reason="asv is not installed (pip install -e '.[bench]')")
def test_asv_check_passes():
    done = subprocess.run(["asv", "check", "--python=same"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No problems found" in done.stdout


def test_param_overrides_the_benchmark_case_and_is_recorded(tmp_path, capsys):
    """--param training=false times BatchNorm's inference call: the running statistics are read, not updated,
    and the CSV says which case was timed."""
    assert bench.parse_param("training=false") == ("training", False)
    assert bench.parse_param("eps=1e-3") == ("eps", 1e-3) and bench.parse_param("momentum=none") == ("momentum", None)
    record, numpy = get_norm("batch_norm"), _numpy()
    p = bench.prepare(record, numpy, (2, 3, 4, 4), "float64", "forward", params={"training": False}, warmup=False)
    case = bench.bench_case(record, (2, 3, 4, 4), params={"training": False})
    w, b = (case.get(k).reshape(1, 3, 1, 1) for k in ("weight", "bias"))
    eval_y = case.x / np.sqrt(1 + 1e-5) * w + b  # the case's running statistics are 0 and 1
    np.testing.assert_allclose(numpy.to_numpy(p.call()["y"]), eval_y, rtol=1e-12)
    trained = bench.prepare(record, numpy, (2, 3, 4, 4), "float64", "forward", warmup=False).call()
    assert not np.allclose(numpy.to_numpy(trained["y"]), eval_y)  # the record's own case normalizes by the batch
    rc = main(["bench", "--norm", "batch_norm", "--backend", "numpy", "--shape", "2x3x4x4", "--pass", "forward",
               "--param", "training=false", "--repeats", "1", "--out", str(tmp_path), "--quiet"])
    assert rc == 0 and "training=False" in capsys.readouterr().out
    (row,) = csv.DictReader((tmp_path / "bench.csv").open())
    assert row["params"] == "training=False"


@pytest.mark.parametrize("args,message", [
    (["--norm", "batch_norm,layer_norm", "--param", "training=false"], "not a parameter of layer_norm's"),
    (["--norm", "batch_norm", "--param", "training"], "expected KEY=VALUE"),
])
def test_param_errors_name_what_was_wrong(tmp_path, capsys, args, message):
    assert main(["bench", *args, "--shape", "2x3x4x4", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_forward_only_backend_is_skipped_for_gradients_saying_so():
    class ForwardOnly(type(_numpy())):
        name, differentiates = "forward-only-numpy", False

    with pytest.raises(bench.Unsupported, match="forward-only"):
        bench.prepare(get_norm("layer_norm"), ForwardOnly(), (4, 8), "float32", "forward+backward")
