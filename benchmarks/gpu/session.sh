#!/usr/bin/env bash
# One GPU session, prepared to fit a short lease: GPU benchmarks, the GPU tests and the
# training runs of issue 8, all runs concurrently on the one GPU.
#
#   bash benchmarks/gpu/session.sh PACK OUTDIR TRAIN_SECONDS
#
# Data, one of:
# - PACK: training pairs packed by benchmarks/gpu/pack_pairs.py (entries lr, hr, and toy_lr
#   when TRAIN_TOY=1: then a physically based and a toy-simulator model are trained, same
#   preset and steps).
# - SIM_N=N (> 0): simulate N physically based pairs on the machine's CPUs while the
#   benchmarks run (`cvdm simulate --seed SIM_SEED`), installing microsim and its missing
#   pure-Python dependencies from wheels in .whl/ (docs/performance.md lists them). If the
#   simulator cannot be imported there, or fewer than SIM_MIN pairs are ready by SIM_END
#   seconds, PACK is used instead (it may then be a fallback pack of lr/hr entries).
#   One model per preset in TRAIN_PRESETS is trained on it ("small medium": phys_small,
#   phys_medium), same steps and seed.
# EVAL_DIR=DIR (a folder with lr/, hr/ and params.json, e.g. a carried copy of
#   `cvdm simulate sim_eval --n 40 --seed 777777 --size 128`): after training, each model is
#   scored there with `cvdm evaluate` on the GPU (the command of docs/models/cvdm-small-v2.md, without
#   figures), into OUTDIR/report_<name>.md and metrics_<name>.csv; EVAL_SECONDS (default
#   120) are kept for it.
# Writes to OUTDIR: session.log (everything printed), train_<name>.log and <name>.safetensors
# (EMA weights; in 15 MiB parts when larger, which the device tool does not bring back whole)
# per run.
# Runs under the machine's own $PY with this checkout on PYTHONPATH (no install).
# A CPU smoke run of the script itself: DEVICE=cpu PRESET=tiny TRAIN_PRESETS=tiny BATCH=4
# BENCH_BATCHES=4 BENCH_PRESETS=tiny SAMPLER_SIZE=64 MIN_STEPS=20 bash benchmarks/gpu/session.sh ... 30
set -u
PACK=$1
OUT=$2
BUDGET=${3:-300}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
TRAIN_PRESETS=${TRAIN_PRESETS:-$PRESET}
BATCH=${BATCH:-32}
BENCH_BATCHES=${BENCH_BATCHES:-8,32,64}
BENCH_PRESETS=${BENCH_PRESETS:-tiny,small,base,paper}
SAMPLER_SIZE=${SAMPLER_SIZE:-1024}
MIN_STEPS=${MIN_STEPS:-1000}
CKPT_EVERY=${CKPT_EVERY:-250}
HARD_END=${HARD_END:-500}
SLACK=${SLACK:-60}
PY=${PY:-python3}
SAMPLER_BENCH=${SAMPLER_BENCH:-1}  # 0: skip the sampler benchmark
TRAIN_TOY=${TRAIN_TOY:-1}          # 0: physically based models only
SIM_N=${SIM_N:-0}                  # > 0: simulate this many pairs here instead of PACK
SIM_SEED=${SIM_SEED:-1000}
SIM_JOBS=${SIM_JOBS:-14}
SIM_END=${SIM_END:-200}            # seconds after the start: stop simulating, use what is done
SIM_MIN=${SIM_MIN:-300}
WHEELS=${WHEELS:-.whl}             # none: microsim is importable already
EVAL_DIR=${EVAL_DIR:-}             # score each model here after training (see above)
EVAL_SECONDS=${EVAL_SECONDS:-120}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
LOG=$OUT/session.log
log() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; }

log "== machine"
run nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
run $PY -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

SIM_PID=""
if [ "$SIM_N" -gt 0 ]; then
    TRAIN_TOY=0
    if [ "$WHEELS" != none ]; then
        run $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl
        export PYTHONPATH=$PWD:/tmp/site
    fi
    if run $PY -c "import microsim; from cvdm_cli import simulation; print('microsim', microsim.__version__)"; then
        log "== simulating $SIM_N pairs (seed $SIM_SEED) with $SIM_JOBS processes (background)"
        mkdir -p /tmp/data
        # its own process group, so that the workers can be stopped together at SIM_END;
        # niced: beside 14 workers at normal priority the GPU tests finished 1 of 8 in 120 s
        OMP_NUM_THREADS=1 setsid nice -n 19 $PY -m cvdm_cli simulate /tmp/data/sim --n "$SIM_N" \
            --seed "$SIM_SEED" --structure mixed -j "$SIM_JOBS" -q >/tmp/unpack.log 2>&1 &
        SIM_PID=$!
    else
        log "microsim does not import here: using the pack $PACK"
    fi
