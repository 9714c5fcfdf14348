"""Validating a distributed drop-in: a SyncBatchNorm candidate on real `torch.distributed` ranks.

A candidate for `sync_batch_norm` is a torch.nn.Module with `nn.SyncBatchNorm`'s constructor whose
forward runs inside an initialized process group. It is never loaded in the validating process:
`DistributedCandidateBackend` keeps one gloo pool of k processes (k = 2..4, localhost only, the
pool of `normspec.impls.torch_distributed`) per world size, and each call of a case becomes one
job on the k ranks: every rank builds the candidate with the same constructor arguments,
parameters and buffers (`normspec.validate.adapters`, as for any module drop-in) and runs it on
its shard `split_batch(x, rank_sizes)` of the drawn global batch (and of dy). What the properties
see is the global result: the ranks' outputs and input gradients concatenated, the weight/bias
gradients summed over ranks in rank order (each rank holds its local share; data-parallel
training's all-reduce sums them), rank 0's running statistics (DDP broadcasts rank 0's buffers).
The per-rank results are kept for `sync_rank_shares`, which checks every rank on its own.

Hostile candidates: a rank that raises, dies or hangs (in a collective or elsewhere) ends the call
with a `CandidateAbort` naming the rank(s); the pool is killed (SIGKILL, then reaped) and the next
call starts a fresh one. Ranks also die with the pool's fork server (PR_SET_PDEATHSIG), so none
survives a killed validator.
"""
from __future__ import annotations

import pickle
import time
from multiprocessing.connection import wait

import numpy as np

from normspec.impls import torch_distributed
from normspec.impls.torch_distributed import DistributedWorkerError, RankPool
from normspec.spec.sync_batch_norm import split_batch
from normspec.validate.candidate import CandidateAbort, CandidateBackend, CandidateRaised, CapabilityMissing
from normspec.validate.replay_source import COMPARE_TO_SPEC

TASK = "normspec.validate.ranks:rank_call"
RAISE_GRACE_S = 2.0  # after one rank raised, how long the others may take to answer before they count as stuck
POOL_START_S = 120.0


# ---------------------------------------------------------------- the pool, from the validator's side

class CandidatePool(RankPool):
    """A rank pool whose jobs report the candidate's exceptions as values: after one rank raised,
    the others get `RAISE_GRACE_S` to answer (a rank that raised before a collective leaves the
    others blocked in it), then the pool is killed and the report names who raised and who is stuck."""

    def call(self, payloads: list, timeout_s: float) -> list:
        if self.closed:
            raise DistributedWorkerError(f"the {self.world_size}-rank pool is closed")
        for rank, (conn, payload) in enumerate(zip(self._conns, payloads)):
            try:
                conn.send_bytes(pickle.dumps((TASK, payload), protocol=pickle.HIGHEST_PROTOCOL))
            except (OSError, EOFError) as exc:
                self._fail(f"rank {rank} cannot be reached ({type(exc).__name__}); "
                           f"exit code {self.processes[rank].exitcode}")
        # past the group's own collective timeout (the pool's timeout_s), so that ranks blocked in a
        # collective with a hung rank report the timeout and the hung rank is the one left silent
        deadline = time.monotonic() + timeout_s + RAISE_GRACE_S
        results: dict[int, tuple] = {}
        pending = dict(enumerate(self._conns))
        raised_at = None
        while pending:
            remaining = deadline - time.monotonic()
            if raised_at is not None:
                remaining = min(remaining, raised_at + RAISE_GRACE_S - time.monotonic())
            if remaining <= 0:
                self._fail(self._stuck_message(sorted(pending), results, timeout_s))
            watch = list(pending.values()) + [self.processes[r].sentinel for r in pending]
            ready = wait(watch, timeout=remaining)
            for rank in list(pending):
                conn, proc = pending[rank], self.processes[rank]
                if conn in ready or (proc.sentinel in ready and conn.poll()):
                    try:
                        status, value = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):
                        proc.join(1.0)
                        self._fail(self._died_message(rank, proc.exitcode, results))
                    del pending[rank]
                    if status != "ok":  # outside the candidate: the task itself failed
                        self._fail(f"rank {rank} failed outside the candidate: {value[0]}\n{value[1]}")
                    results[rank] = value
                    if value[0] == "error" and raised_at is None:
                        raised_at = time.monotonic()
                elif proc.sentinel in ready:
                    proc.join(1.0)
                    self._fail(self._died_message(rank, proc.exitcode, results))
        return [results[r] for r in range(self.world_size)]

    def _raised(self, results) -> str:
        return "".join(f"; rank {r} raised {v[1]}: {v[2]}" for r, v in sorted(results.items()) if v[0] == "error")

    def _died_message(self, rank, code, results) -> str:
        from normspec.validate.candidate import signal_name

        return (f"rank {rank} of {self.world_size} died ({signal_name(code) if code else f'exit status {code}'})"
                + self._raised(results) + "; every rank was killed")

    def _stuck_message(self, stuck, results, timeout_s) -> str:
        raised = self._raised(results)
        if raised and ("timed out" in raised.lower() or "timeout" in raised.lower()):
            return (f"rank(s) {stuck} of {self.world_size} hung: did not return within {timeout_s:.0f}s while the "
                    f"other ranks' collectives timed out waiting for them{raised}; every rank was killed")
        if raised:
            return (f"rank(s) {stuck} of {self.world_size} did not return after another rank raised (blocked in a "
                    f"collective the raising rank never joined?){raised}; every rank was killed")
        return (f"rank(s) {stuck} of {self.world_size} did not return within {timeout_s:.0f}s (per-example time "
                f"limit; hung, or waiting in a collective another rank never joined); every rank was killed")


