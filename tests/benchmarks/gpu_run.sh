#!/usr/bin/env bash
# On the lent GPU machine, from the repository root, with the carry groups of tests/benchmarks/gpu_stage.py
# (.gpu/a and any .gpu/a2, ... (MiniLM's other parts), then .gpu/b, .gpu/c, ... (the GGUF parts), and .gpu/k for
# the pipeline, over back-to-back calls, in the order gpu_stage.py prints; what /tmp holds stays while the machine
# is warm).
# Usage: bash tests/benchmarks/gpu_run.sh STEP [STEP ...], steps run in order:
#   runs=NAME,NAME   `kdrank experiment run --profile full --only NAME,NAME` (needs .gpu/a and any .gpu/a2, ...;
#                    teacher runs every GGUF part)
#   best=ENSEMBLE    runs= the ensemble's largest-size student, then that of its member with the lowest
#                    validation loss (chosen on the validation queries, not the test ones; step 6's call 4)
#   setup            nothing beyond the set-up every call does (wheels, fp32 MiniLM, the joined GGUF)
#   restore          the split, then `kdrank experiment restore` of KDRANK_ARCHIVE (docs/results/archive/PROFILE,
#                    which travels with the checkout): earlier sessions' rows, and their teacher labels, which
#                    distillation runs use instead of training the teacher again when they fit
#   prepare          `kdrank experiment prepare`: the split and the plan's largest augmented set (needs MiniLM
#                    only), so the call that completes MiniLM makes them and the teacher's call starts labelling
#   archive          `kdrank experiment archive` of the runs into a copy of KDRANK_ARCHIVE, returned as
#                    archive.tgz (rows and scores, in place of experiment.tgz) and labels-NAME.tgz (one per label
#                    set the checkout's archive lacks, ~7 MB at 16x); put together here by gpu_archive.py
#   prepare-bg       `prepare` in the background, so the steps after it (runs=teacher-soft: the teacher needs
#                    no augmented set) overlap it; `wait` (or `archive`, or the script's end) waits for it.
#                    A run that needs the augmented set must come after `wait`: it would make the set again
#   wait             wait for a background prepare; its exit status and summary go to the log
#   check            import what `kdrank run` needs (kfp and the Google clients from .gpu/k)
#   bench            teacher vs student throughput and the efficiency ratio (needs the GGUF parts)
#   pipeline         `kdrank run --profile full` (the compiled KFP pipeline), timed (needs the GGUF parts, .gpu/k);
#                    if it fails within a minute (a missing package, say), KDRANK_FALLBACK's runs run instead.
#                    Its teacher becomes the plan's teacher-soft (adopt-teacher), so runs=student-margin-...
#                    after it label with that teacher instead of training another
# Environment: KDRANK_PROFILE (full), KDRANK_DATA (.gpu/a/data/train.csv.gz), KDRANK_*_TIMEOUT (seconds per
# step), KDRANK_DEADLINE (seconds from the script's start by which every runs= and prepare step is stopped, so
# that the archive step after them still fits in the call; a cut prepare leaves no set, and a run that needs it
# makes it), KDRANK_SKIP_WHEELS=1 and PYTHON=... for a CPU dry run with this checkout's virtualenv.
# A runs= step cut by its limit (timeout's SIGTERM) saves its training state (components/resume.py) in $WORK;
# the same runs= in a later call on the warm machine resumes it. So does `pipeline`: `kdrank run` passes the
# SIGTERM on to its running step and waits while a training step saves (pipelines/stopping.py), and the next
# `pipeline` on the warm machine goes on from $WORK/pipeline/pipeline-root/.training-state.
# Writes at most 8 files under $OUT (the device tool's limit), bundling run folders as .tgz: no checkpoints.
set -euo pipefail
OUT=${OUT:-/tmp/kdrank-out}
WORK=${KDRANK_WORK:-/tmp/kdrank-gpu}
PY=${PYTHON:-python3}  # the GPU image's python3 holds PyTorch; there may be no plain `python`
PROFILE=${KDRANK_PROFILE:-full}
DATA=${KDRANK_DATA:-.gpu/a/data/train.csv.gz}
ARCHIVE=${KDRANK_ARCHIVE:-docs/results/archive/$PROFILE}
[ $# -gt 0 ] || { echo "usage: gpu_run.sh STEP [STEP ...] (see the top of this file)" >&2; exit 2; }
mkdir -p "$WORK" "$OUT"

# Set-up, each part once per machine: the wheels of every carry group present, fp32 MiniLM, the GGUF file.
for wheels in .gpu/*/wheels; do
    group=$(basename "$(dirname "$wheels")")
    if [ -z "${KDRANK_SKIP_WHEELS:-}" ] && [ -d "$wheels" ] && [ ! -e "$WORK/wheels-$group" ]; then
        $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
            "$wheels"/*.whl && touch "$WORK/wheels-$group"
    fi
done
join_parts() {  # $1: NAME, $2: file; joins .gpu/*/NAME.partIofN into it once every part has arrived
    local first n i
    first=$(compgen -G ".gpu/*/$1.part1of*" | head -1 || true)
    { [ -e "$2" ] || [ -z "$first" ]; } && return 0
    n=${first##*of}
    [ "$(compgen -G ".gpu/*/$1.part*of$n" | wc -l)" -eq "$n" ] || { echo "$1: waiting for more of its $n parts"; return 0; }
    for i in $(seq 1 "$n"); do cat .gpu/*/"$1.part${i}of$n"; done > "$2.part" && mv "$2.part" "$2"
}
MINILM=.gpu/a/minilm  # MiniLM's fp16 weights travel whole, or in parts (.gpu/a, .gpu/a2, ...) beside a large checkout
if [ ! -e "$MINILM/model.safetensors" ] && [ -d "$MINILM" ]; then
    mkdir -p "$WORK/minilm-fp16" && cp "$MINILM"/*.json "$WORK/minilm-fp16/"
    MINILM="$WORK/minilm-fp16"
    join_parts minilm.safetensors "$MINILM/model.safetensors"
fi
if [ ! -e "$WORK/minilm/config.json" ] && [ -e "$MINILM/model.safetensors" ]; then
    $PY - "$WORK" "$MINILM" <<'PY'
import sys, torch
from transformers import AutoModel, AutoTokenizer
work, source = sys.argv[1:]
AutoModel.from_pretrained(source, dtype=torch.float32).save_pretrained(f"{work}/minilm")
AutoTokenizer.from_pretrained(source).save_pretrained(f"{work}/minilm")
PY
fi
GGUF="$WORK/SmolLM2-135M-Instruct.Q4_1.gguf"
join_parts teacher.gguf "$GGUF"
export KDRANK_CACHE="$WORK/cache" HF_HUB_OFFLINE=1
[ -e "$WORK/minilm/config.json" ] && export KDRANK_STUDENT_BASE="$WORK/minilm"
[ -e "$GGUF" ] && export KDRANK_TEACHER_GGUF="$GGUF"
export PYTHONPATH="$WORK/site:." PYTHONUNBUFFERED=1
(nvidia-smi --query-gpu=name,memory.total --format=csv || echo "no nvidia-smi: CPU dry run") | tee "$OUT/gpu.txt"
# GPU utilisation every 2 s while the steps run: low utilisation during training means the host (Python,
# kernel launches), not the GPU, sets the rate.
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 > "$OUT/gpu-util.csv" &
    UTIL_PID=$!
    trap 'kill $UTIL_PID 2>/dev/null || true' EXIT
fi

within_deadline() {  # $1: a step's own limit (s); prints it, cut to what KDRANK_DEADLINE leaves of the call
    local limit=$1
    if [ -n "${KDRANK_DEADLINE:-}" ] && [ $((KDRANK_DEADLINE - SECONDS)) -lt "$limit" ]; then
        limit=$((KDRANK_DEADLINE - SECONDS))
    fi
    echo $((limit > 0 ? limit : 0))
}

runs() {  # $1: comma-separated experiment names
    local rc=0 start=$SECONDS limit
    limit=$(within_deadline "${KDRANK_EXPERIMENT_TIMEOUT:-420}")
    if [ "$limit" -lt 5 ]; then echo "runs=$1: not started, KDRANK_DEADLINE (${KDRANK_DEADLINE:-}) s reached"; return 0; fi
    timeout "$limit" $PY -m pipelines.cli experiment run --profile "$PROFILE" \
        --data "$DATA" --format homedepot --output "$WORK/results-$PROFILE" --only "$1" \
        >> "$OUT/experiment.log" 2>&1 || rc=$?
    echo "experiment run --only $1: exit $rc after $((SECONDS - start)) s" >> "$OUT/experiment.log"
    tr '\r' '\n' < "$OUT/experiment.log" | grep -v '%|' | tail -25
    # Metrics, per-pair test scores and settings of every finished run; checkpoints stay behind.
    (cd "$WORK/results-$PROFILE" && find . -maxdepth 1 -name results.jsonl; find eval -type f;
        find data -maxdepth 1 -name summary.json; find models -maxdepth 2 -name kdrank.json) 2>/dev/null \
        > "$WORK/experiment-files.txt"
    tar -czf "$OUT/experiment.tgz" -C "$WORK/results-$PROFILE" -T "$WORK/experiment-files.txt" || true
}

best() {  # $1: an ensemble of the plan; its student and its best-on-validation member's, as one runs= step
    local names
    names=$($PY -c "import sys; from pipelines.experiments import stronger_teacher_students as pick
names, why = pick(*sys.argv[1:])
print(why, file=sys.stderr)
print(','.join(names))" "$WORK/results-$PROFILE" "$PROFILE" "$1" 2> >(tee -a "$OUT/experiment.log" >&2)) \
        || { echo "best=$1: no students chosen (see above)"; return 0; }
    echo "best=$1: runs=$names" | tee -a "$OUT/experiment.log"
    runs "$names"
}

adopt_teacher() {  # the pipeline's teacher as the plan's teacher-soft: same settings and split, so not retrained
    local teacher target="$WORK/results-$PROFILE/models/teacher-soft"
    case "${KDRANK_PIPELINE_ARGS:-}" in *teacher.*) echo "teacher settings overridden: not teacher-soft"; return 0 ;; esac
    teacher=$(ls -d "$WORK"/pipeline/pipeline-root/*/train-teacher/teacher 2>/dev/null | tail -1)
    if [ -n "$teacher" ] && [ -e "$teacher/kdrank.json" ] && [ ! -e "$target" ]; then
        mkdir -p "$(dirname "$target")" && cp -r "$teacher" "$target" && echo "teacher-soft: the pipeline's teacher"
    fi
}

