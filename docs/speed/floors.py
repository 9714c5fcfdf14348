"""What a NumPy kernel can reach on this machine: the cost of each kind of pass over 64 MB.

    python docs/speed/floors.py [--mb 64] [--tile-kib 256] [--row 1024] [--repeats 9]   (needs normspec installed)

A normalization kernel written in NumPy (like `numpy:fast`) pays for one read of x from DRAM, one
write of y to DRAM, and k passes over cache-resident tiles (ufuncs and BLAS calls), spread over
the threads. This script times each of those alone, over as many bytes as the input, next to
`np.copyto` of the whole array (the bench's yardstick), and prints the pass budget that is left
for a kernel to reach 50% of copy, so that a design can be costed before it is written. Last, it
times numpy:fast's own LayerNorm, RMSNorm and BatchNorm2d forward on one thread and on all of them
(half the one-thread time is what perfect two-thread scaling would give, next to the 50% target),
and LayerNorm once more as two forked processes on the two halves of the rows, which share no GIL.

Three effects set the ceiling. np.copyto of a large array uses non-temporal stores (no read for
ownership of the destination); a tile written by a ufunc or a per-tile copy cannot, so DRAM
moves three bytes per output byte instead of two. And on rows shorter than NumPy's ufunc
buffer (8192 elements), its buffered iterator copies broadcast operands (a per-row scalar, a
per-column vector) into the buffer to grow the inner loop, so those ufuncs run at a fraction of
the speed of a scalar one, unless the buffer is capped at the row length (np.setbufsize, as
numpy:fast does while its tiles run). A third is the GIL: the tile threads share it, and a call
that holds it while it works (np.matmul and np.vecdot over 500 values or fewer) stalls the other
threads; the script times each tile call on one thread and on two.
"""
from __future__ import annotations

import argparse
import mmap
import os
import time
from concurrent.futures import ThreadPoolExecutor
from threading import Thread

import numpy as np

from normspec.bench import cpu_times, median_iqr, steal_pct, time_call
from normspec.impls.fast_numpy import batch_norm, reductions, row_norms, runtime

STOLEN: list[float] = []  # the hypervisor's steal time during each timing, in percent


def median_ms(call, repeats: int) -> float:
    before = cpu_times()
    seconds, _ = median_iqr(time_call(call, repeats=repeats, min_sample_s=0.0))
    STOLEN.append(steal_pct(before, cpu_times()))
    return 1e3 * seconds


