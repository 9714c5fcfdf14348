"""The rank side of a distributed candidate (see `normspec.validate.distributed`): the job each
rank of the gloo pool runs. It imports only `normspec.validate.adapters` (torch, NumPy), so a
fresh rank is ready in well under a second after the pool's fork server has imported torch."""
from __future__ import annotations

import os

_LOADED: dict = {}


def _once_per_rank(scratch: str) -> None:
    """First job of a rank: die with the fork server (and let it die with the validator), write into
    the scratch directory, send the candidate's prints to the run's log (as the worker does)."""
    if _LOADED.get("setup"):
        return
    _LOADED["setup"] = True
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        # multiprocessing hands every forked child the write end of the fork server's "alive" pipe,
        # so the server outlives the validator while a rank holds it; ranks start no processes
        from multiprocessing import forkserver

        server = forkserver._forkserver
        if server._forkserver_alive_fd is not None:
            os.close(server._forkserver_alive_fd)
            server._forkserver_alive_fd = None
    except Exception:
        pass
    if scratch and os.path.isdir(scratch):
        os.chdir(scratch)
        fd = os.open(os.path.join(scratch, "candidate-output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)


def rank_call(payload):
    """Pool task: one rank's share of a call ("call") or of training steps then eval ("steps").
    The candidate's own exceptions come back as ("error", type, message), never as a task failure."""
    from normspec.validate import adapters

    _once_per_rank(payload.get("scratch", ""))
    try:
        key = (payload["target"], payload["cwd"])
        if _LOADED.get("key") != key:
            _LOADED["candidate"], _LOADED["key"] = adapters.load_target(*key), key
        candidate = _LOADED["candidate"]
        if payload["op"] == "steps":
            return ("ok", adapters.execute_steps(candidate, payload["norm"], payload["inputs"], payload["params"],
                                                 payload["steps"], payload["eval_x"]))
        return ("ok", adapters.execute(candidate, "module", payload["norm"], payload["inputs"], payload["params"],
                                       dy=payload.get("dy"), wrt=tuple(payload.get("wrt", ())),
                                       outputs=tuple(payload.get("outputs", ("y",)))))
    except adapters.Unsupported as exc:
        return ("unsupported", str(exc))
    except BaseException as exc:  # the candidate's own exception, whatever it is
        import traceback

        tb = traceback.extract_tb(exc.__traceback__)
        at = f" (at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno})" if tb else ""
        return ("error", type(exc).__name__, f"{exc}{at}")