fi
if [ -z "$SIM_PID" ]; then
    log "== unpack (background)"
    $PY benchmarks/gpu/pack_pairs.py unpack "$PACK" /tmp/data >/tmp/unpack.log 2>&1 &
    UNPACK=$!
fi

log "== training-step benchmark (bf16, 128x128 HR patches)"
: >/tmp/train_step.jsonl
for p in $TRAIN_PRESETS; do
    timeout 90 $PY benchmarks/train_step.py --preset "$p" --batch "$BENCH_BATCHES" --steps 20 \
        --device "$DEVICE" 2>&1 | tee -a /tmp/train_step.jsonl | tee -a "$LOG"
done

[ "$SAMPLER_BENCH" = 1 ] && log "== sampler benchmark (GPU only; bf16 + channels_last)" &&
timeout 120 $PY benchmarks/sampler.py --presets "$BENCH_PRESETS" --skip-cpu \
    --skip-quality --gpu-batch 16 --sampler-preset "$PRESET" --sampler-size "$SAMPLER_SIZE" \
    --sampler-precision bf16 2>&1 | tee -a "$LOG"

# before training: alone on the GPU they take about 35 s; next to two training runs they
# did not finish in 240 s
log "== GPU tests (while the data is prepared)"
timeout 120 $PY -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 \
    | tail -n 25 | tee -a "$LOG"

if [ -n "$SIM_PID" ]; then
    while kill -0 "$SIM_PID" 2>/dev/null && [ "$(date +%s)" -lt $((T0 + SIM_END)) ]; do
        sleep 2
    done
    if kill -0 "$SIM_PID" 2>/dev/null; then
        log "simulation past ${SIM_END}s: stopped, keeping the finished pairs"
        kill -- -"$SIM_PID" 2>/dev/null
        sleep 1
    fi
    wait "$SIM_PID" 2>/dev/null
    mkdir -p /tmp/data/lr /tmp/data/hr
    # pairs 0..K-1 with both files written (each file is written atomically): the first K
    # pairs of `cvdm simulate --n K --seed SIM_SEED`, whatever the workers' timing
    i=0
    while name=$(printf pair_%05d.tif $i) && [ -f /tmp/data/sim/lr/"$name" ] &&
        [ -f /tmp/data/sim/hr/"$name" ]; do
        ln -s /tmp/data/sim/lr/"$name" /tmp/data/lr/"$name"
        ln -s /tmp/data/sim/hr/"$name" /tmp/data/hr/"$name"
        i=$((i + 1))
    done
    READY=$(ls /tmp/data/lr | wc -l)
    log "simulated pairs ready: $READY"
    if [ "$READY" -lt "$SIM_MIN" ]; then
        log "fewer than $SIM_MIN: using the pack $PACK"
        rm -rf /tmp/data
        $PY benchmarks/gpu/pack_pairs.py unpack "$PACK" /tmp/data >>/tmp/unpack.log 2>&1
    fi
else
    wait $UNPACK
fi
run tail -n 5 /tmp/unpack.log
run ls /tmp/data

# the runs: name, LR folder, preset
NAMES=() LRS=() PRESETS=()
if [ "$TRAIN_TOY" = 1 ]; then
    NAMES=(phys toy) LRS=(/tmp/data/lr /tmp/data/toy_lr) PRESETS=("$PRESET" "$PRESET")
else
    for p in $TRAIN_PRESETS; do NAMES+=("phys_$p") LRS+=(/tmp/data/lr) PRESETS+=("$p"); done
fi

