"""Time, peak memory and effective bandwidth of every normalization on every backend.

- `Forward`, `ForwardBackward`: time_ and peakmem_ over shapes from 1 MB to 8 MB in float32.
- `HalfPrecision`: time_ in float16 at 1 MB (float32 accumulation paths).
- `Roofline`: at ~64 MB (beyond the caches) the effective GB/s from the byte model
  (`normspec.bench.BYTE_MODELS`) and its percentage of np.copyto's bandwidth on the same size.
The forward+backward pass is the backend's gradient call (see `normspec.bench`). Timed calls
synchronize the device (torch:cuda) so queued kernels are counted.
"""
from __future__ import annotations

from . import common

PARAM_NAMES = ["norm", "backend", "shape", "dtype"]


class _Base:
    param_names = PARAM_NAMES
    pass_ = "forward"
    timeout = 300

    def setup(self, norm, backend, shape, dtype):
        self.p = common.prepare(norm, backend, shape, dtype, self.pass_)
        if self.pass_ != "forward" and not getattr(self.p.backend, "differentiates", True):
            raise NotImplementedError(f"{backend} is forward-only")  # asv: skipped, not failed
        self.sync = self.p.backend.synchronize

    def _run(self):
        self.p.call()
        self.sync()


class Forward(_Base):
    params = [common.NORMS, common.BACKENDS, common.SMALL_SHAPES + common.MEDIUM_SHAPES, ["float32"]]

    def time_forward(self, *args):
        self._run()

    def peakmem_forward(self, *args):
        self._run()


class ForwardBackward(_Base):
    params = [common.NORMS, common.BACKENDS, common.SMALL_SHAPES + common.MEDIUM_SHAPES, ["float32"]]
    pass_ = "forward+backward"

    def time_forward_backward(self, *args):
        self._run()

    def peakmem_forward_backward(self, *args):
        self._run()


class HalfPrecision(_Base):
    params = [common.NORMS, common.BACKENDS, common.SMALL_SHAPES, ["float16"]]

    def time_forward(self, *args):
        self._run()


class HalfPrecisionBackward(_Base):
    params = [common.NORMS, common.BACKENDS, common.SMALL_SHAPES, ["float16"]]
    pass_ = "forward+backward"

    def time_forward_backward(self, *args):
        self._run()


class Roofline(_Base):
    params = [common.NORMS, common.BACKENDS, common.LARGE_SHAPES, ["float32"]]

    def track_forward_gbps(self, *args):
        return self.p.bytes / common.timed(self.p) / 1e9

    track_forward_gbps.unit = "GB/s"

    def track_forward_pct_of_copy(self, *args):
        """GB/s over np.copyto's, their samples taken alternately (bench.time_against_copy)."""
        samples, copy_gbps = common.bench.time_against_copy(self.p, common.bench.copy_call(self.p.input_bytes),
                                                            repeats=3, min_sample_s=0.01)
        return 100.0 * self.p.bytes / common.bench.median_iqr(samples)[0] / 1e9 / copy_gbps

    track_forward_pct_of_copy.unit = "% of np.copyto GB/s"