pipeline() {  # 575 s by default: the whole run was estimated at about 530 s, and a call may last 600
    local rc=0 start=$SECONDS
    # KDRANK_PIPELINE_ARGS: more `kdrank run` options, e.g. "--set teacher.batch_size=256 --set teacher.learning_rate=1e-4"
    # shellcheck disable=SC2086
    timeout "${KDRANK_PIPELINE_TIMEOUT:-575}" $PY -m pipelines.cli run --profile "$PROFILE" \
        --data "$DATA" --format homedepot --output "$WORK/pipeline" ${KDRANK_PIPELINE_ARGS:-} \
        > "$OUT/pipeline.log" 2>&1 || rc=$?
    local took=$((SECONDS - start))
    echo "kdrank run --profile $PROFILE: exit $rc after $took s" | tee "$WORK/pipeline-time.txt"
    tr '\r' '\n' < "$OUT/pipeline.log" | grep -v '%|' | grep -E "kdrank step|finished with status|saved to|exit|Error|error" | tail -40
    # run.json, the evaluation report (metrics and per-pair scores of teacher, student, BM25) and each
    # step's executor output (its logged metadata), even from a run that stopped part-way.
    cp "$OUT/gpu.txt" "$WORK/gpu.txt"  # the machine, for gpu_merge.py's row
    (cd "$WORK" && find pipeline -maxdepth 1 -name run.json; find pipeline -path '*/evaluate/*' -type f \
        -o -name executor_output.json; echo pipeline-time.txt; echo gpu.txt) 2>/dev/null | sort -u \
        > "$WORK/pipeline-files.txt"
    tar -czf "$OUT/pipeline.tgz" -C "$WORK" -T "$WORK/pipeline-files.txt" 2>/dev/null || true
    adopt_teacher
    if [ "$rc" -ne 0 ] && [ "$took" -lt 60 ] && [ -n "${KDRANK_FALLBACK:-}" ]; then
        echo "the pipeline failed early; running $KDRANK_FALLBACK instead" >&2
        runs "$KDRANK_FALLBACK"
    fi
}

