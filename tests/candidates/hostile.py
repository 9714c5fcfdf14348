"""Hostile candidates for `normspec validate` (tests/test_hardening.py): correct LayerNorms that spawn
a process, print megabytes, allocate gigabytes or sleep. Not a test module."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import torch

PIDFILE = os.environ.get("NORMSPEC_TEST_PIDFILE", "")


class SpawningLayerNorm(torch.nn.LayerNorm):
    """Starts `sleep 1000` once (its pid written to $NORMSPEC_TEST_PIDFILE), then behaves."""

    spawned = False

    def forward(self, x):
        if not SpawningLayerNorm.spawned:
            child = subprocess.Popen(["sleep", "1000"])
            if PIDFILE:
                with open(PIDFILE, "a") as f:
                    f.write(f"{os.getpid()} {child.pid}\n")
            SpawningLayerNorm.spawned = True
        return super().forward(x)


class SpawningSleepyLayerNorm(SpawningLayerNorm):
    """Spawns `sleep 1000`, then hangs in every call (for interrupt tests)."""

    def forward(self, x):
        super().forward(x)
        time.sleep(1000)


class ChattyLayerNorm(torch.nn.LayerNorm):
    """Prints 2 MB per call."""

    def forward(self, x):
        sys.stdout.write("x" * (2 << 20) + "\n")
        sys.stdout.flush()
        return super().forward(x)


class HogLayerNorm(torch.nn.LayerNorm):
    """Allocates (and touches) 5 GB per call."""

    def forward(self, x):
        big = np.ones(5 << 30, dtype=np.uint8)
        return super().forward(x) + float(big[-1] - 1)
