"""A persistent pool of k `torch.distributed` processes (gloo backend) on this machine.

Starting a process that imports torch costs seconds, so each world size k gets one pool, started
lazily on first use and torn down at interpreter exit. Workers are forked from a forkserver that
has imported torch once (no OpenMP state is inherited from the caller), join one process group
through a `file://` rendezvous in a fresh temporary directory, and then serve jobs: the caller
sends each rank its payload through a pipe, every rank runs the same task (a "module:function"
name, so collectives inside it match up) and pipes its result back.

Failure is never a hang: the caller waits on the replies and on the workers' process sentinels
with a deadline; a worker that dies, raises inside a task, or says nothing before the deadline
gets the whole pool killed (ranks stuck in a collective with it are unrecoverable) and a
`DistributedWorkerError` naming the rank and what happened. The next call starts a fresh pool.
Collectives inside the workers also carry the process group's timeout.
"""
from __future__ import annotations

import atexit
import importlib
import io
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import time
import traceback
import types
from contextlib import contextmanager
from datetime import timedelta
from multiprocessing.connection import wait
from typing import Any

JOB_TIMEOUT_S = float(os.environ.get("NORMSPEC_DIST_TIMEOUT", "60"))
START_TIMEOUT_S = float(os.environ.get("NORMSPEC_DIST_START_TIMEOUT", "180"))


class DistributedWorkerError(RuntimeError):
    """A rank of the pool died, raised, or did not answer in time; the pool has been torn down."""


# ---------------------------------------------------------------- messages

def _rebuild_tensor(dtype: str, shape, stride, offset: int, raw: bytes):
    import torch

    base = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    return base.view(getattr(torch, dtype)).as_strided(shape, stride, offset)


class _MessagePickler(pickle.Pickler):
    """Pickles CPU tensors as their raw storage bytes plus (dtype, shape, strides, offset): ~50x faster
    than torch's own tensor pickling for small tensors, any dtype (bfloat16 included), and the memory
    layout (channels-last, strided views) arrives intact. Autograd history is never sent."""

    def reducer_override(self, obj):
        import torch

        if isinstance(obj, torch.Tensor) and obj.device.type == "cpu" and obj.layout == torch.strided:
            t = obj.detach().resolve_conj().resolve_neg()
            raw = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy().tobytes()
            return _rebuild_tensor, (str(t.dtype).removeprefix("torch."), tuple(t.shape), t.stride(),
                                     t.storage_offset(), raw)
        return NotImplemented


def _dumps(obj) -> bytes:
    buffer = io.BytesIO()
    _MessagePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


# ---------------------------------------------------------------- worker side

def _reply(conn, status: str, value: Any) -> None:
    conn.send_bytes(_dumps((status, value)))


def _resolve(task: str):
    module, _, name = task.partition(":")
    return getattr(importlib.import_module(module), name)


def _worker_main(rank: int, world_size: int, init_method: str, conn, timeout_s: float) -> None:
    """Join the gloo group, then run (task, payload) jobs until told to stop or the caller goes away."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only: every rank is on this machine
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # k ranks share the machine's cores
    try:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                                timeout=timedelta(seconds=timeout_s))
    except BaseException as exc:
        _reply(conn, "error", (f"init_process_group failed: {type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    _reply(conn, "ok", os.getpid())
    try:
        while True:
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):  # the caller exited or closed the pipe
                break
            task, payload = pickle.loads(message)
            if task == "stop":
                break
            try:
                _reply(conn, "ok", _resolve(task)(payload))
            except BaseException as exc:
                _reply(conn, "error", (f"{type(exc).__name__}: {exc}", traceback.format_exc()))
    finally:
        try:
            dist.destroy_process_group()
        except Exception:
            pass


# ---------------------------------------------------------------- caller side

def _context():
    ctx = multiprocessing.get_context("forkserver")
    # Imported once in the server, inherited by every worker (effective only before the server starts).
    # torch's first autograd backward imports symbolic_shapes (and sympy): ~2 s per process otherwise.
    ctx.set_forkserver_preload([__name__, "torch.distributed", "torch.fx.experimental.symbolic_shapes"])
    return ctx


@contextmanager
def _without_main_module():
    """Hide the caller's __main__ while starting workers: multiprocessing would otherwise re-run the
    caller's script (or fail on `python -` / notebooks) in each worker; workers need only this module."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


