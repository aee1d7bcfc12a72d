#!/usr/bin/env bash
# Measure the honest floor's constants on this machine's GPU, print them, and check the
# floor end to end on one small cell (about a minute on an H100/H200, data made here).
#
#   bash benchmarks/device_floor.sh            # on the device, in the repository root
#
# Writes $OUT/floor-constants.json (the constants, for `spdnn bench --floor-constants`),
# $OUT/floor-tests.txt and $OUT/floor-bench.{json,txt}. What to look for: the constants
# in order (block barrier < cluster barriers < grid barrier; the graph launch of the
# order of a microsecond; L2 bandwidth above device memory's; fp32 adds about twice fp64),
# the GPU tests of tests/test_floor.py passing, and in the bench table every xfloor >= 1
# (a "!" or "model is wrong" line means the model undercounts nothing and overcounts
# something: a bug in the floor).
set -uo pipefail
OUT=${OUT:-/tmp/spdnn-floor}
mkdir -p "$OUT"
export SPDNN_CACHE_DIR=${SPDNN_CACHE_DIR:-/tmp/spdnn-cache}
status=0

python3 -m pip install --no-deps --no-build-isolation -e . >"$OUT/pip.txt" 2>&1 || { tail -5 "$OUT/pip.txt"; exit 2; }
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,memory.total,driver_version --format=csv,noheader || true

echo "== constants (benchmarks/floor_constants.py)"
timeout 120 python3 benchmarks/floor_constants.py --out "$OUT/floor-constants.json" || status=1

echo "== GPU tests of the floor (probes, the cuda engine's schedule report)"
timeout 180 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_floor.py >"$OUT/floor-tests.txt" 2>&1 || status=1
tail -3 "$OUT/floor-tests.txt"

echo "== spdnn bench 1024x120, 1024x1920 with these constants (xfloor, xfloor(v1))"
timeout 240 python3 -m spdnn bench --cells 1024x120,1024x1920 --engines cuda --merge on,off --repeats 3 \
    --floor-constants "$OUT/floor-constants.json" --no-progress --json-out "$OUT/floor-bench.json" \
    >"$OUT/floor-bench.txt" 2>&1 || status=1
cat "$OUT/floor-bench.txt"
python3 - "$OUT/floor-bench.json" <<'EOF' || status=1
import json, sys
doc = json.load(open(sys.argv[1]))
for cell in doc["cells"]:
    for label, e in cell["engines"].items():
        f = e["floor"]
        print(f"{cell['neurons']}x{cell['layers']} {label}: {e['median_seconds'] * 1e3:.3f} ms; floor "
              f"{f['seconds'] * 1e3:.4f} ms = max(traffic {f['traffic_s'] * 1e3:.4f}, chain {f['chain_s'] * 1e3:.4f}) "
              f"[activations {f['activation_s'] * 1e3:.4f}, weights {f['weight_s'] * 1e3:.4f}, adds "
              f"{f['arithmetic_s'] * 1e3:.4f}, barriers {f['barrier_s'] * 1e3:.4f}, grid {f['grid_s'] * 1e3:.4f}, "
              f"launch {f['launch_s'] * 1e3:.4f}; {f['dependences']}]; xfloor {e['floor_ratio']:.2f}, "
              f"v1 {e['floor_ratio_v1']:.2f}; {e['floor_check']}")
EOF
exit $status