restore() {  # the split first (restore needs it), then the archive's rows and label sets
    $PY -m pipelines.cli experiment run --profile "$PROFILE" --data "$DATA" --format homedepot \
        --output "$WORK/results-$PROFILE" --only baseline-random >> "$OUT/experiment.log" 2>&1
    $PY -m pipelines.cli experiment restore --archive "$ARCHIVE" --runs "$WORK/results-$PROFILE" 2>&1 \
        | tee -a "$OUT/experiment.log" | grep -v '%|'
}

prepare() {  # 300 s by default: the full 16x set took 41-100 s on the H200
    local rc=0 start=$SECONDS limit
    limit=$(within_deadline "${KDRANK_PREPARE_TIMEOUT:-300}")
    if [ "$limit" -lt 5 ]; then echo "prepare: not started, KDRANK_DEADLINE (${KDRANK_DEADLINE:-}) s reached"; return 0; fi
    timeout "$limit" $PY -m pipelines.cli experiment prepare --profile "$PROFILE" \
        --data "$DATA" --format homedepot --output "$WORK/results-$PROFILE" >> "$OUT/experiment.log" 2>&1 || rc=$?
    echo "experiment prepare: exit $rc after $((SECONDS - start)) s" >> "$OUT/experiment.log"
    tr '\r' '\n' < "$OUT/experiment.log" | grep -v '%|' | grep -E "rows|prepare|augmentation|already|Error|error" | tail -8
}