class RankPool:
    """k ranks of one gloo process group, serving jobs until `close`."""

    def __init__(self, world_size: int, *, timeout_s: float = JOB_TIMEOUT_S, start_timeout_s: float = START_TIMEOUT_S):
        if world_size < 1:
            raise ValueError(f"a rank pool needs at least one rank, got world_size={world_size}")
        self.world_size = world_size
        self.timeout_s = timeout_s
        self.owner_pid = os.getpid()
        self.closed = False
        self._dir = tempfile.mkdtemp(prefix="normspec-gloo-")
        init_method = "file://" + os.path.join(self._dir, "rendezvous")
        ctx = _context()
        self.processes, self._conns = [], []
        try:
            for rank in range(world_size):
                parent_end, child_end = ctx.Pipe()
                p = ctx.Process(target=_worker_main, args=(rank, world_size, init_method, child_end, timeout_s),
                                name=f"normspec-gloo-{world_size}-rank{rank}", daemon=True)
                with _without_main_module():
                    p.start()
                child_end.close()
                self.processes.append(p)
                self._conns.append(parent_end)
            self._collect(start_timeout_s, "start-up")
        except BaseException:
            self.close(kill=True)
            raise

    def run(self, task: str, payloads: list[Any]) -> list[Any]:
        """Send payloads[r] to rank r, run `task` ("module:function") on every rank, return the results."""
        if self.closed:
            raise DistributedWorkerError(f"the {self.world_size}-rank pool is closed")
        if len(payloads) != self.world_size:
            raise ValueError(f"{len(payloads)} payloads for a pool of {self.world_size} ranks")
        for rank, (conn, payload) in enumerate(zip(self._conns, payloads)):
            try:
                conn.send_bytes(_dumps((task, payload)))
            except (OSError, EOFError) as exc:
                self._fail(f"rank {rank} cannot be reached ({type(exc).__name__}: {exc}); "
                           f"exit code {self.processes[rank].exitcode}")
        return self._collect(self.timeout_s, task)

    def _collect(self, timeout_s: float, what: str) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        results: dict[int, Any] = {}
        errors: dict[int, tuple[str, str]] = {}
        pending = dict(enumerate(self._conns))
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail(f"no reply from rank(s) {sorted(pending)} of {self.world_size} within {timeout_s:g}s "
                           f"running {what}" + self._describe(errors))
            watch = list(pending.values()) + [self.processes[r].sentinel for r in pending]
            ready = wait(watch, timeout=remaining)
            for rank in list(pending):
                conn, proc = pending[rank], self.processes[rank]
                if conn in ready or (proc.sentinel in ready and conn.poll()):
                    try:
                        status, value = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):
                        proc.join(1.0)
                        self._fail(f"rank {rank} of {self.world_size} died running {what} "
                                   f"(exit code {proc.exitcode})" + self._describe(errors))
                    del pending[rank]
                    if status == "ok":
                        results[rank] = value
                    else:
                        errors[rank] = value
                        if pending:  # the others may be blocked in a collective with it: no waiting
                            self._fail(f"rank(s) [{rank}] of {self.world_size} raised running {what}"
                                       + self._describe(errors))
                elif proc.sentinel in ready:
                    proc.join(1.0)
                    self._fail(f"rank {rank} of {self.world_size} died running {what} "
                               f"(exit code {proc.exitcode})" + self._describe(errors))
        if errors:
            self._fail(f"rank(s) {sorted(errors)} of {self.world_size} raised running {what}" + self._describe(errors))
        return [results[r] for r in range(self.world_size)]

    @staticmethod
    def _describe(errors: dict[int, tuple[str, str]]) -> str:
        return "".join(f"\n  rank {r}: {msg}\n{tb}" for r, (msg, tb) in sorted(errors.items()))

    def _fail(self, message: str):
        self.close(kill=True)
        raise DistributedWorkerError(message)

    def close(self, kill: bool = False) -> None:
        """Stop the workers (politely unless `kill`), reap them and remove the rendezvous directory."""
        if self.closed:
            return
        self.closed = True
        if os.getpid() == self.owner_pid:
            for conn in self._conns:
                if not kill:
                    try:
                        conn.send_bytes(pickle.dumps(("stop", None)))
                    except (OSError, EOFError):
                        pass
            for p in self.processes:
                if kill:
                    p.kill()
                p.join(5.0)
                if p.is_alive():
                    p.kill()
                    p.join(1.0)
            for conn in self._conns:
                conn.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        if _POOLS.get(self.world_size) is self:
            del _POOLS[self.world_size]


_POOLS: dict[int, RankPool] = {}


def get_pool(world_size: int) -> RankPool:
    """The live pool of `world_size` ranks, started now if there is none (or it belongs to a parent process)."""
    pool = _POOLS.get(world_size)
    if pool is None or pool.closed or pool.owner_pid != os.getpid():
        pool = RankPool(world_size)
        _POOLS[world_size] = pool
    return pool


def run_on_ranks(task: str, payloads: list[Any]) -> list[Any]:
    """Run `task` on len(payloads) ranks of a gloo process group, payloads[r] on rank r."""
    return get_pool(len(payloads)).run(task, payloads)


@atexit.register
def shutdown_pools() -> None:
    for pool in list(_POOLS.values()):
        if pool.owner_pid == os.getpid():
            pool.close()
    _POOLS.clear()
