#!/usr/bin/env bash
# Shows that the README's regression gate fails on a real slowdown, not only that it runs.
#
# In a throwaway clone of HEAD, one commit makes numpy:fast's LayerNorm forward do its work four
# times; `asv continuous --factor 1.1 HEAD^ HEAD` over the Forward timings of that one norm and
# backend must then exit 1 (PERFORMANCE DECREASED). It builds one virtualenv from asv.conf.json
# and the two commits' wheels: about 3 minutes on 2 cores. Needs the `bench` extra and git.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

git clone --quiet "$root" "$work/repo"
cd "$work/repo"
cat >> impls/fast_numpy/row_norms.py <<'PY'


# Seeded by benchmarks/gate_selftest.sh: the same LayerNorm forward, done four times.
_unseeded_layer_norm_forward = layer_norm_forward


def layer_norm_forward(*args, **kwargs):
    for _ in range(3):
        _unseeded_layer_norm_forward(*args, **kwargs)
    return _unseeded_layer_norm_forward(*args, **kwargs)
PY
git -c user.name=gate-selftest -c user.email=gate-selftest@localhost commit --quiet -am "seeded 4x slowdown"

asv machine --yes >/dev/null
set +e
NORMSPEC_ASV_NORMS=layer_norm NORMSPEC_ASV_BACKENDS=numpy:fast \
    asv continuous --factor 1.1 --bench 'bench_norms\.Forward\.time_forward' HEAD^ HEAD 2>&1 | tee "$work/continuous.log"
rc=${PIPESTATUS[0]}
set -e
# asv also exits 1 when the regex selects nothing or a benchmark fails: require the verdict itself.
if [[ $rc != 1 ]] || ! grep -q "PERFORMANCE DECREASED" "$work/continuous.log"; then
    echo "gate self-test FAILED: asv continuous exited $rc without reporting the seeded 4x slowdown" >&2
    exit 1
fi
echo "gate self-test passed: asv continuous exited 1 on a seeded 4x slowdown"
