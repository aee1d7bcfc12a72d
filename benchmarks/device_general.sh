#!/usr/bin/env bash
# Issue 17 points 5 and 8 on one GPU: the general path of the cuda engine and the cusparse
# baseline (compile, tests), then the general bench cells against PyTorch. About 6 minutes
# on one H100. Run from the repository root on a fresh device machine:
#
#     bash benchmarks/device_general.sh            # results under $OUT (default ./out)
#
# Steps (each one's status is printed in the summary at the end; a failed step does not stop
# the next ones):
#   1. install spdnn (editable, no dependencies: the machine has CuPy, PyTorch, scipy, numba)
#   2. compile every general.cu instance the tests use through CuPy (NVRTC) on this card
#   3. the gpu tests of the general path: python3 -m pytest -q -m gpu -k general
#   4. the challenge path still passes (one quick official-subset and random-network check)
#   5. spdnn bench --cells general --json-out $OUT/general.json (compact table printed)
set -u
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
declare -A STATUS
step() {  # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    STATUS[$name]="rc=$rc in $((SECONDS - t0)) s$([ $rc = 124 ] && echo ' (TIMED OUT)')"
    echo "=== $name: ${STATUS[$name]}"
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv,noheader | tee "$OUT/gpu.txt"
step install 120 python3 -m pip install -q --no-deps --no-build-isolation -e .

step compile 100 python3 - <<'EOF'
import sys, time
sys.path.insert(0, "tests")
import numpy as np
from factories import GENERAL_CASES, general_case
from spdnn.engines import get_engine
t0 = time.time()
rng = np.random.default_rng(0)
for case in GENERAL_CASES:
    net, feats = general_case(rng, case, samples=8)
    for precision in ("fp32", "fp64"):
        eng = get_engine("cuda", precision=precision)
        eng.prepare(net)                    # compiles every instance of this network
        print(f"{case} {precision}: {sorted(set(eng._general.b.k))}", flush=True)
print(f"compiled in {time.time() - t0:.1f} s")
EOF

step tests 150 python3 -m pytest -q --maxfail=10 -m gpu -k general -p no:cacheprovider tests/test_cuda_general_gpu.py

step challenge 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_cuda_engine.py \
    -k "official_subset and auto or random_networks_fp64_exact"

# the report is rewritten after every cell: a timeout keeps the cells done
step bench 230 python3 -m spdnn bench --cells general --repeats 3 --json-out "$OUT/general.json"

echo
echo "================ summary ================"
cat "$OUT/gpu.txt"
for name in install compile tests challenge bench; do
    echo "$name: ${STATUS[$name]:-not run}"
done
echo "--- bench table ---"
if grep -q '^general networks' "$OUT/bench.log"; then
    sed -n '/^general networks/,$p' "$OUT/bench.log"
else                                  # timed out: the cells done, from the JSON
    python3 -c "import json,sys; from spdnn.bench_general import format_general; print(format_general(json.load(open(sys.argv[1]))))" \
        "$OUT/general.json" 2>&1 | tail -40
fi
grep -E "FAILED|Error|error:" "$OUT/tests.log" "$OUT/challenge.log" "$OUT/compile.log" 2>/dev/null | head -20
