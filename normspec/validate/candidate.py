"""The candidate as a normspec backend: a proxy that runs every call in a worker process.

`CandidateBackend` is an ordinary `normspec.impls.base.Backend`, so the candidate goes through
the same properties, strategies and tolerance model as the built-in backends. Its native arrays
are `RemoteArray`s (float64 values + dtype + layout) that the worker turns into real tensors;
writes the candidate makes into its inputs come back and are applied to them, so the hygiene
properties see them. A crash or a hang ends the property at once (`CandidateAbort`, a
BaseException that Hypothesis does not shrink: each try would cost a fresh interpreter).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Mapping

import numpy as np
import torch
from hypothesis import reject

from normspec.guard import human_bytes
from normspec.impls.base import Backend, Kernel
from normspec.library import tolerance
from normspec.validate.adapters import compile_shapes

ALL_DTYPES = ("float64", "float32", "float16", "bfloat16")
ALL_LAYOUTS = ("contiguous", "channels_last", "strided", "offset")
# Properties whose forward half stands alone: a forward-only candidate runs them without gradients.
FORWARD_HALVES = ("scale_invariance", "deterministic", "inputs_unmodified")


class CandidateAbort(BaseException):
    """The candidate crashed the worker, hung past the per-example limit, or the run hit its limit."""

    def __init__(self, kind: str, message: str, call: dict | None = None):
        super().__init__(message)
        self.kind, self.message, self.call = kind, message, call


class CapabilityMissing(BaseException):
    """A property needs something this kind of candidate cannot do (e.g. gradients)."""


class CandidateRaised(Exception):
    """The candidate raised (or broke the drop-in contract); ctx.run reports it as a failure."""


@dataclass(eq=False)
class RemoteArray:
    values: np.ndarray  # float64, exactly the dtype-rounded values
    dtype: str
    layout: str = "contiguous"
    shares_with: list = field(default_factory=list)  # earlier RemoteArrays whose memory the worker's array shares

    @property
    def shape(self):
        return self.values.shape

    @property
    def ndim(self):
        return self.values.ndim

    def wire(self):
        return (self.values, self.dtype, self.layout)


def round_to(values: np.ndarray, dtype: str) -> np.ndarray:
    """values rounded to dtype and back to float64, as the worker's tensors hold them."""
    t = torch.from_numpy(np.array(values, dtype=np.float64, copy=True))
    return t.to(getattr(torch, dtype)).to(torch.float64).numpy().copy()


def signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except (ValueError, TypeError):
        return f"exit status {code}"


OUTPUT_HEAD = 1 << 20  # bytes of the candidate's output kept from the start...
OUTPUT_TAIL = 64 << 10  # ...and from the end; what lies between is counted and dropped


class CappedLog:
    """The candidate's stdout/stderr, read from a pipe by a thread: the first `head` bytes go to
    `path`, the last `tail` bytes are kept in memory, the rest is only counted. `close()` appends the
    tail after a line saying how much was dropped, so a chatty candidate cannot fill the disk."""

    def __init__(self, fd: int, path: str, head: int = OUTPUT_HEAD, tail: int = OUTPUT_TAIL):
        self.fd, self.path, self.head, self.tail_size = fd, path, head, tail
        self.total = 0
        self._tail = bytearray()
        self._file = open(path, "ab")
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, name="normspec-candidate-output", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            with self._lock:
                room = max(0, self.head - self.total)
                if room and self._file is not None:
                    self._file.write(chunk[:room])
                    self._file.flush()
                self.total += len(chunk)
                self._tail += chunk[room:]
                excess = len(self._tail) - self.tail_size
                if excess > 0:
                    del self._tail[:excess]

    @property
    def dropped(self) -> int:
        return max(0, self.total - self.head - len(self._tail))

    def tail_text(self, n: int = 600) -> str:
        with self._lock:
            kept = bytes(self._tail)
        if len(kept) < n:
            try:
                with open(self.path, "rb") as f:
                    f.seek(0, 2)
                    f.seek(max(0, f.tell() - (n - len(kept))))
                    kept = f.read() + kept
            except OSError:
                pass
        return kept[-n:].decode(errors="replace").strip()

    def close(self) -> None:
        self._thread.join(timeout=2.0)
        with self._lock:
            if self._file is None:
                return
            if self.total > self.head:
                if self.dropped:
                    self._file.write(f"\n[normspec: {self.dropped} bytes of the candidate's output dropped here; "
                                     f"the first {self.head} and the last {len(self._tail)} are kept]\n".encode())
                self._file.write(bytes(self._tail))
            self._file.close()
            self._file = None
            try:
                os.close(self.fd)
            except OSError:
                pass


