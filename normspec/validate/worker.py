"""The child process that holds the candidate: it imports the target and runs calls on request.

Everything the candidate does happens here, so that a raise, a hang or a segfault in it never
takes the validating process down: the parent (`normspec.validate.candidate`) sees an error
reply, a missed deadline or a dead process, and reports it. The candidate's stdout/stderr go to
the parent through a pipe (kept in a capped log in the scratch directory), and the working
directory is a scratch directory, so relative writes by the candidate never land beside the
user's files. The worker leads its own session (process group), so the parent ends it and every
process the candidate started with one killpg; it also dies with the parent (PR_SET_PDEATHSIG),
and its writable memory is limited (RLIMIT_DATA, `NORMSPEC_WORKER_MEMORY` bytes): an allocation
past it raises in the candidate and is reported as the memory limit, not as a wrong result.
"""
from __future__ import annotations

import os
import sys
import traceback
from multiprocessing.connection import Connection


def worker_threads() -> int:
    """The intra-op threads the candidate's torch runs with (NORMSPEC_VALIDATE_THREADS, default 1)."""
    return int(os.environ.get("NORMSPEC_VALIDATE_THREADS", "1"))


def _describe(obj, target):
    from normspec.validate import adapters

    kind, norm, ranks, how = adapters.classify(obj)
    declared = adapters.find_contract(obj)
    wire = None
    if declared is not None:
        try:
            wire = {"wire": declared.to_wire(), "source": getattr(declared, "source", "") or "declared in the file"}
        except Exception as exc:  # not a normspec Contract
            wire = {"error": f"{type(declared).__name__} is not a normspec.validate.Contract ({exc})"}
    return {"kind": kind, "norm": norm, "ranks": ranks, "how": how, "type": type(obj).__name__,
            "name": getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj))), "target": target,
            "ctor": adapters.describe_ctor(obj) if kind == "module" else None, "contract": wire}


def _error(exc: BaseException) -> tuple:
    tb = traceback.extract_tb(exc.__traceback__)
    frame = tb[-1] if tb else None
    at = f" (at {os.path.basename(frame.filename)}:{frame.lineno})" if frame else ""
    return ("error", type(exc).__name__, f"{exc}{at}")


MEMORY_MARKERS = ("can't allocate memory", "Cannot allocate memory", "out of memory", "std::bad_alloc")


def is_memory_error(exc: BaseException) -> bool:
    """A failed allocation: Python's MemoryError (NumPy's too) or torch's allocator error."""
    return isinstance(exc, MemoryError) or any(m in str(exc) for m in MEMORY_MARKERS)


def limit_memory(limit: int) -> None:
    """Limit the worker's writable memory (RLIMIT_DATA: heap and private writable mappings, which is
    where NumPy and torch allocate; unlike RLIMIT_AS it leaves address space that is only reserved,
    as a CUDA context reserves it, alone)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)
    except Exception:  # not Linux: the parent's killpg is the guard
        pass


def serve(conn, target: str, cwd: str, scratch: str) -> None:
    """Child main loop: answer ("describe" | "call" | "steps" | "exit") messages over `conn`."""
    sys.dont_write_bytecode = True
    die_with_parent()
    os.chdir(scratch)
    if os.environ.get("NORMSPEC_WORKER_MEMORY"):
        limit_memory(int(os.environ["NORMSPEC_WORKER_MEMORY"]))
    import torch

    # One intra-op thread by default: tiny cases run ~15x faster than with OpenMP threads waiting
    # on a busy CI machine, and reductions are summed in one order. NORMSPEC_VALIDATE_THREADS=n.
    torch.set_num_threads(worker_threads())
    from normspec.validate import adapters

    candidate = None
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        op = msg.get("op")
        if op == "exit":
            return
        try:
            if op == "describe":
                candidate = adapters.load_target(target, cwd)
                shapes = adapters.compile_shapes(os.environ.get("NORMSPEC_VALIDATE_COMPILE"))
                if shapes:
                    candidate = adapters.compiled(candidate, shapes)
                reply = ("ok", _describe(candidate, target))
            elif op == "call":
                reply = ("ok", adapters.execute(candidate, msg["kind"], msg["norm"], msg["inputs"], msg["params"],
                                                 dy=msg.get("dy"), wrt=tuple(msg.get("wrt", ())),
                                                 outputs=tuple(msg.get("outputs", ("y",))),
                                                 contract=msg.get("contract")))
            elif op == "steps":
                reply = ("ok", adapters.execute_steps(candidate, msg["norm"], msg["inputs"], msg["params"],
                                                      msg["steps"], msg["eval_x"], msg.get("contract")))
            elif op == "affine":
                reply = ("ok", adapters.affine_present(msg["norm"], candidate, tuple(msg["shape"]), msg["arrays"],
                                                       msg["params"], msg.get("contract")))
            else:
                reply = ("error", "ProtocolError", f"unknown operation {op!r}")
        except adapters.Unsupported as exc:
            reply = ("unsupported", str(exc))
        except BaseException as exc:  # the candidate's own exception, whatever it is
            reply = _error(exc)
            if is_memory_error(exc):
                reply = ("memory",) + reply[1:]
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an unpicklable result
            conn.send(("error", type(exc).__name__, f"could not send the result back: {exc}"))


if __name__ == "__main__":
    fd, target, cwd, scratch = sys.argv[1:5]
    serve(Connection(int(fd)), target, cwd, scratch)
