"""Hardening (issue 18): nothing left running, nothing lost, bad options refused up front, honest output.

Each test stands for one promise: a SIGTERM'd validate leaves no process and keeps its partial JSON;
what a candidate starts dies with the run; a chatty candidate's log is capped; the worker's memory
limit is reported as such; a bad output path, timeout or dtype is exit 2 before any work; an
oversized bench shape is refused without allocating; Ctrl-C keeps partial JSON; the working
directory and the temp directory stay clean; a reused output buffer is rejected; `check` prints a
summary that fits 100 columns, JUnit XML, and no warning from the checked code.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bugs import reused_output_backend
from rich.console import Console

import normspec.matrix as matrix
from normspec import guard
from normspec.cli import main
from normspec.properties import PROPERTIES, Verdict, run_property
from normspec.registry import norms

HERE = Path(__file__).parent
HOSTILE = HERE / "candidates" / "hostile.py"
NORMS = HERE / "candidates" / "norms.py"


def clean_env(tmp_path: Path, **extra) -> dict:
    """A child environment whose temp dir and cache are inside tmp_path (so leftovers can be seen)."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
            "NORMSPEC_CACHE_DIR": "", **extra}


def gone(pid: int) -> bool:
    """The process no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_for(predicate, limit: float = 240.0) -> bool:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def spawned_pids(pidfile: Path) -> list[int]:
    if not pidfile.exists():
        return []
    return [int(p) for line in pidfile.read_text().split("\n") if line for p in line.split()]


# ---------------------------------------------------------------- processes

def test_sigterm_ends_validate_with_143_no_process_left_and_partial_json(tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    pidfile = tmp_path / "pids"
    out = tmp_path / "out.json"
    proc = subprocess.Popen([sys.executable, "-m", "normspec.cli", "validate", f"{HOSTILE}:SpawningSleepyLayerNorm",
                             "--json", str(out), "--example-timeout", "500", "--report-dir", str(tmp_path / "rep")],
                            cwd=work, env=clean_env(tmp_path, NORMSPEC_TEST_PIDFILE=str(pidfile)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(spawned_pids(pidfile)) >= 2 or proc.poll() is not None)
        pids = spawned_pids(pidfile)  # the worker and the `sleep 1000` it started
        assert pids, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "interrupted (SIGTERM)" in stderr and "Traceback" not in stderr, stderr
    assert wait_for(lambda: all(gone(p) for p in pids), 30), [p for p in pids if not gone(p)]
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["accepted"] is False
    assert list(work.iterdir()) == []
    assert list((tmp_path / "tmp").iterdir()) == []


def test_what_the_candidate_started_is_ended_with_a_finished_run(tmp_path, monkeypatch):
    from normspec.validate import validate

    pidfile = tmp_path / "pids"
    monkeypatch.setenv("NORMSPEC_TEST_PIDFILE", str(pidfile))
    r = validate(f"{HOSTILE}:SpawningLayerNorm", properties=["forward_matches_spec"])
    assert r.accepted and r.complete
    pids = spawned_pids(pidfile)
    assert len(pids) >= 2
    assert wait_for(lambda: all(gone(p) for p in pids), 30), [p for p in pids if not gone(p)]


# ---------------------------------------------------------------- worker limits

def test_chatty_candidate_log_is_capped_with_a_note(tmp_path):
    from normspec.validate import validate
    from normspec.validate.candidate import OUTPUT_HEAD, OUTPUT_TAIL

    r = validate(f"{HOSTILE}:ChattyLayerNorm", properties=["forward_matches_spec", "deterministic"], keep_temp=True)
    try:
        assert r.accepted
        log = Path(r.scratch) / "candidate-output.log"
        assert r.output_bytes > 10 * (OUTPUT_HEAD + OUTPUT_TAIL)  # 2 MB per call
        assert r.output_dropped == r.output_bytes - OUTPUT_HEAD - OUTPUT_TAIL
        assert log.stat().st_size < OUTPUT_HEAD + OUTPUT_TAIL + 4096
        assert f"{r.output_dropped} bytes of the candidate's output dropped" in log.read_text()
    finally:
        shutil.rmtree(r.scratch, ignore_errors=True)


def test_scratch_directory_removed_unless_kept(tmp_path):
    from normspec.validate import validate

    r = validate("torch.nn:LayerNorm", properties=["forward_matches_spec"])
    assert r.accepted and r.scratch is None


def test_worker_memory_limit_is_reported_as_such():
    from normspec.validate import validate

    r = validate(f"{HOSTILE}:HogLayerNorm", properties=["forward_matches_spec"], memory_limit=2**30)
    assert not r.accepted
    messages = " | ".join(o.verdict.message for o in r.failures)
    assert "memory-limit" in messages and "1.0 GiB" in messages and "--memory-limit" in messages, messages


def test_worker_memory_limit_default_is_below_available_memory():
    limit = guard.default_worker_memory()
    available = guard.available_memory()
    assert guard.WORKER_MEMORY_FLOOR <= limit <= guard.WORKER_MEMORY_CAP
    if available is not None and available >= 2 * guard.WORKER_MEMORY_FLOOR:
        assert limit < available


@pytest.mark.parametrize("text, value", [("4G", 4 * 2**30), ("512M", 512 * 2**20), ("2.5GiB", int(2.5 * 2**30)),
                                         ("none", None), ("auto", "auto")])
def test_memory_size_parses(text, value):
    assert guard.memory_size(text) == value


# ---------------------------------------------------------------- options checked before any work

def no_work(*args, **kwargs):
    raise AssertionError("work started although an option was bad")


@pytest.fixture
def existing_file(tmp_path):
    f = tmp_path / "a-file"
    f.write_text("")
    return f


@pytest.mark.parametrize("command, option", [
    ("validate", ["--json", "/proc/x.json"]),
    ("validate", ["--junit-xml", "{dir}"]),
    ("validate", ["--report-dir", "{file}"]),
    ("validate", ["--dtype", "float128"]),
    ("check", ["--json", "/proc/x.json"]),
    ("check", ["--junit-xml", "{dir}"]),
    ("check", ["--report-dir", "{file}"]),
    ("bench", ["--out", "/proc/xx"]),
    ("bench", ["--out", "{file}"]),
    ("bench", ["--dtype", "float128"]),
])
def test_bad_output_path_or_dtype_is_exit_2_before_any_work(command, option, tmp_path, existing_file, monkeypatch,
                                                             capsys):
    import normspec.bench
    import normspec.validate

    monkeypatch.setattr(normspec.validate, "validate", no_work)
    monkeypatch.setattr(matrix, "run_plan", no_work)
    monkeypatch.setattr(normspec.bench, "run", no_work)
    option = [o.format(dir=tmp_path, file=existing_file) for o in option]
    target = {"validate": ["torch.nn:LayerNorm"], "check": ["--norm", "layer_norm", "--backend", "numpy"],
              "bench": ["--norm", "layer_norm", "--shape", "8x8", "--backend", "numpy"]}[command]
    assert main([command, *target, *option]) == 2
    err = capsys.readouterr().err
    assert option[0] in err or "dtype" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-5", "soon"])
@pytest.mark.parametrize("option", ["--example-timeout", "--run-timeout"])
def test_bad_timeouts_exit_2(option, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["validate", "torch.nn:LayerNorm", option, value])
    assert exc.value.code == 2
    assert "seconds" in capsys.readouterr().err


def test_oversized_bench_shape_refused_with_the_figure_without_allocating(monkeypatch, capsys):
    import normspec.bench
    import normspec.commands.bench as command

    monkeypatch.setattr(command, "available_memory", lambda: 2**28)
    monkeypatch.setattr(normspec.bench, "run", no_work)
    monkeypatch.setattr(normspec.bench, "prepare", no_work)
    assert main(["bench", "--norm", "layer_norm", "--shape", "16384x1024", "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert "16384x1024" in err and "896.0 MiB of memory" in err and "256.0 MiB is available" in err, err


def test_bench_says_at_the_start_that_matplotlib_is_missing(monkeypatch, tmp_path, capsys):
    import importlib.util

    import normspec.bench

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    monkeypatch.setattr(normspec.bench, "run", lambda plan, step, into: into)
    assert main(["bench", "--norm", "layer_norm", "--shape", "8x8", "--backend", "numpy", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "matplotlib is not installed" in out and "pip install" in out
    assert (tmp_path / "bench.csv").exists() and not (tmp_path / "bench.png").exists()


# ---------------------------------------------------------------- interrupts keep results

def test_ctrl_c_during_check_keeps_partial_json(tmp_path, monkeypatch, capsys):
    real = matrix.judge
    calls = []

    def judge(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(matrix, "judge", judge)
    out = tmp_path / "r.json"
    code = main(["check", "--norm", "layer_norm", "--backend", "numpy", "--profile", "dev",
                 "--property", "forward_matches_spec,inputs_unmodified,deterministic,scale_invariance",
                 "--json", str(out), "--hypothesis-db", str(tmp_path / "db")])
    assert code == 130
    data = json.loads(out.read_text())
    assert data["complete"] is False and data["planned"] == 4 and len(data["results"]) == 2
    err = capsys.readouterr().err
    assert "interrupted (SIGINT)" in err and "2 of 4" in err


# ---------------------------------------------------------------- the user's directory stays clean

@pytest.mark.parametrize("argv", [
    ["check", "--norm", "layer_norm", "--backend", "numpy", "--property", "forward_matches_spec", "--profile", "dev"],
    ["validate", "torch.nn:LayerNorm", "--property", "forward_matches_spec", "--profile", "dev"],
])
def test_cwd_and_temp_dir_stay_clean(argv, tmp_path):
    work = tmp_path / "cwd"
    work.mkdir()
    r = subprocess.run([sys.executable, "-m", "normspec.cli", *argv], cwd=work, env=clean_env(tmp_path),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(work.iterdir()) == []  # no .hypothesis/, no report, no log
    assert list((tmp_path / "tmp").iterdir()) == []  # no normspec-validate-* left behind
    assert (tmp_path / "cache" / "normspec" / "hypothesis").is_dir()  # Hypothesis' storage went here
    assert "RuntimeWarning" not in r.stderr and "Traceback" not in r.stderr


def test_hypothesis_database_stores_failures_under_the_chosen_directory(tmp_path, monkeypatch):
    from bugs import buggy_backend

    from normspec.properties import core

    monkeypatch.chdir(tmp_path)
    home = guard.configure_hypothesis(str(tmp_path / "db"))
    try:
        bug = buggy_backend("layer_norm", "eps_outside_sqrt")
        v = run_property(PROPERTIES["forward_matches_spec"], norms()["layer_norm"], bug, "dev")
        assert v.status == "failed"
        assert any((home / "examples").rglob("*")), "no stored failing example"
    finally:
        core.set_example_database(None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


# ---------------------------------------------------------------- aliasing

def test_outputs_not_aliased_rejects_a_reused_output_buffer_and_accepts_real_backends():
    from normspec.impls.base import available_backends

    p, record = PROPERTIES["outputs_not_aliased"], norms()["layer_norm"]
    v = run_property(p, record, reused_output_backend("layer_norm"), "ci")
    assert v.status == "failed" and "shares memory" in v.message, v.message
    v = run_property(p, norms()["batch_norm"], reused_output_backend("batch_norm"), "ci")
    assert v.status == "failed", v.message
    backends, _ = available_backends(["numpy", "torch:cpu", "numpy:fast"])
    for backend in backends.values():
        for name in ("layer_norm", "batch_norm"):
            v = run_property(p, norms()[name], backend, "ci")
            assert v.status == "passed", (backend.name, name, v.message)


def test_validate_rejects_a_candidate_reusing_its_output_buffer():
    from normspec.validate import validate

    bad = validate(f"{NORMS}:LNReusedOutputBuffer", properties=["outputs_not_aliased"])
    assert not bad.accepted and "shares memory" in bad.failures[0].verdict.message
    good = validate(f"{NORMS}:HandLayerNorm", properties=["outputs_not_aliased"])
    assert good.accepted, [o.verdict.message for o in good.failures]


# ---------------------------------------------------------------- check's output

def catalogue_verdicts() -> list[Verdict]:
    """Verdicts shaped like a whole-catalogue run: every norm x 4 backends x every property."""
    out = []
    for i, norm in enumerate(norms()):
        for backend in ("numpy", "numpy:fast", "torch:cpu", "third-party:gpu"):
            for j, name in enumerate(PROPERTIES):
                if backend == "numpy:fast" and i % 3:
                    out.append(Verdict(name, norm, backend, "skipped", reason=f"{backend} does not implement {norm}"))
                    continue
                status = ("passed", "passed", "xfail", "skipped", "failed", "xpass")[(i + j) % 6]
                reason = "does not apply to x" if status == "skipped" else "known upstream deviation"
                out.append(Verdict(name, norm, backend, status, reason=reason, link="https://example.org/1",
                                   message="wrong"))
    return out


@pytest.mark.parametrize("width", [100, 120])
def test_check_summary_fits_100_columns_for_the_whole_catalogue(width):
    from normspec.report import print_details, summary_table

    verdicts = catalogue_verdicts()
    console = Console(width=width, record=True, force_terminal=False)
    console.print(summary_table(verdicts))
    table = console.export_text()
    lines = table.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert "…" not in table  # no name cut
    for norm in norms():
        assert norm in table
    rows = [line for line in lines if line.startswith("│")]
    assert len(rows) == len({(v.norm, v.backend) for v in verdicts if "does not implement" not in v.reason})
    console = Console(width=width, record=True, force_terminal=False)
    print_details(console, verdicts)
    details = console.export_text()
    # each expected-failure reason once, each backend's missing norms folded into one line
    assert details.count("known upstream deviation") == 2  # xfail and xpass groups
    assert len(re.findall(r"numpy:fast does not implement \d+ norm", details)) == 1
    assert "does not implement layer_norm\n" not in details


def test_check_summary_is_readable_at_80_columns():
    from normspec.report import summary_table

    console = Console(width=80, record=True, force_terminal=False)
    console.print(summary_table(catalogue_verdicts()))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "decorrelated_batch_norm" in text.replace("\n", "") or "decorrelated_batch_norm" not in norms()


def test_check_junit_xml_and_matrix_in_json(tmp_path):
    import xml.etree.ElementTree as ET

    out, xml = tmp_path / "r.json", tmp_path / "r.xml"
    r = subprocess.run([sys.executable, "-m", "normspec.cli", "check", "--norm", "layer_norm,batch_renorm",
                        "--backend", "numpy,numpy:fast", "--property", "forward_matches_spec,constant_group_gives_beta",
                        "--profile", "dev", "--json", str(out), "--junit-xml", str(xml)],
                       cwd=tmp_path, env=clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    assert data["complete"] and data["matrix"]["forward_matches_spec"]["layer_norm/numpy"] == "passed"
    assert data["not_implemented"] == {"numpy:fast": ["batch_renorm"]}
    root = ET.fromstring(xml.read_text())
    assert root.tag == "testsuites" and len(root.findall("testsuite")) == 4
    assert "numpy:fast does not implement 1 norm(s)" in r.stdout
    assert "skipped forward_matches_spec" not in r.stdout  # folded, not one line per property
    assert "checking" not in r.stdout  # no progress bar when not on a terminal


def test_absent_backend_said_once_and_no_warning_reaches_the_terminal(monkeypatch, capsys):
    from normspec.impls.base import BackendUnavailable, available_backends

    def with_absent(names=None):
        usable, absent = available_backends(["numpy"])
        return usable, {"torch:cuda": str(BackendUnavailable("CUDA is not available"))}

    monkeypatch.setattr(matrix, "available_backends", with_absent)

    def noisy(*args, **kwargs):
        import numpy as np

        with np.errstate(over="warn"):  # (conftest silences NumPy; the CLI must not rely on that)
            np.float16(60000.0) * np.float16(2.0)  # overflow: a RuntimeWarning raised inside the checked code
        return Verdict("forward_matches_spec", "layer_norm", "numpy", "passed")

    monkeypatch.setattr(matrix, "judge", noisy)
    assert main(["check", "--norm", "layer_norm", "--property", "forward_matches_spec", "--hypothesis-db", "none"]) == 0
    captured = capsys.readouterr()
    assert (captured.out + captured.err).count("torch:cuda") == 1
    assert "RuntimeWarning" not in captured.err and "warning(s) raised inside the checked code" in captured.out


@pytest.mark.parametrize("total", [100, 1020, 5000])
def test_capped_log_keeps_head_and_tail_and_counts_the_rest(total, tmp_path):
    from normspec.validate.candidate import CappedLog

    read_fd, write_fd = os.pipe()
    path = tmp_path / "log"
    log = CappedLog(read_fd, str(path), head=1000, tail=50)
    data = bytes(i % 251 for i in range(total))
    os.write(write_fd, data)
    os.close(write_fd)
    log.close()
    kept = path.read_bytes()
    assert log.total == total and log.dropped == max(0, total - 1050)
    if total <= 1050:
        assert kept == data  # nothing lost below the cap
    else:
        assert kept.startswith(data[:1000]) and kept.endswith(data[-50:])
        assert f"{total - 1050} bytes of the candidate's output dropped".encode() in kept


def test_a_reader_that_leaves_early_gets_no_traceback(monkeypatch):
    """`normspec list | head -1`: the closed pipe ends the command quietly (exit 141), as other Unix tools do."""
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert main(["list", "--markdown"]) == 141


def test_a_property_with_no_example_left_says_why_its_draws_were_discarded():
    """'no example the backend supports (Unsatisfiable)' alone left a newcomer guessing (outside red team): the
    reason names what discarded the draws, e.g. a backend with one memory layout."""
    from normspec.impls.base import available_backends
    from normspec.registry import norms

    class OneLayout(type(available_backends(["numpy"])[0]["numpy"])):
        name, layouts = "one-layout-numpy", ("contiguous",)

    v = run_property(PROPERTIES["layout_consistency"], norms()["layer_norm"], OneLayout(), "dev")
    assert v.status == "skipped" and "discarded because" in v.reason and "layout" in v.reason, v.reason