def distributed_drop_in_calls(strategy):
    """The calls whose meaning a torch.nn.SyncBatchNorm drop-in and the spec agree on: not eval
    without running statistics, where nn.SyncBatchNorm does not synchronize (each rank normalizes
    by its own shard's statistics; `need_sync` requires training) while the spec uses the group's.
    A drop-in is held to PyTorch's contract there, as torch drop-ins are held to PyTorch's
    conventions; both behaviours pass, and that mode is not checked."""
    return strategy.filter(lambda c: c.params.get("training", True) or c.get("running_mean") is not None)


def _wire_shards(wire, sizes) -> list:
    values, dtype, layout = wire
    return [(np.ascontiguousarray(v), dtype, layout) for v in split_batch(np.asarray(values), {"rank_sizes": sizes})]


class DistributedCandidateBackend(CandidateBackend):
    """A SyncBatchNorm candidate run on k gloo ranks per call (k = len(params["rank_sizes"]))."""

    def __init__(self, target: str, cwd: str, scratch: str, norm: str, outputs: tuple[str, ...], **kwargs):
        super().__init__(None, norm, "module", outputs, **kwargs)
        self.target, self.cwd, self.scratch = target, cwd, scratch
        self.pools: dict[int, CandidatePool] = {}
        self.last_ranks: list[dict] | None = None  # the per-rank results of the last call
        self.rank_pids: set[int] = set()  # every rank process started, for the no-survivor check
        # torch:cpu's own pools (started when a failure is replayed on PyTorch's op) that predate this run
        self._torch_pools_before = set(map(id, torch_distributed._POOLS.values()))

    def _pool(self, k: int) -> CandidatePool:
        pool = self.pools.get(k)
        if pool is None or pool.closed:
            try:
                pool = CandidatePool(k, timeout_s=self.example_timeout, start_timeout_s=POOL_START_S)
            except DistributedWorkerError as exc:
                raise CandidateAbort("crashed", f"starting {k} gloo ranks failed: {exc}") from None
            self.pools[k] = pool
            self.rank_pids.update(p.pid for p in pool.processes)
        return pool

    def close(self) -> None:
        """Kill and reap every rank this run started: the candidate's, and those of torch:cpu's pools
        that the parity check started (they would otherwise live until the interpreter exits)."""
        for pool in list(self.pools.values()):
            pool.close(kill=True)
        self.pools.clear()
        for pool in list(torch_distributed._POOLS.values()):
            if id(pool) not in self._torch_pools_before:
                pool.close()

    def _run_ranks(self, sizes, payloads, msg, what):
        timeout = self.timeout()
        pool = self._pool(len(sizes))
        try:
            return pool.call(payloads, timeout)
        except DistributedWorkerError as exc:
            text = str(exc)
            kind = "hung" if "did not return" in text else "crashed"
            if kind == "hung" and self.deadline is not None and timeout < self.example_timeout \
                    and "raised" not in text:
                raise CandidateAbort("run-limit", "the whole-run time limit was reached during a call") from None
            raise CandidateAbort(kind, f"{what} on rank_sizes={tuple(sizes)}: {text}", msg) from None

    def _common(self, sizes, params):
        return {"target": self.target, "cwd": self.cwd, "scratch": self.scratch, "norm": self.norm,
                "params": dict(params), "outputs": self.outputs, "rank_sizes": tuple(sizes)}

    def _call(self, norm, inputs, params, dy=None, wrt=()):
        from normspec.spec.sync_batch_norm import rank_sizes_of

        wire = {r: a.wire() for r, a in inputs.items() if a is not None}
        msg = {"op": "call", "kind": self.kind, "norm": norm, "inputs": wire, "params": dict(params),
               "outputs": self.outputs}
        if dy is not None:
            msg["dy"], msg["wrt"] = dy.wire(), tuple(wrt)
        try:
            sizes = rank_sizes_of(params, wire["x"][0].shape[0])
        except ValueError as exc:
            raise CandidateRaised(f"cannot split the batch over ranks: {exc}") from None
        x_shards = _wire_shards(wire["x"], sizes)
        dy_shards = _wire_shards(msg["dy"], sizes) if dy is not None else [None] * len(sizes)
        shared = {r: w for r, w in wire.items() if r != "x"}
        payloads = [{**self._common(sizes, params), "op": "call", "inputs": {"x": xs, **shared}, "dy": d,
                     "wrt": tuple(wrt)} for xs, d in zip(x_shards, dy_shards)]
        replies = self._run_ranks(sizes, payloads, msg, "forward + backward" if dy is not None else "forward")
        self.calls += 1
        unsupported = [r for r in replies if r[0] == "unsupported"]
        if unsupported:
            if dy is not None and "backward" in unsupported[0][1]:
                raise CapabilityMissing(unsupported[0][1])
            raise CandidateRaised(f"cannot express this call: {unsupported[0][1]}")
        errors = [(rank, r) for rank, r in enumerate(replies) if r[0] == "error"]
        if errors:
            who = "every rank" if len(errors) == len(replies) else f"rank(s) {[e[0] for e in errors]}"
            rank, (_, etype, text) = errors[0]
            if self.recording is not None:
                self.recording.append({"msg": msg, "error": f"{etype}: {text}"})
            raise CandidateRaised(f"the candidate raised {etype} on {who} of {len(replies)}: {text} "
                                  f"(rank {rank}, rank_sizes={tuple(sizes)})")
        results = [r[1] for r in replies]
        self.last_ranks = results
        return self.received(msg, combine_ranks(results, sizes, inputs, dy), inputs, dy)

    def steps(self, inputs, params, steps, eval_x):
        """Training steps then eval on one instance per rank, each step's batch split as the case's."""
        from normspec.spec.sync_batch_norm import rank_sizes_of

        wire = {r: a.wire() for r, a in inputs.items()}
        sizes = rank_sizes_of(params, wire["x"][0].shape[0])
        def cut(v):
            return split_batch(np.asarray(v), {"rank_sizes": sizes})
        step_shards = [cut(s) for s in steps]
        eval_shards = cut(eval_x)
        x_shards = _wire_shards(wire["x"], sizes)
        shared = {r: w for r, w in wire.items() if r != "x"}
        payloads = [{**self._common(sizes, params), "op": "steps", "inputs": {"x": x_shards[r], **shared},
                     "steps": [s[r] for s in step_shards], "eval_x": eval_shards[r]} for r in range(len(sizes))]
        msg = {"op": "steps", "norm": self.norm, "inputs": wire, "params": dict(params)}
        saved, self.example_timeout = self.example_timeout, self.example_timeout * (len(steps) + 1)
        try:
            replies = self._run_ranks(sizes, payloads, msg, f"{len(steps)} training steps then eval")
        finally:
            self.example_timeout = saved
        errors = [(rank, r) for rank, r in enumerate(replies) if r[0] != "ok"]
        if errors:
            rank, reply = errors[0]
            detail = reply[2] if len(reply) > 2 else ""
            raise CandidateRaised(f"the candidate raised {reply[1]} on rank {rank}: {detail}")
        per_rank = [r[1] for r in replies]
        records = []
        for t in range(len(steps) + 1):
            rec = {"y": np.concatenate([pr[t]["y"] for pr in per_rank])}
            rec.update({k: v for k, v in per_rank[0][t].items() if k != "y"})
            records.append(rec)
        return records


