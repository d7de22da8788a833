#!/usr/bin/env bash
# One prepared check for a machine with an NVIDIA GPU (under 8 minutes on one GPU):
#   1. the test suite's GPU-marked tests (tests/test_gpu.py),
#   2. the overhead benchmark on mid-size timm models at 224 px (autotl's epoch vs a plain loop),
#   3. the feature-cache benchmark at 224 px,
#   4. a short search on the offline digits demo, on CUDA,
# then prints one summary table. Copy it into benchmarks/RESULTS.md under "GPU check".
#
# Usage, from the repository root:
#   bash benchmarks/gpu_check.sh            # on the GPU machine (sets up .venv first)
#   PYTHON=python3 bash benchmarks/gpu_check.sh   # a machine with no package registry: use an
#                                           # interpreter that already has torch and autotl's wheel
#   bash benchmarks/gpu_check.sh --dry-run  # the same steps on the CPU with tiny settings (tests use this)
# Output goes to $OUT (default gpu_check_out/). A step that fails is reported in the table; the rest still run.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; fi
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-.venv/bin/python}; DEV=cpu; MODELS=test_resnet,test_vit; SIZE=32
  EPOCHS=1; REPEATS=1; IMAGES=64; TRIALS=2; SEARCH_EPOCHS=1; PRETRAIN_EPOCHS=1
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; else make setup >/dev/null; PY=.venv/bin/python; fi
  DEV=cuda; MODELS=resnet50,vit_base_patch16_224; SIZE=224
  EPOCHS=2; REPEATS=3; IMAGES=1024; TRIALS=12; SEARCH_EPOCHS=6; PRETRAIN_EPOCHS=3
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
export AUTOTL_ZOO="$OUT/zoo" HF_HUB_OFFLINE=1
start=$(date +%s)

echo "== 1. GPU-marked tests"
$PY -m pytest -q -rP -m gpu tests/test_gpu.py -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt" | tail -15 || true

echo "== 2. overhead (autotl epoch / plain loop)"
$PY benchmarks/overhead.py --device "$DEV" --models "$MODELS" --size "$SIZE" --epochs "$EPOCHS" \
  --repeats "$REPEATS" --warmup 1 --images "$IMAGES" 2>&1 | tee "$OUT/overhead.txt" | tail -6 || true

echo "== 3. feature cache (cached / uncached trial)"
$PY benchmarks/feature_cache.py --device "$DEV" --models "$MODELS" --size "$SIZE" --epochs 4 \
  --repeats "$REPEATS" --images "$IMAGES" 2>&1 | tee "$OUT/feature_cache.txt" | tail -6 || true

echo "== 4. short search on the digits demo"
for arch in test_resnet test_vit; do
  [ -f "$AUTOTL_ZOO/digits-$arch.safetensors" ] || $PY -m autotl pretrain builtin:digits-source \
    --backbone "timm/$arch" --epochs "$PRETRAIN_EPOCHS" --device "$DEV" --out "$AUTOTL_ZOO/digits-$arch.safetensors" || true
done
s0=$(date +%s)
$PY -m autotl search builtin:digits --space quick --backbones 'zoo/digits-*' --trials "$TRIALS" \
  --epochs "$SEARCH_EPOCHS" --seed 0 --device "$DEV" --out "$OUT/search" --quiet --no-report 2>&1 | tee "$OUT/search.txt" | tail -4 || true
s1=$(date +%s)

$PY - "$OUT" "$DEV" "$((s1 - s0))" "$(( $(date +%s) - start ))" <<'PY'
import json, re, sys
out, dev, search_s, total_s = sys.argv[1:5]
import os
def last_table(name):
    return [l for l in open(f"{out}/{name}.txt") if l.startswith("| ") and not l.startswith("| model") and "---" not in l]
def failed(name):
    print(f"| {name} | FAILED: see {out}/{name}.txt |")
tests = (open(f"{out}/gpu_tests.txt").read().strip().splitlines() or ["FAILED: no output"])[-1]
print("\n| check | result |\n|---|---|")
print(f"| device | {dev} |")
print(f"| GPU-marked tests | {tests} |")
for row in last_table("overhead") or failed("overhead") or []:
    cells = [c.strip() for c in row.strip().strip('|').split('|')]
    print(f"| overhead {cells[0]} at {cells[2]} | autotl {cells[5]} ms, plain {cells[6]} ms per epoch: "
          f"ratio {cells[7]} (epochs 2+: {cells[9]}) |")
for row in last_table("feature_cache") or failed("feature_cache") or []:
    cells = [c.strip() for c in row.strip().strip('|').split('|')]
    print(f"| cache {cells[0]} depth {cells[1]} | cold/uncached {cells[6]}, warm/uncached {cells[7]} |")
if not os.path.isfile(f"{out}/search/summary.json"):
    failed("search")
else:
    summary = json.load(open(f"{out}/search/summary.json"))
    best = summary["best"] or {}
    print(f"| search | {summary['trials']}, best val {best.get('value')}, test {(best.get('test') or {}).get('accuracy')}, "
      f"{summary['epochs_total']} epochs, {search_s} s |")
print(f"| whole check | {total_s} s |")
PY
