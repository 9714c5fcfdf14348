"""The child process that holds the candidate: it imports the target and runs calls on request.

Everything the candidate does happens here, so that a raise, a hang or a segfault in it never
takes the validating process down: the parent (`normspec.validate.candidate`) sees an error
reply, a missed deadline or a dead process, and reports it. The candidate's stdout/stderr go to
a log file in the report's scratch directory, and the working directory is a scratch directory,
so relative writes by the candidate never land beside the user's files.
"""
from __future__ import annotations

import os
import sys
import traceback
from multiprocessing.connection import Connection


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


def serve(conn, target: str, cwd: str, scratch: str) -> None:
    """Child main loop: answer ("describe" | "call" | "steps" | "exit") messages over `conn`."""
    sys.dont_write_bytecode = True
    os.chdir(scratch)
    import torch

    # One intra-op thread by default: tiny cases run ~15x faster than with OpenMP threads waiting
    # on a busy CI machine, and reductions are summed in one order. NORMSPEC_VALIDATE_THREADS=n.
    torch.set_num_threads(int(os.environ.get("NORMSPEC_VALIDATE_THREADS", "1")))
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
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an unpicklable result
            conn.send(("error", type(exc).__name__, f"could not send the result back: {exc}"))


if __name__ == "__main__":
    fd, target, cwd, scratch = sys.argv[1:5]
    serve(Connection(int(fd)), target, cwd, scratch)