@dataclass
class Worker:
    """A spawned interpreter holding the candidate (see `normspec.validate.worker`), leading its own
    session, so that killing its process group ends whatever the candidate started too."""

    target: str
    scratch: str
    cwd: str = field(default_factory=os.getcwd)
    memory_limit: int | None = None
    process: Any = None
    conn: Any = None
    starts: int = 0
    logs: list = field(default_factory=list)
    # run the candidate under torch.compile (`normspec validate --compile`): False, True/"dynamic" or "static"
    compile: bool | str = False

    @property
    def log_path(self) -> str:
        return os.path.join(self.scratch, "candidate-output.log")

    def start(self) -> None:
        """A fresh interpreter (`python -m normspec.validate.worker`), talking over a socket pair."""
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
               "NORMSPEC_VALIDATE_COMPILE": compile_shapes(self.compile) or "0"}
        if self.memory_limit:
            env["NORMSPEC_WORKER_MEMORY"] = str(int(self.memory_limit))
        read_fd, write_fd = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "normspec.validate.worker", str(child.fileno()), self.target, self.cwd,
                 self.scratch],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=write_fd, stderr=write_fd,
                cwd=self.scratch, env=env, start_new_session=True)
        finally:
            os.close(write_fd)
            child.close()
        try:  # restarts share one budget: the log never holds more than OUTPUT_HEAD from the starts
            written = os.path.getsize(self.log_path)
        except OSError:
            written = 0
        self.logs.append(CappedLog(read_fd, self.log_path, head=max(0, OUTPUT_HEAD - written),
                                   tail=OUTPUT_TAIL if written < 2 * OUTPUT_HEAD else 0))
        self.conn = Connection(parent.detach())
        self.starts += 1

    @property
    def output_bytes(self) -> int:
        return sum(log.total for log in self.logs)

    @property
    def output_dropped(self) -> int:
        return sum(log.dropped for log in self.logs)

    def log_tail(self, n: int = 600) -> str:
        return self.logs[-1].tail_text(n) if self.logs else ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the worker's process group: the worker and everything the candidate started in it."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _reap(self) -> int | None:
        try:
            return self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return self.process.wait()

    def stop(self, graceful: bool = True) -> None:
        """End the worker (asked to exit first when `graceful`), then its whole process group."""
        if self.process is not None:
            if self.alive() and graceful:
                try:
                    self.conn.send({"op": "exit"})
                    self.process.wait(2.0)
                except Exception:
                    pass
            self.kill_group()
            self._reap()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        for log in self.logs:
            log.close()
        self.process = None

    def _abandon(self) -> int | None:
        """Kill a worker that crashed or hung (and what it started); its exit status."""
        self.kill_group()
        code = self._reap()
        self.process = None
        return code

    def request(self, msg: dict, timeout: float) -> tuple:
        """Send one request and wait for its reply; CandidateAbort on a crash or a timeout."""
        if not self.alive():
            self.stop()
            self.start()
            if msg.get("op") != "describe":
                reply = self.request({"op": "describe"}, timeout=max(timeout, 60.0))
                if reply[0] != "ok":
                    raise CandidateAbort("crashed", f"restarting the candidate failed: {reply}")
        try:
            self.conn.send(msg)
        except (BrokenPipeError, OSError):
            pass
        start = time.monotonic()
        while True:
            remaining = timeout - (time.monotonic() - start)
            try:
                ready = self.conn.poll(max(0.0, min(remaining, 0.5)))
            except (EOFError, OSError):
                ready = True
            if ready:
                try:
                    return self.conn.recv()
                except (EOFError, OSError):
                    code = self._abandon()
                    tail = self.log_tail()
                    if self.memory_limit and any(m in tail for m in ("MemoryError", "bad_alloc", "allocate memory")):
                        raise CandidateAbort("memory-limit", f"the candidate ran out of the worker's memory limit of "
                                             f"{human_bytes(self.memory_limit)} and the interpreter died "
                                             f"({signal_name(code)}); raise it with --memory-limit", msg)
                    raise CandidateAbort("crashed", f"the candidate crashed the interpreter ({signal_name(code)})"
                                         + (f"; its last output: {tail[-300:]}" if tail else ""), msg)
            if not self.alive():
                continue  # poll again: recv raises EOFError and we report the crash
            if remaining <= 0:
                self._abandon()
                raise CandidateAbort("hung", f"the candidate did not return within {timeout:.0f}s "
                                     "(per-example time limit); it was killed", msg)


