#!/usr/bin/env bash
# CI smoke for the asv suite: validate every benchmark, then really run a small slice of them.
#
#   asv check                       imports the suite and validates every benchmark's signature
#   asv run --quick --dry-run       runs each selected benchmark once in this interpreter and exits
#                                   2 if any of them raised (skips via NotImplementedError are fine)
#
# The slice (layer_norm and batch_norm on every backend, every benchmark class) takes about a
# minute on 2 cores; the whole grid takes about 9. Narrow or widen it with NORMSPEC_ASV_NORMS /
# NORMSPEC_ASV_BACKENDS (comma-separated) and NORMSPEC_ASV_SMOKE_BENCH (an asv --bench regex), or
# set NORMSPEC_ASV_SMOKE_ALL=1 for the whole grid. Needs the `bench` extra.
set -euo pipefail
cd "$(dirname "$0")/.."
bench=()
if [[ "${NORMSPEC_ASV_SMOKE_ALL:-0}" != 1 ]]; then
    export NORMSPEC_ASV_NORMS="${NORMSPEC_ASV_NORMS:-layer_norm,batch_norm}"
    bench=(--bench "${NORMSPEC_ASV_SMOKE_BENCH:-.}")
fi
asv machine --yes >/dev/null
asv check --python=same
asv run --python=same --quick --dry-run --launch-method forkserver --durations 5 "${bench[@]}" "$@"
