#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script for a short loan of a GPU machine:
#   1. the gpu-marked tests (tests/test_gpu.py),
#   2. `diffseg bench` at GlaS's paper settings (128 px, width 64, batch 8) with bf16 autocast and
#      in fp32, side by side in one run,
#   3. two nccl ranks on this machine's GPUs (a 2-worker trial needs two GPUs: nccl refuses two
#      ranks on one device, which is why studies refuse fractional GPUs for several workers),
#   4. the paper preset on GlaS for a few epochs of each stage per method, to time an epoch and
#      check the whole run (train, select on val, score test once) on the GPU.
#   5. k runs fused into one network against k separate ones (experiments/fused_bench.py, issue
#      18 item 5: on 2 CPU cores fusing was slower; fused seed groups wait on this figure),
#   6. (STEPS=benchmark, not in the default) the paper's method and the four baselines at the
#      paper's scale on GlaS at 10 %, 3 seeds, under the honest and the authors' protocol
#      (experiments/benchmarks/gpu_glas.yaml and gpu_glas_authors.yaml), run without Ray in
#      BENCH_LANES lanes on the one GPU, within BENCH_LIMIT seconds; finished cells are kept in
#      $OUT/bench and a later run continues from them. Measured on CPU only so far: at 5 min per
#      paper cell (an earlier H200 figure) the 30 cells need well over ten minutes.
# Each step has its own time limit and writes as it goes, so a cut-off run still reports.
#
#   OUT=results DATA=/path/to/shared/data bash experiments/gpu_checks.sh [EPOCHS] [LANES...]
# EPOCHS: epochs per stage, or `paper` for the shipped config's own (200 + 200). Each LANE is a
# comma-separated list of methods run one after another; lanes run side by side on the one GPU
# (the small 2D networks leave most of it idle). STEPS picks steps (default: all five).
set -u
OUT=${OUT:-gpu-checks}
DATA=${DATA:-${DIFFSEG_DATA:-../shared/data}}
PY=${PY:-python3}
EPOCHS=${1:-3}
shift || true
LANES=${*:-diffusion_cps supervised,mean_teacher ua_mt,cps}
STEPS=${STEPS:-tests bench nccl paper fused}
LANE_LIMIT=${LANE_LIMIT:-300}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 DIFFSEG_CACHE=${DIFFSEG_CACHE:-/tmp/diffseg-cache}
LOG="$OUT/checks.log"
step() { echo; echo "=== $* ($(date +%T))"; }

{
step environment
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__, 'bf16', torch.cuda.is_bf16_supported(), 'gpus', torch.cuda.device_count())"

if [[ $STEPS == *tests* ]]; then
step "gpu-marked tests"
timeout 240 $PY -m pytest -q -ra -m gpu tests/test_gpu.py -p no:cacheprovider
fi

if [[ $STEPS == *bench* ]]; then
step "diffseg bench, GlaS paper settings: bf16 autocast, then fp32"
timeout 120 $PY -m diffseg bench --config glas --steps 20 --output "$OUT/bench_bf16.json"
timeout 120 $PY -m diffseg bench --config glas --steps 20 --no-amp --output "$OUT/bench_fp32.json"
$PY - "$OUT" <<'EOF2'
import json, sys
a = {r["name"]: r for r in json.load(open(f"{sys.argv[1]}/bench_bf16.json"))["rows"]}
b = {r["name"]: r for r in json.load(open(f"{sys.argv[1]}/bench_fp32.json"))["rows"]}
print(f"{'row':<40} {'bf16/s':>8} {'fp32/s':>8} {'speed-up':>8} {'bf16 MB':>8} {'fp32 MB':>8}")
for k in a:
    print(f"{k:<40} {a[k]['steps_per_s']:8.2f} {b[k]['steps_per_s']:8.2f} {a[k]['steps_per_s'] / b[k]['steps_per_s']:8.2f}"
          f" {a[k]['peak_memory_mb']:8.0f} {b[k]['peak_memory_mb']:8.0f}")
EOF2
fi

if [[ $STEPS == *nccl* ]]; then
step "two nccl ranks on this machine"
cat > /tmp/nccl2.py <<'EOF2'
import os, tempfile, torch, torch.distributed as dist, torch.multiprocessing as mp
def rank(r, world, init):
    dev = torch.device("cuda", r % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    dist.init_process_group("nccl", init_method=f"file://{init}", rank=r, world_size=world)
    t = torch.full((4,), float(r + 1), device=dev)
    dist.all_reduce(t)
    print(f"rank {r} on {dev}: all_reduce -> {t.tolist()}", flush=True)
    dist.barrier(); dist.destroy_process_group()
if __name__ == "__main__":
  init = tempfile.mktemp()
  try:
      mp.spawn(rank, args=(2, init), nprocs=2)
      print("2 nccl ranks: ok")
  except Exception as exc:
      print(f"2 nccl ranks on {torch.cuda.device_count()} GPU(s) failed: {type(exc).__name__}: {str(exc)[-600:]}")
EOF2
timeout 90 $PY /tmp/nccl2.py
fi

if [[ $STEPS == *paper* ]]; then
sets=()
[[ $EPOCHS != paper ]] && sets=(pretrain.epochs=$EPOCHS train.epochs=$EPOCHS pretrain.warmup_epochs=1 train.warmup_epochs=1)
lane=0
for methods in $LANES; do
  lane=$((lane + 1))
  (
    start=$(date +%s)
    for m in ${methods//,/ }; do
      left=$((LANE_LIMIT - $(date +%s) + start))
      step "paper preset on GlaS, $m, epochs: $EPOCHS (lane $lane, ${left}s left)"
      (( left > 0 )) || continue
      # into a file, filtered after: data-loader workers that outlive a killed run would hold a
      # pipe open (the first loan's lanes waited past their limit on one)
      timeout -k 10 $left $PY -m diffseg train --config glas --data-root "$DATA" --loader-workers 3 \
          --run-dir "/tmp/paper-$m" --set method=$m "${sets[@]}" > "/tmp/paper-$m.log" 2>&1
      echo "exit $?"
      grep -v "^\\[pretrain [0-9]*[1-9]/\\|^\\[train [0-9]*[1-9]/" "/tmp/paper-$m.log"
      cat "/tmp/paper-$m/summary.json" 2>/dev/null
    done
  ) > "$OUT/lane_$lane.log" 2>&1 &
done
wait
tail -n 4 "$OUT"/lane_*.log
fi
if [[ $STEPS == *fused* ]]; then
step "fused runs against separate runs, one training step"
timeout 180 $PY -m experiments.fused_bench --device cuda --settings small,mid,paper --k 2,4,8 --output "$OUT/fused_gpu.json"
fi
if [[ $STEPS == *benchmark* ]]; then
for b in gpu_glas gpu_glas_authors; do
  step "benchmark $b, ${BENCH_LANES:-3} lanes on the GPU"
  timeout -k 10 ${BENCH_LIMIT:-540} $PY -m experiments.benchmark $b --local ${BENCH_LANES:-3} --device cuda \
      --storage "$OUT/bench" --data-root "$DATA"
  echo "exit $?"
  cat "$OUT/bench/$b/table.md" 2>/dev/null
done
fi
step done
} 2>&1 | tee "$LOG"
