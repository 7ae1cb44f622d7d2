#!/usr/bin/env bash
# On the lent GPU machine, from the repository root, after .gpu/a, .gpu/b and .gpu/c have been carried
# (tests/benchmarks/gpu_stage.py). Usage:
#   bash tests/benchmarks/gpu_run.sh [EXPERIMENT,...]   throughput benchmark + these experiments (default: first slice)
#   bash tests/benchmarks/gpu_run.sh pipeline           `kdrank run --profile full`, timed (the compiled KFP pipeline)
# Writes at most 8 files under $OUT (the device tool's limit): no checkpoints.
set -euo pipefail
OUT=${OUT:-/tmp/kdrank-out}
MODE=${1:-baseline-random,baseline-bm25,baseline-biencoder,teacher-soft,student-human,student-margin-0x,student-margin-16x}
WORK=/tmp/kdrank-gpu
PY=${PYTHON:-python3}  # the GPU image's python3 holds PyTorch; there may be no plain `python`
mkdir -p "$WORK" "$OUT"
$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    .gpu/a/wheels/*.whl .gpu/b/wheels/*.whl
cat .gpu/b/teacher.gguf.b .gpu/c/teacher.gguf.c > "$WORK/SmolLM2-135M-Instruct.Q4_1.gguf"
$PY - "$WORK" <<'PY'
import sys, torch
from transformers import AutoModel, AutoTokenizer
work = sys.argv[1]
AutoModel.from_pretrained(".gpu/a/minilm", dtype=torch.float32).save_pretrained(f"{work}/minilm")
AutoTokenizer.from_pretrained(".gpu/a/minilm").save_pretrained(f"{work}/minilm")
PY
export KDRANK_STUDENT_BASE="$WORK/minilm" KDRANK_TEACHER_GGUF="$WORK/SmolLM2-135M-Instruct.Q4_1.gguf"
export KDRANK_CACHE="$WORK/cache" HF_HUB_OFFLINE=1 PYTHONPATH="$WORK/site:." PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,memory.total --format=csv || echo "no nvidia-smi: CPU dry run") | tee "$OUT/gpu.txt"
# GPU utilisation every 2 s for the rest of the script: low utilisation during a training run means the
# host (Python, kernel launches) and not the GPU sets its rate.
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 > "$OUT/gpu-util.csv" &
    trap 'kill $! 2>/dev/null || true' EXIT
fi
rc=0
if [ "$MODE" = pipeline ]; then
    start=$SECONDS
    timeout "${KDRANK_PIPELINE_TIMEOUT:-560}" $PY -m pipelines.cli run --profile "${KDRANK_PROFILE:-full}" \
        --data .gpu/a/data/train.csv --format homedepot --output "$WORK/pipeline" > "$OUT/pipeline.log" 2>&1 || rc=$?
    echo "kdrank run --profile ${KDRANK_PROFILE:-full}: exit $rc after $((SECONDS - start)) s" | tee "$OUT/pipeline-time.txt"
    cp "$WORK/pipeline/run.json" "$OUT/" 2>/dev/null || true
    tr '\r' '\n' < "$OUT/pipeline.log" | grep -v '%|' | tail -40
    exit 0
fi
timeout "${KDRANK_BENCH_TIMEOUT:-90}" $PY tests/benchmarks/bench_throughput.py --data .gpu/a/data/train.csv \
    --seconds "${KDRANK_BENCH_SECONDS:-5}" --output "$OUT/throughput-gpu.md" || echo "throughput benchmark failed or timed out" >&2
timeout "${KDRANK_EXPERIMENT_TIMEOUT:-420}" $PY -m pipelines.cli experiment run --profile full \
    --data .gpu/a/data/train.csv --format homedepot --output "$WORK/results-full" --only "$MODE" \
    > "$OUT/experiment.log" 2>&1 || rc=$?
[ "$rc" -eq 0 ] || echo "experiment run stopped (exit $rc: timeout or error); finished runs are kept" >&2
tr '\r' '\n' < "$OUT/experiment.log" | grep -v '%|' | tail -40
cp "$WORK/results-full/results.jsonl" "$OUT/" 2>/dev/null || true
cp "$WORK/results-full/data/summary.json" "$OUT/data-summary.json" 2>/dev/null || true
