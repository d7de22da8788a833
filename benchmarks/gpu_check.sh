#!/usr/bin/env bash
# One prepared GPU check for a session that has the device machine (see the developers' brief).
# Runs the CUDA code path (bf16 autocast, channels_last, memory freed between trials) end to end on
# the offline demo, once on CUDA and once on the CPU side by side, and prints the ratio.
# Usage (on the device machine, from the repo root): bash benchmarks/gpu_check.sh
# Results go to $OUT (or ./gpu_check_out); copy the numbers into benchmarks/RESULTS.md.
set -euo pipefail
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
make setup >/dev/null
BIN=.venv/bin
export AUTOTL_ZOO="$OUT/zoo"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
for arch in test_resnet test_vit; do
  $BIN/autotl pretrain builtin:digits-source --backbone timm/$arch --epochs 3 --device cuda \
    --out "$AUTOTL_ZOO/digits-$arch.safetensors" | tee -a "$OUT/log.txt"
done
for dev in cuda cpu; do
  start=$(date +%s.%N)
  $BIN/autotl search builtin:digits --space quick --backbones 'zoo/*' --trials 8 --epochs 6 --seed 0 \
    --device $dev --out "$OUT/run-$dev" --quiet | tee -a "$OUT/log.txt"
  end=$(date +%s.%N)
  echo "$dev $(echo "$end - $start" | bc)" | tee -a "$OUT/times.txt"
done
$BIN/python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
times = dict(line.split() for line in open(f"{out}/times.txt"))
for dev in ("cuda", "cpu"):
    s = json.load(open(f"{out}/run-{dev}/summary.json"))
    print(dev, "best", s["best"]["value"], "test", s["best"]["test"], "epochs", s["epochs_total"], "wall_s", times[dev])
print("cpu/cuda wall ratio", float(times["cpu"]) / float(times["cuda"]))
PY
