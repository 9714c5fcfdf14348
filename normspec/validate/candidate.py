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
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Mapping

import numpy as np
import torch
from hypothesis import reject

from normspec.impls.base import Backend, Kernel

ALL_DTYPES = ("float64", "float32", "float16", "bfloat16")
ALL_LAYOUTS = ("contiguous", "channels_last", "strided", "offset")


class CandidateAbort(BaseException):
    """The candidate crashed the worker, hung past the per-example limit, or the run hit its limit."""

    def __init__(self, kind: str, message: str, call: dict | None = None):
        super().__init__(message)
        self.kind, self.message, self.call = kind, message, call


class CapabilityMissing(BaseException):
    """A property needs something this kind of candidate cannot do (e.g. gradients)."""


class CandidateRaised(Exception):
    """The candidate raised (or broke the drop-in contract); ctx.run reports it as a failure."""


@dataclass
class RemoteArray:
    values: np.ndarray  # float64, exactly the dtype-rounded values
    dtype: str
    layout: str = "contiguous"

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


@dataclass
class Worker:
    """A spawned interpreter holding the candidate (see `normspec.validate.worker`)."""

    target: str
    scratch: str
    cwd: str = field(default_factory=os.getcwd)
    process: Any = None
    conn: Any = None
    starts: int = 0

    @property
    def log_path(self) -> str:
        return os.path.join(self.scratch, "candidate-output.log")

    def start(self) -> None:
        """A fresh interpreter (`python -m normspec.validate.worker`), talking over a socket pair."""
        parent, child = socket.socketpair()
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "normspec.validate.worker", str(child.fileno()), self.target, self.cwd,
                 self.scratch],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.scratch, env=env)
        child.close()
        self.conn = Connection(parent.detach())
        self.starts += 1

    def log_tail(self, n: int = 600) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n))
                return f.read().decode(errors="replace").strip()
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _reap(self) -> int | None:
        try:
            return self.process.wait(5.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            if self.alive():
                try:
                    self.conn.send({"op": "exit"})
                    self.process.wait(2.0)
                except Exception:
                    self.process.kill()
            self._reap()
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.process = None

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
                    code = self._reap()
                    tail = self.log_tail()
                    self.process = None
                    raise CandidateAbort("crashed", f"the candidate crashed the interpreter ({signal_name(code)})"
                                         + (f"; its last output: {tail[-300:]}" if tail else ""), msg)
            if not self.alive():
                continue  # poll again: recv raises EOFError and we report the crash
            if remaining <= 0:
                self.process.kill()
                self._reap()
                self.process = None
                raise CandidateAbort("hung", f"the candidate did not return within {timeout:.0f}s "
                                     "(per-example time limit); it was killed", msg)


class CandidateBackend(Backend):
    """A backend whose one kernel is the candidate, run in a `Worker`."""

    def __init__(self, worker: Worker, norm: str, kind: str, outputs: tuple[str, ...], *, ranks=None,
                 dtypes=ALL_DTYPES, layouts=ALL_LAYOUTS, example_timeout: float = 20.0,
                 deadline: float | None = None, name: str = "candidate"):
        self.worker, self.norm, self.kind, self.outputs = worker, norm, kind, outputs
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

    # -- Backend contract
    @staticmethod
    def _no_direct_call(inputs, params):  # pragma: no cover - forward() is overridden
        raise RuntimeError("CandidateBackend.forward handles calls")

    def _unsupported(self, params: Mapping[str, Any]) -> str | None:
        from normspec.validate.adapters import unsupported

        return unsupported(self.norm, self.kind, dict(params))

    def native(self, array: np.ndarray, dtype: str, layout: str = "contiguous") -> RemoteArray:
        array = np.asarray(array, dtype=np.float64)
        if self.ranks is not None and array.ndim >= 2 and array.ndim not in self.ranks:
            reject()  # e.g. 3-D input for a BatchNorm2d drop-in: outside what this class takes
        return RemoteArray(round_to(array, dtype), dtype, layout if array.ndim >= 1 else "contiguous")

    def to_numpy(self, value: Any) -> np.ndarray:
        if isinstance(value, RemoteArray):
            return value.values.copy()
        return np.array(value, dtype=np.float64, copy=True)

    def forward(self, norm, inputs, params):
        return self._call(norm, inputs, params)["outputs"]

    def gradients(self, norm, inputs, params, dy, wrt):
        return self._call(norm, inputs, params, dy=dy, wrt=wrt)["grads"]

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
               "outputs": self.outputs}
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
        if reply[0] == "unsupported":
            if dy is not None and "backward" in reply[1]:
                raise CapabilityMissing(reply[1])
            raise CandidateRaised(f"cannot express this call: {reply[1]}")
        if reply[0] == "error":
            if self.recording is not None:
                self.recording.append({"msg": msg, "error": f"{reply[1]}: {reply[2]}"})
            raise CandidateRaised(f"the candidate raised {reply[1]}: {reply[2]}")
        result = reply[1]
        for role, values in result["mutated"].items():  # make the candidate's writes visible
            target = dy if role == "dy" else inputs.get(role)
            if target is not None:
                target.values = np.array(values, dtype=np.float64)
        if self.recording is not None:
            self.recording.append({"msg": msg, "result": result})
        wrap = lambda v: RemoteArray(np.asarray(v, dtype=np.float64), inputs["x"].dtype)
        return {"outputs": {k: wrap(v) for k, v in result["outputs"].items()},
                "grads": {k: wrap(v) for k, v in result["grads"].items()},
                "mutated": result["mutated"]}

    def steps(self, inputs, params, steps, eval_x):
        """Several training steps on one module instance, then eval (see `execute_steps`)."""
        if self.kind != "module":
            raise CapabilityMissing("training steps on one instance need a torch.nn.Module drop-in")
        msg = {"op": "steps", "norm": self.norm, "inputs": {r: a.wire() for r, a in inputs.items()},
               "params": dict(params), "steps": list(steps), "eval_x": eval_x}
        reply = self.worker.request(msg, self.timeout() * (len(steps) + 1))
        if reply[0] != "ok":
            raise CandidateRaised(f"the candidate raised {reply[1]}: {reply[2] if len(reply) > 2 else ''}")
        return reply[1]


def scratch_dir(parent: str | None = None) -> str:
    return tempfile.mkdtemp(prefix="normspec-validate-", dir=parent)