def memory_abort(worker: Worker, reply: tuple, msg: dict | None = None) -> CandidateAbort:
    limit = human_bytes(worker.memory_limit) if worker.memory_limit else "(none set)"
    return CandidateAbort("memory-limit", f"the candidate exceeded the worker's memory limit of {limit} "
                          f"({reply[1]}: {reply[2][:200]}); raise it with --memory-limit", msg)


class CandidateBackend(Backend):
    """A backend whose one kernel is the candidate, run in a `Worker`."""

    def __init__(self, worker: Worker, norm: str, kind: str, outputs: tuple[str, ...], *, ranks=None,
                 dtypes=ALL_DTYPES, layouts=ALL_LAYOUTS, example_timeout: float = 20.0,
                 deadline: float | None = None, name: str = "candidate", contract: dict | None = None,
                 forward_only: bool = False):
        self.worker, self.norm, self.kind, self.outputs = worker, norm, kind, outputs
        self.contract = contract  # the declared contract, as sent to the worker with every call
        self.forward_only = forward_only
        self.current_property: str | None = None
        self.forward_halves_only = False  # set when a property ran without its gradient half
        self.ranks = ranks
        self.name = name
        self.dtypes = tuple(dtypes)
        self.layouts = tuple(layouts)
        self.extra_layouts = ("expanded",)
        self.example_timeout = example_timeout
        self.deadline = deadline
        self.kernels = {norm: Kernel(forward=self._no_direct_call, unsupported=self._unsupported)}
        self.recording: list[dict] | None = None  # when a list, every call and its result is appended
        self.calls = 0
        self.previous: dict[str, RemoteArray] = {}  # the last call's outputs, updated if the worker saw them change

    # -- Backend contract
    @staticmethod
    def _no_direct_call(inputs, params):  # pragma: no cover - forward() is overridden
        raise RuntimeError("CandidateBackend.forward handles calls")

    def _unsupported(self, params: Mapping[str, Any]) -> str | None:
        from normspec.validate.adapters import unsupported

        return unsupported(self.norm, self.kind, dict(params), self.contract)

    def native(self, array: np.ndarray, dtype: str, layout: str = "contiguous") -> RemoteArray:
        array = np.asarray(array, dtype=np.float64)
        if self.ranks is not None and array.ndim >= 2 and array.ndim not in self.ranks:
            reject()  # e.g. 3-D input for a BatchNorm2d drop-in: outside what this class takes
        values = round_to(array, dtype)
        if dtype == "float64" and tolerance.compute_dtype("float64") == "float32":  # declared, or a diagnosis re-run
            # a layer that computes in float32 rounds its float64 inputs first: the values it is given (and the
            # spec is evaluated on) are float32's, so the input rounding is not judged as its error. Judged on the
            # unrounded inputs, |mean|/std past 1/u32 left any float32 LayerNorm far outside the first-order model
            # (timm's LayerNormFp32 rejected on reach draws; outside red team)
            values = round_to(values, "float32")
            if not np.all(np.isfinite(values) | ~np.isfinite(array)):
                reject()  # past float32's range: outside what a float32-compute layer can take
        return RemoteArray(values, dtype, layout if array.ndim >= 1 else "contiguous")

    def to_numpy(self, value: Any) -> np.ndarray:
        if isinstance(value, RemoteArray):
            return value.values.copy()
        return np.array(value, dtype=np.float64, copy=True)

    def forward(self, norm, inputs, params):
        return self._call(norm, inputs, params)["outputs"]

    def shares_memory(self, a, b) -> bool:
        """As the worker saw it: the candidate returned overlapping arrays in two calls."""
        return any(x is a for x in getattr(b, "shares_with", ())) or any(x is b for x in getattr(a, "shares_with", ()))

    def gradients(self, norm, inputs, params, dy, wrt):
        """Gradients from the candidate; for a forward-only one, none (properties in FORWARD_HALVES
        then check their forward half) or CapabilityMissing (gradient properties: not applicable)."""
        if self.forward_only:
            if self.current_property in FORWARD_HALVES:
                self.forward_halves_only = True
                return {}
            raise CapabilityMissing("forward only (declared in the contract)")
        try:
            return self._call(norm, inputs, params, dy=dy, wrt=wrt)["grads"]
        except CapabilityMissing:
            if self.current_property in FORWARD_HALVES:
                self.forward_halves_only = True
                return {}
            raise

    # -- the worker round trip
    def timeout(self) -> float:
        if self.deadline is None:
            return self.example_timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CandidateAbort("run-limit", "the whole-run time limit was reached")
        return min(self.example_timeout, left)

    def _call(self, norm, inputs, params, dy=None, wrt=()):
        wire = {r: a.wire() for r, a in inputs.items() if a is not None}
        msg = {"op": "call", "kind": self.kind, "norm": norm, "inputs": wire, "params": dict(params),
               "outputs": self.outputs, "contract": self.contract}
        if dy is not None:
            msg["dy"], msg["wrt"] = dy.wire(), tuple(wrt)
        timeout = self.timeout()
        try:
            reply = self.worker.request(msg, timeout)
        except CandidateAbort as abort:
            if abort.kind == "hung" and self.deadline is not None and timeout < self.example_timeout:
                abort.kind, abort.message = "run-limit", "the whole-run time limit was reached during a call"
            raise
        self.calls += 1
        if reply[0] == "memory":
            raise memory_abort(self.worker, reply, msg)
        if reply[0] == "unsupported":
            if dy is not None and "backward" in reply[1]:
                raise CapabilityMissing(reply[1])
            raise CandidateRaised(f"cannot express this call: {reply[1]}")
        if reply[0] == "error":
            if self.recording is not None:
                self.recording.append({"msg": msg, "error": f"{reply[1]}: {reply[2]}"})
            raise CandidateRaised(f"the candidate raised {reply[1]}: {reply[2]}")
        result = reply[1]
        received = self.received(msg, result, inputs, dy)
        outputs = received["outputs"]
        previous = result.get("previous", {})
        for name, now in previous.get("changed", {}).items():  # the second call wrote into the first's result
            if name in self.previous:
                self.previous[name].values = np.asarray(now, dtype=np.float64)
        for new_name, old_name in previous.get("shared", []):
            if new_name in outputs and old_name in self.previous:
                outputs[new_name].shares_with.append(self.previous[old_name])
        self.previous = dict(outputs)
        return received

    def received(self, msg, result, inputs, dy) -> dict:
        """A call's result as the engine reads it: the candidate's writes to its inputs made
        visible, the call recorded, outputs and gradients wrapped in the input's dtype."""
        for role, values in result["mutated"].items():
            target = dy if role == "dy" else inputs.get(role)
            if target is not None:
                target.values = np.array(values, dtype=np.float64)
        if self.recording is not None:
            self.recording.append({"msg": msg, "result": result})

        def wrap(v):
            return RemoteArray(np.asarray(v, dtype=np.float64), inputs["x"].dtype)

        return {"outputs": {k: wrap(v) for k, v in result["outputs"].items()},
                "grads": {k: wrap(v) for k, v in result["grads"].items()}, "mutated": result["mutated"]}

    def steps(self, inputs, params, steps, eval_x):
        """Several training steps on one module instance, then eval (see `execute_steps`)."""
        if self.kind != "module":
            raise CapabilityMissing("training steps on one instance need a torch.nn.Module drop-in")
        msg = {"op": "steps", "norm": self.norm, "inputs": {r: a.wire() for r, a in inputs.items()},
               "params": dict(params), "steps": list(steps), "eval_x": eval_x, "contract": self.contract}
        reply = self.worker.request(msg, self.timeout() * (len(steps) + 1))
        if reply[0] == "memory":
            raise memory_abort(self.worker, reply, msg)
        if reply[0] != "ok":
            raise CandidateRaised(f"the candidate raised {reply[1]}: {reply[2] if len(reply) > 2 else ''}")
        return reply[1]


def scratch_dir(parent: str | None = None) -> str:
    return tempfile.mkdtemp(prefix="normspec-validate-", dir=parent)