def combine_ranks(results: list[dict], sizes, inputs, dy) -> dict:
    """The global call's result from the ranks': y and dx concatenated, dweight/dbias summed in rank
    order (float64, exact sums of what each rank returned), rank 0's buffers; input writes re-assembled."""
    out = {"outputs": {}, "grads": {}, "mutated": {}}
    out["outputs"]["y"] = np.concatenate([r["outputs"]["y"] for r in results])
    for name in results[0]["outputs"]:
        if name != "y":
            out["outputs"][name] = results[0]["outputs"][name]
    for role in results[0]["grads"]:
        parts = [r["grads"][role] for r in results]
        out["grads"][role] = np.concatenate(parts) if role == "x" else np.sum(parts, axis=0)
    for role in ("x", "dy"):
        if any(role in r["mutated"] for r in results):
            source = inputs["x"].values if role == "x" else dy.values
            own = split_batch(source, {"rank_sizes": sizes})
            out["mutated"][role] = np.concatenate([r["mutated"].get(role, o) for r, o in zip(results, own)])
    for r in results:
        for role, v in r["mutated"].items():
            if role not in ("x", "dy"):
                out["mutated"].setdefault(role, v)
    return out


# ---------------------------------------------------------------- the per-rank property

def _rank_shares(ctx) -> None:
    """Every rank on its own, not only the global result: rank r's output and input gradient equal
    the spec's on its rows of the whole batch; its running statistics equal the spec's (every rank
    holds the group's, not its shard's); its weight and bias gradients equal its local share, the
    spec's gradient for dy kept on rank r's rows and zero elsewhere (summed over ranks by
    data-parallel training: a rank that all-reduces them itself is counted k times), each within
    the tolerance model's bound for that call. A rank that returns the sum, or rank 0 right and
    the others wrong, fails here although the concatenated result may pass."""
    from normspec.properties.core import PropertyFailure, assert_close

    b = ctx.backend
    if not isinstance(b, DistributedCandidateBackend):
        raise CapabilityMissing("per-rank results need a candidate run on torch.distributed ranks")
    case, dtype, layout = ctx.case(), ctx.dtype(), ctx.layout()
    run = ctx.run(case, dtype, layout, grads=True)
    ranks = b.last_ranks
    sizes = tuple(run.case.params["rank_sizes"])
    ref, ref_grads = ctx.reference(run)
    bounds = ctx.bounds(run, ref, ref_grads)
    bounds_at = {k: np.broadcast_to(bounds[k], np.shape(v)) for k, v in ref.items()}
    bounds_at.update({k: np.broadcast_to(bounds[k], np.shape(v)) for k, v in ref_grads.items()})
    rows = np.cumsum((0,) + sizes)
    record = ctx.record
    for r, got in enumerate(ranks):
        at = f"[rank {r} of {len(sizes)}, rank_sizes={sizes}, {b.name} {dtype} {layout}]"
        lo, hi = int(rows[r]), int(rows[r + 1])
        assert_close(got["outputs"]["y"], ref["y"][lo:hi], bounds_at["y"][lo:hi], "y", at)
        for name in ("running_mean", "running_var"):
            if name in ref:
                if name not in got["outputs"]:
                    raise PropertyFailure(f"{name} was not updated on rank {r} {at}")
                assert_close(got["outputs"][name], ref[name], bounds_at[name], name, at)
        if "x" in ref_grads:
            assert_close(got["grads"]["x"], ref_grads["x"][lo:hi], bounds_at["x"][lo:hi], "dx", at)
        shared = [role for role in ("weight", "bias") if role in ref_grads]
        if shared:
            dy_r = np.zeros_like(run.dy)
            dy_r[lo:hi] = run.dy[lo:hi]
            share = record.reference_grad(run.case, dy_r)
            share_bounds = record.bounds(run.case, dtype, ref, dy_r, share)
            for role in shared:
                assert_close(got["grads"][role], share[role], share_bounds[role], f"d{role} (this rank's share)", at)