PREPARE_PID=""
prepare_bg() {
    prepare > "$WORK/prepare-bg.txt" 2>&1 &
    PREPARE_PID=$!
    echo "prepare: started in the background (pid $PREPARE_PID)"
}

wait_prepare() {
    [ -n "$PREPARE_PID" ] || return 0
    local rc=0 start=$SECONDS
    wait "$PREPARE_PID" || rc=$?
    PREPARE_PID=""
    echo "background prepare: exit $rc, waited $((SECONDS - start)) s for it"
    cat "$WORK/prepare-bg.txt"
}

archive() {  # rows, scores and label sets of every finished run, merged into the archive the checkout holds
    rm -rf "$WORK/archive" && mkdir -p "$WORK/archive"
    [ -d "$ARCHIVE" ] && cp -r "$ARCHIVE" "$WORK/archive/$PROFILE"
    $PY -m pipelines.cli experiment archive --runs "$WORK/results-$PROFILE" --output "$WORK/archive/$PROFILE" \
        2>&1 | grep -v '%|' | tail -5
    # One file per label set that the checkout's archive lacks as it is (a returned file may hold 16 MiB and a
    # 16x set is ~7 MB; at most 8 files come back); tests/benchmarks/gpu_archive.py puts the parts together.
    local set name
    for set in "$WORK/archive/$PROFILE"/labels/*/; do
        [ -d "$set" ] || continue
        name=$(basename "$set")
        cmp -s "$set/probs.parquet" "$ARCHIVE/labels/$name/probs.parquet" \
            && cmp -s "$set/labels.json" "$ARCHIVE/labels/$name/labels.json" && continue
        tar -czf "$OUT/labels-$name.tgz" -C "$WORK/archive/$PROFILE" "labels/$name"
    done
    # the archive holds what experiment.tgz held (rows, scores, training records): one file fewer
    tar -czf "$OUT/archive.tgz" -C "$WORK/archive/$PROFILE" --exclude=./labels . && rm -f "$OUT/experiment.tgz"
    ls -l "$OUT"
}

for step in "$@"; do
    case "$step" in
        runs=*) runs "${step#runs=}" ;;
        best=*) best "${step#best=}" ;;
        check) $PY -c "import kfp.local, kfp.dsl, google.cloud.storage, onnx, onnxscript, gguf, bm25s; import pipelines.cli, pipelines.local, components.kfp.common; print('imports ok')" ;;
        bench)
            timeout "${KDRANK_BENCH_TIMEOUT:-90}" $PY tests/benchmarks/bench_throughput.py --data "$DATA" \
                --seconds "${KDRANK_BENCH_SECONDS:-5}" --output "$OUT/throughput-gpu.md" \
                || echo "throughput benchmark failed or timed out" >&2 ;;
        pipeline) pipeline ;;
        adopt-teacher) adopt_teacher ;;
        setup) echo "set-up done in $WORK" ;;  # the set-up above alone: a first call that carries .gpu/a only
        restore) restore ;;
        prepare) prepare ;;
        prepare-bg) prepare_bg ;;
        wait) wait_prepare ;;
        archive) wait_prepare; archive ;;
        *) echo "unknown step '$step' (runs=NAMES, best=ENSEMBLE, check, bench, pipeline, adopt-teacher, setup, restore, prepare," \
                "prepare-bg, wait, archive)" >&2
           exit 2 ;;
    esac
done
wait_prepare