def steal_note() -> str:
    stolen = STOLEN[-1] if STOLEN else float("nan")
    return "" if stolen != stolen else f" {stolen:5.0f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="input size in MiB (default 64)")
    parser.add_argument("--tile-kib", type=int, default=256, help="cache tile in KiB (default 256)")
    parser.add_argument("--row", type=int, default=1024, help="row length for the broadcast passes (default 1024)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    n, k = args.mb * 2**18, args.tile_kib * 2**8  # float32 elements
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    y = np.ones_like(x)
    tile = np.ones(k, dtype=np.float32)  # ones: repeated in-place passes stay finite and normal
    other = np.ones(k, dtype=np.float32)
    ones = np.ones(k, dtype=np.float32)
    rows2d = tile.reshape(-1, args.row)
    per_column = np.ones(args.row, dtype=np.float32)
    per_row = np.ones((rows2d.shape[0], 1), dtype=np.float32)
    starts = range(0, n, k)
    pool = ThreadPoolExecutor(2)

    def capped(op):
        """op with NumPy's ufunc buffer no longer than a row (what numpy:fast's row_buffering does)."""
        def run(i):
            with np.errstate():
                np.setbufsize(max(16, args.row // 16 * 16))
                return op(i)
        return run

    def over_tiles(op):
        return lambda: [op(i) for i in starts]

    def two_threads(op):
        halves = [starts[:len(starts) // 2], starts[len(starts) // 2:]]
        return lambda: list(pool.map(lambda part: [op(i) for i in part], halves))

    read = lambda i: np.dot(x[i:i + k], ones)  # noqa: E731
    read_write = lambda i: np.copyto(y[i:i + k], x[i:i + k])  # noqa: E731
    dram = [
        ("np.copyto, whole array (the yardstick)", lambda: np.copyto(y, x)),
        ("read x (BLAS dot per tile), 1 thread", over_tiles(read)),
        ("read x (BLAS dot per tile), 2 threads", two_threads(read)),
        ("read x + write y per tile (np.copyto), 1 thread", over_tiles(read_write)),
        ("read x + write y per tile (np.copyto), 2 threads: the floor", two_threads(read_write)),
    ]
    in_cache = [
        ("ufunc, scalar operand, in place", lambda i: np.multiply(tile, 1.0, out=tile)),
        ("ufunc, same-shape operand, into a second tile", lambda i: np.multiply(tile, other, out=other)),
        (f"ufunc, per-column vector ({args.row}-wide rows)", lambda i: np.multiply(rows2d, per_column, out=rows2d)),
        (f"ufunc, per-row scalar ({args.row}-wide rows)", lambda i: np.multiply(rows2d, per_row, out=rows2d)),
        ("ufunc, per-column vector, ufunc buffer capped at the row",
         capped(lambda i: np.multiply(rows2d, per_column, out=rows2d))),
        ("ufunc, per-row scalar, ufunc buffer capped at the row",
         capped(lambda i: np.multiply(rows2d, per_row, out=rows2d))),
        ("BLAS row sums (np.dot with ones)", lambda i: np.dot(rows2d, per_column)),
        ("BLAS sums of squares (np.vecdot)", lambda i: np.vecdot(rows2d, rows2d)),
        ("BLAS sums of squares (numpy:fast row_dots)", lambda i: reductions.row_dots(rows2d, rows2d)),
    ]
    copy_ms = median_ms(dram[0][1], args.repeats)
    print(f"{args.mb} MiB float32, {args.tile_kib} KiB tiles, median of {args.repeats}")
    print(f"{'DRAM':62s} {'ms':>8s} {'x copy':>7s} {'steal':>6s}")
    times = {}
    for label, call in dram:
        times[label] = ms = copy_ms if call is dram[0][1] else median_ms(call, args.repeats)
        print(f"{label:62s} {ms:8.2f} {ms / copy_ms:7.2f}{steal_note()}")
    print(f"{'in cache, one thread, over as many bytes as x':62s}")
    scalar_ms = None
    for label, call in in_cache:
        ms = median_ms(over_tiles(call), args.repeats)
        scalar_ms = scalar_ms or ms
        print(f"{label:62s} {ms:8.2f} {ms / copy_ms:7.2f}{steal_note()}")
    tiny = np.ones(16, dtype=np.float32)
    call_us = 1e3 * median_ms(lambda: [np.multiply(tiny, 1.0, out=tiny) for _ in range(1000)], args.repeats)
    print(f"{'one ufunc call on 16 values (the per-call overhead), us':62s} {call_us / 1000:8.2f}")
    floor = times[dram[-1][0]]
    budget = 2 * (2 * copy_ms - floor)  # thread-ms of in-cache work left at 50% of copy, if it overlaps perfectly
    print("steal: the share of the CPUs the hypervisor gave to other guests during that row (from /proc/stat);\n"
          "where it is high, the two-thread rows say more about the neighbours than about the kernel.")
    print(f"50% of copy = {2 * copy_ms:.1f} ms. Above the two-thread floor ({floor:.1f} ms) that leaves at most "
          f"{max(budget, 0):.1f} thread-ms of in-cache work, "
          f"about {max(budget, 0) / scalar_ms:.1f} scalar-operand passes.")
    calls_against_the_gil(args.row)
    kernels_against_target(x, args.repeats)
    threads_against_processes(x, args.repeats)


def calls_against_the_gil(row: int, calls: int = 2000) -> None:
    """Each tile call run on two threads at once (private 1 MiB tiles) against one thread: a call that
    holds the GIL while it works gets no faster on two (x1), one that releases it nearly twice as fast."""
    tiles = 2**18 // row
    cases = [("np.matmul(tile, v)", lambda t, v: np.matmul(t, v)), ("np.dot(tile, v)", lambda t, v: np.dot(t, v)),
             ("np.vecdot(tile, tile)", lambda t, v: np.vecdot(t, t)),
             ("row_dots(tile, tile)", lambda t, v: reductions.row_dots(t, t)),
             ("np.multiply(tile, 1.0, out=tile)", lambda t, v: np.multiply(t, 1.0, out=t))]

    def loop(call):
        t, v = np.ones((tiles, row), np.float32), np.ones(row, np.float32)
        for _ in range(calls):
            call(t, v)

    def wall(call, threads: int) -> float:
        best = float("inf")
        for _ in range(3):
            workers = [Thread(target=loop, args=(call,)) for _ in range(threads)]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            best = min(best, time.perf_counter() - start)
        return best

    print(f"tile calls on 2 threads against 1 ({tiles} x {row} float32 tiles){'':13s} "
          f"{'us/call':>8s} {'2 threads':>10s}")
    for label, call in cases:
        one = wall(call, 1)
        print(f"{label:62s} {1e6 * one / calls:8.1f} {2 * one / wall(call, 2):9.2f}x")
    print("x ~1: the call holds the GIL (NumPy's gufuncs do when they make 500 values or fewer), so the\n"
          "other tile threads wait; numpy:fast uses np.dot and row_dots, which release it.")


def kernels_against_target(x: np.ndarray, repeats: int) -> None:
    """numpy:fast forward on one thread and on all, each next to a copy of the same array."""
    tokens = x.reshape(-1, 1024)
    cnn = x.reshape(-1, 64, 64, 64)
    gamma, beta = np.full(1024, 1.5, np.float32), np.full(1024, 0.25, np.float32)
    cases = [("LayerNorm, (tokens, 1024)", lambda: row_norms.layer_norm_forward(tokens, gamma, beta, (1024,), 1e-5)),
             ("RMSNorm, (tokens, 1024)", lambda: row_norms.rms_norm_forward(tokens, gamma, (1024,), None)),
             ("BatchNorm2d, (N, 64, 64, 64)", lambda: batch_norm.batch_norm_forward({"x": cnn}, {"training": True}))]
    y = np.empty_like(x)
    threads = runtime.THREADS
    print(f"numpy:fast forward, {x.nbytes // 2**20} MiB float32{'':17s} {'1 thread':>9s} {f'{threads} threads':>10s} "
          f"{'best':>6s} {'50%':>6s} {'steal':>6s}")
    try:
        for label, call in cases:
            copy_ms = median_ms(lambda: np.copyto(y, x), repeats)
            runtime.THREADS = 1
            one = median_ms(call, repeats)
            runtime.THREADS = threads
            many = median_ms(call, repeats)
            print(f"{label:50s} {one:9.1f} {many:10.1f} {one / threads:6.1f} {2 * copy_ms:6.1f}{steal_note()}")
    finally:
        runtime.THREADS = threads
    print(f"ms; best = the one-thread time / {threads}, what perfect scaling would give; 50% = twice a copy of the\n"
          f"same array timed just before; steal during the {threads}-thread timing.")


def threads_against_processes(x: np.ndarray, repeats: int) -> None:
    """numpy:fast LayerNorm forward on two threads, then as two forked processes, each normalizing
    half the rows into shared memory: the difference is what the threads lose to the GIL."""
    if not hasattr(os, "fork") or runtime.THREADS != 2:
        return
    rows = x.size // 1024
    shared = [np.frombuffer(mmap.mmap(-1, x.nbytes), dtype=np.float32).reshape(rows, 1024) for _ in range(2)]
    xs, ys = shared
    xs[...] = x.reshape(rows, 1024)
    ys[...] = 0
    gamma, beta = np.full(1024, 1.5, np.float32), np.full(1024, 0.25, np.float32)
    threads_ms = median_ms(lambda: row_norms.layer_norm_forward(xs, gamma, beta, (1024,), 1e-5), repeats)

    def child(half: int, ready: int, go: int, done: int) -> None:
        part = slice(half * rows // 2, (half + 1) * rows // 2)
        runtime.THREADS = 1
        row_norms.new_output = lambda shape, dtype: ys[part]  # this process's half of the shared output
        row_norms.layer_norm_forward(xs[part], gamma, beta, (1024,), 1e-5)  # warm its scratch buffers
        os.write(ready, b"r")
        os.read(go, 1)
        row_norms.layer_norm_forward(xs[part], gamma, beta, (1024,), 1e-5)
        os.write(done, b"d")

    samples = []
    for _ in range(repeats):
        (ready_r, ready_w), (go_r, go_w), (done_r, done_w) = os.pipe(), os.pipe(), os.pipe()
        pids = []
        for half in (0, 1):
            pid = os.fork()
            if pid == 0:
                try:
                    child(half, ready_w, go_r, done_w)
                finally:
                    os._exit(0)
            pids.append(pid)
        os.read(ready_r, 1), os.read(ready_r, 1)
        start = time.perf_counter()
        os.write(go_w, b"gg")
        os.read(done_r, 1), os.read(done_r, 1)
        samples.append(time.perf_counter() - start)
        for pid in pids:
            os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, go_r, go_w, done_r, done_w):
            os.close(fd)
    processes_ms = 1e3 * float(np.median(samples))
    print(f"LayerNorm forward on 2 threads {threads_ms:.1f} ms; as 2 processes on the halves of the rows "
          f"{processes_ms:.1f} ms (no shared GIL)")


if __name__ == "__main__":
    main()