def _applies(record) -> bool:
    return record.has("rank_synchronized")


def _property():
    from normspec.properties.core import Property

    return Property("sync_rank_shares", _rank_shares, _applies, (_rank_shares.__doc__ or "").strip(), "synchronization")


DISTRIBUTED_PROPERTIES = {"sync_rank_shares": _property()}


# ---------------------------------------------------------------- the reproducer's runner

# Replaces the reproducer's single-process runner (`normspec.validate.report.RUNNER`) for a
# distributed candidate: each recorded call is replayed on len(rank_sizes) local processes joined
# in a gloo group (file:// rendezvous in a temporary directory, loopback only), each running the
# embedded adapters on its shard, and compared as the properties compare it.
REPRODUCER_RUNNER = COMPARE_TO_SPEC + '''
import multiprocessing
import os
import shutil
import tempfile
from datetime import timedelta

RANK_TIMEOUT_S = 60.0


def _shard(wire, lo, hi):
    values, dtype, layout = wire
    return (np.ascontiguousarray(np.asarray(values)[lo:hi]), dtype, layout)


def _rank_main(rank, world, init_method, call, conn):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world,
                            timeout=timedelta(seconds=RANK_TIMEOUT_S))
    sizes = call["params"]["rank_sizes"]
    lo, hi = sum(sizes[:rank]), sum(sizes[:rank + 1])
    inputs = {r: (_shard(w, lo, hi) if r == "x" else w) for r, w in call["inputs"].items()}
    dy = None if call.get("dy") is None else _shard(call["dy"], lo, hi)
    try:
        candidate = A.load_target(TARGET, CWD)
        candidate = A.compiled(candidate) if COMPILED else candidate  # found under --compile: replay it compiled
        got = A.execute(candidate, KIND, NORM, inputs, call["params"], dy=dy,
                        wrt=call.get("wrt", ()), outputs=OUTPUTS)
        conn.send(("ok", got))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    dist.destroy_process_group()


def run_on_ranks(call):
    """The call on k = len(rank_sizes) local gloo ranks: y and dx concatenated, dweight/dbias summed
    over ranks (each rank returns its local share), the running statistics of every rank."""
    sizes = call["params"]["rank_sizes"]
    ctx = multiprocessing.get_context("spawn")
    folder = tempfile.mkdtemp(prefix="normspec-repro-")
    procs, conns = [], []
    try:
        for rank in range(len(sizes)):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_rank_main, args=(rank, len(sizes), "file://" + os.path.join(folder, "rdv"),
                                                     call, child), daemon=True)
            p.start()
            procs.append(p)
            conns.append(parent)
        replies = []
        for rank, conn in enumerate(conns):
            if not conn.poll(RANK_TIMEOUT_S + 30):
                raise RuntimeError(f"rank {rank} did not answer within {RANK_TIMEOUT_S + 30:.0f}s")
            replies.append(conn.recv())
    except EOFError:
        raise RuntimeError(f"a rank died (exit codes {[p.exitcode for p in procs]})") from None
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
        shutil.rmtree(folder, ignore_errors=True)
    errors = [f"rank {r}: {v}" for r, (s, v) in enumerate(replies) if s != "ok"]
    if errors:
        raise RuntimeError("; ".join(errors))
    ranks = [v for _, v in replies]
    out = {"outputs": {"y": np.concatenate([r["outputs"]["y"] for r in ranks])}, "grads": {}, "mutated": {}}
    for name in ranks[0]["outputs"]:
        if name != "y":
            out["outputs"][name] = ranks[0]["outputs"][name]
            for r, got in enumerate(ranks[1:], start=1):
                if not np.array_equal(got["outputs"][name], ranks[0]["outputs"][name]):
                    out["mutated"][f"{name} on rank {r} (differs from rank 0's)"] = got["outputs"][name]
    for role in ranks[0]["grads"]:
        parts = [r["grads"][role] for r in ranks]
        out["grads"][role] = np.concatenate(parts) if role == "x" else np.sum(parts, axis=0)
    for r, got in enumerate(ranks):
        for role in got["mutated"]:
            out["mutated"][f"{role} on rank {r}"] = got["mutated"][role]
    return out


def replay_call(candidate, call):
    """Replay one call on the ranks; return a list of what is wrong with it (empty: it matches the spec)."""
    problems = []
    try:
        got = run_on_ranks(call)
    except Exception as exc:
        if "spec_raises" in call:
            return []
        return [f"raised {exc}"]
    if "spec_raises" in call:
        return [f"returned a result, but the spec raises ({call['spec_raises']})"]
    for role in got["mutated"]:
        problems.append(f"modified or disagrees: {role}")
    values = {**got["outputs"], **{"d" + r: g for r, g in got["grads"].items()}}
    problems += compare_to_spec(values, call["expect"])
    if not problems and call.get("recorded"):
        same = all(np.array_equal(values.get(k), v, equal_nan=True) for k, v in call["recorded"].items())
        if same:
            problems.append("returns the same values as when the property failed (the property relates several "
                            "calls or checks each rank's share; see the failure above)")
    return problems


if __name__ == "__main__":
    print(f"replaying {len(CALLS)} call(s) of {TARGET} on local gloo ranks (torch.distributed, 127.0.0.1)")
    candidate = None
    reproduced = False
    for i, call in enumerate(CALLS):
        problems = replay_call(candidate, call)
        for p in problems:
            print(f"call {i + 1} (rank_sizes={tuple(call['params']['rank_sizes'])}): {p}")
        reproduced = reproduced or bool(problems)
    if reproduced:
        print(f"REPRODUCED: {PROPERTY} fails for {TARGET}")
        sys.exit(1)
    print("every call now agrees with the spec: the failure no longer reproduces")
'''

REPRODUCER_NOTE = """
Distributed: each call runs on len(rank_sizes) processes that this script starts on this machine
(torch.distributed, gloo backend, file:// rendezvous in a temporary directory, loopback only; no
GPU, no launcher, no network): run it with `python THIS_FILE` like any script.
"""
