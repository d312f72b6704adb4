#!/usr/bin/env bash
# One prepared GPU session: times several versions of the training step side by side, in one run
# on one card (timings compare only within a run). Each line of $OUT/results.jsonl is one
# tools/benchmark.py summary; a deadline skips what would not finish in the lease.
#
#   OUT=/tmp/out BASE=.bench_base bash tools/gpu_compare.sh
#
# BASE (optional): a copy of an earlier version's lfcsr_jax/, configs/ and tools/ to time as the
# "before" (e.g. `git archive <commit> lfcsr_jax configs tools | tar -x -C .bench_base`).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_compare}
BASE=${BASE:-}
DEADLINE_S=${DEADLINE_S:-480}
LOGS=$(mktemp -d)  # stderr of each run; their tails are gathered into $OUT/errors.txt
mkdir -p "$OUT"
START=$(date +%s)
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv >"$OUT/gpu.txt" 2>&1

run() {  # run NAME [benchmark args...]: one benchmark process, its JSON line tagged with NAME
  local name=$1; shift
  local elapsed=$(( $(date +%s) - START ))
  if (( elapsed > DEADLINE_S )); then echo "skip $name (deadline, ${elapsed}s)"; return; fi
  echo "== $name (t=${elapsed}s)"
  local line
  line=$(timeout $(( DEADLINE_S + 60 - elapsed )) "$@" 2>"$LOGS/$name.err" | tail -1)
  if [[ -z "$line" ]]; then echo "{\"name\": \"$name\", \"error\": \"no output\"}" >>"$OUT/results.jsonl";
  else echo "{\"name\": \"$name\", \"summary\": $line}" >>"$OUT/results.jsonl"; fi
  echo "$line" | cut -c1-600
}

B="python tools/benchmark.py --dtypes=bfloat16 --batches=16 --steps=10"
run new_loop $B --loop=30
run new_unrolled $B --skip=inference --set=model.han_block_unroll=20 --set=model.clique_unroll=15
if [[ -n "$BASE" ]]; then
  CB="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"
  run base_cmdbuf env XLA_FLAGS="$CB" python "$BASE/tools/benchmark.py" --dtypes=bfloat16 \
    --batches=16 --steps=10 --skip=inference
fi
# The 'capture' flag set (lfcsr_jax/runtime.py): the whole step in one CUDA graph. Timed with
# loops and with unrolled blocks (8,098 vs 17,888 kernels per ADMM step, --aot=h200), and
# checked for the same numbers as the default set before it becomes the default.
UNROLL="--set=model.han_block_unroll=20 --set=model.clique_unroll=15"
run capture_loop env LFCSR_RUNTIME_FLAGS=capture $B --loop=30
run capture_unrolled env LFCSR_RUNTIME_FLAGS=capture $B --skip=inference $UNROLL
run capture_inference_unrolled env LFCSR_RUNTIME_FLAGS=capture $B --inference $UNROLL
run capture_check python tools/capture_check.py --out="$LOGS/capture"
run new_profile_nocmdbuf $B --skip=train,inference --phases=admm --runtime_flags=0 \
  --set=model.han_block_unroll=20 --set=model.clique_unroll=15 --profile="$LOGS/prof"
run new_partial $B --skip=inference --set=model.han_block_unroll=5 --set=model.clique_unroll=5
echo "total $(( $(date +%s) - START ))s"
for f in "$LOGS"/*.err; do echo "== $f"; tail -c 3000 "$f"; done >"$OUT/errors.txt"
cp "$LOGS"/prof/profile_*.json "$OUT/" 2>/dev/null
python - "$OUT/results.jsonl" <<'EOF'
import json, sys
keys = ("pretrain_step_ms", "admm_step_ms", "pretrain_compile_s", "admm_compile_s",
        "inference_ms", "admm_loop_ms", "admm_loop_overhead", "pretrain_loop_overhead",
        "peak_memory_gib")
for line in open(sys.argv[1]):
    record = json.loads(line)
    if "summary" not in record:
        print(record); continue
    for row in record["summary"]["results"]:
        short = {k: round(row[k], 3) for k in keys if isinstance(row.get(k), (int, float))}
        prof = row.get("profile", {}).get("admm")
        if prof:
            short.update({f"prof_{k}": round(prof[k], 2) for k in
                          ("wall_ms_per_step", "busy_ms_per_step", "kernels_per_step") if k in prof})
        print(record["name"], json.dumps(short), row.get("error", "")[-300:])
EOF