# steps for the time budget: the runs share the GPU, each step of one waits for the others'
# (measured with two runs of the small preset: 1.53x the single-run time per step)
S_SUM=$($PY -c "
import json
rows = [json.loads(l) for l in open('/tmp/train_step.jsonl') if l.startswith('{')]
presets = '${PRESETS[*]}'.split()
rate = {r['preset']: r['s_per_step'] for r in rows if r['batch'] == $BATCH and 'preset' in r}
print(sum(rate.get(p, 0.1) for p in presets) * (0.8 if len(presets) > 1 else 1.25))")
# never past T0 + HARD_END seconds (the exports and copies need the rest of the lease)
LEFT=$((T0 + HARD_END - $(date +%s) - SLACK))
[ -n "$EVAL_DIR" ] && LEFT=$((LEFT - EVAL_SECONDS))
[ $LEFT -lt $BUDGET ] && BUDGET=$LEFT
STEPS=$($PY -c "print(max($MIN_STEPS, min(40000, int($BUDGET / $S_SUM) // 10 * 10)))")
log "== training ${NAMES[*]}: $STEPS steps each (sum of s/step x sharing: $S_SUM), budget ${BUDGET}s"
mkdir -p /tmp/train
COMMON=(--steps "$STEPS" --batch-size "$BATCH" --learning-rate 3e-4
    --warmup 200 --val-fraction 0.05 --val-every 1000 --checkpoint-every "$CKPT_EVERY"
    --device "$DEVICE" --seed 0)
TRAIN_START=$(date +%s)
PIDS=()
for i in "${!NAMES[@]}"; do
    $PY -m cvdm_cli train --lr "${LRS[$i]}" --hr /tmp/data/hr --preset "${PRESETS[$i]}" \
        --out /tmp/train/"${NAMES[$i]}".safetensors "${COMMON[@]}" \
        >"$OUT/train_${NAMES[$i]}.log" 2>&1 &
    PIDS+=($!)
done

# wait for the runs; past the deadline stop them and export their last checkpoints
DEADLINE=$((TRAIN_START + BUDGET + SLACK))
alive() { for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
while alive "${PIDS[@]}"; do
    if [ "$(date +%s)" -gt $DEADLINE ]; then
        log "deadline: stopping the runs, exporting their last checkpoints"
        kill "${PIDS[@]}" 2>/dev/null
        sleep 3
        for i in "${!NAMES[@]}"; do
            timeout 60 $PY -m cvdm_cli train --lr "${LRS[$i]}" --hr /tmp/data/hr \
                --out /tmp/train/"${NAMES[$i]}".safetensors \
                --resume /tmp/train/"${NAMES[$i]}".ckpt.safetensors --export-only >>"$LOG" 2>&1 &
        done
        wait
        break
    fi
    sleep 5
done
wait
log "== training done after $(($(date +%s) - TRAIN_START))s"
# a file over 16 MiB does not come back from the machine: those travel in 15 MiB parts
# (join them with `cat NAME.safetensors.part-* > NAME.safetensors`; sha256 in the log)
for name in "${NAMES[@]}"; do
    tail -n 4 "$OUT/train_$name.log" | tee -a "$LOG"
    file=/tmp/train/"$name".safetensors
    [ -f "$file" ] || continue
    sha256sum "$file" | tee -a "$LOG"
    if [ "$(stat -c %s "$file")" -gt $((15 * 1024 * 1024)) ]; then
        split -b 15M "$file" "$OUT/$name.safetensors.part-"
    else
        cp "$file" "$OUT/"
    fi
done
if [ -n "$EVAL_DIR" ]; then
    log "== scoring on $EVAL_DIR (GPU, concurrently)"
    for name in "${NAMES[@]}"; do
        [ -f /tmp/train/"$name".safetensors ] || continue
        timeout "$EVAL_SECONDS" $PY -m cvdm_cli evaluate --model /tmp/train/"$name".safetensors \
            --lr "$EVAL_DIR"/lr --hr "$EVAL_DIR"/hr --val-fraction 0.2 --reference-limit 8 \
            --reference-samples 2 --no-figures --device "$DEVICE" --out /tmp/report_"$name" \
            -q >/tmp/eval_"$name".log 2>&1 &
    done
    wait
    # two files per model (the device tool brings back at most 8)
    for name in "${NAMES[@]}"; do
        tail -n 3 /tmp/eval_"$name".log | tee -a "$LOG"
        if [ ! -f /tmp/report_"$name"/report.md ]; then
            log "no report for $name: evaluate failed or ran past ${EVAL_SECONDS}s"
            continue
        fi
        cp /tmp/report_"$name"/report.md "$OUT/report_$name.md"
        cp /tmp/report_"$name"/metrics.csv "$OUT/metrics_$name.csv"
        head -n 12 /tmp/report_"$name"/report.md | tee -a "$LOG"
    done
fi
ls -la "$OUT" | tee -a "$LOG"
log "== end"
