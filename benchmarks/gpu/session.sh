#!/usr/bin/env bash
# One GPU session, prepared to fit a short lease: GPU benchmarks, the GPU tests and the two
# training runs of issue 8 (physically based and toy simulator, same steps, concurrently).
#
#   bash benchmarks/gpu/session.sh PACK OUTDIR TRAIN_SECONDS
#
# PACK: training pairs packed by benchmarks/gpu/pack_pairs.py with entries lr, hr, toy_lr.
# Or PACK=none with SIM_N=N: simulate N physically based pairs on the machine's CPUs while
# the benchmarks run (`cvdm simulate --seed 1000`), installing microsim and its missing
# pure-Python dependencies from wheels in .whl/ (README of the device tool says how to
# download them; list in docs/performance.md); only the physically based model is trained.
# Writes to OUTDIR: session.log (everything printed), train_phys.log, train_toy.log,
# phys.safetensors, toy.safetensors (EMA weights).
# Runs under the machine's own $PY with this checkout on PYTHONPATH (no install).
# A CPU smoke run of the script itself: DEVICE=cpu PRESET=tiny BATCH=4 BENCH_BATCHES=2
# BENCH_PRESETS=tiny SAMPLER_SIZE=64 MIN_STEPS=20 bash benchmarks/gpu/session.sh ... 30
set -u
PACK=$1
OUT=$2
BUDGET=${3:-300}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-small}
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
TRAIN_TOY=${TRAIN_TOY:-1}          # 0: train the physically based model only
SIM_N=${SIM_N:-0}                  # > 0: simulate this many pairs here instead of PACK
SIM_JOBS=${SIM_JOBS:-14}
WHEELS=${WHEELS:-.whl}             # none: microsim is importable already
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T0=$(date +%s)
LOG=$OUT/session.log
log() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; }

log "== machine"
run nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
run $PY -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')"

if [ "$SIM_N" -gt 0 ]; then
    TRAIN_TOY=0
    if [ "$WHEELS" != none ]; then
        run $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl
        export PYTHONPATH=$PWD:/tmp/site
    fi
    log "== simulating $SIM_N pairs with $SIM_JOBS processes (background)"
    mkdir -p /tmp/data
    (
        $PY -m cvdm_cli simulate /tmp/data/sim --n "$SIM_N" --seed 1000 --structure mixed \
            -j "$SIM_JOBS" -q && ln -s sim/lr /tmp/data/lr && ln -s sim/hr /tmp/data/hr
    ) >/tmp/unpack.log 2>&1 &
else
    log "== unpack (background)"
    $PY benchmarks/gpu/pack_pairs.py unpack "$PACK" /tmp/data >/tmp/unpack.log 2>&1 &
fi
UNPACK=$!

log "== training-step benchmark (small preset, bf16, 128x128 HR patches)"
timeout 90 $PY benchmarks/train_step.py --preset "$PRESET" --batch "$BENCH_BATCHES" --steps 20 \
    --device "$DEVICE" 2>&1 | tee /tmp/train_step.jsonl | tee -a "$LOG"

[ "$SAMPLER_BENCH" = 1 ] && log "== sampler benchmark (GPU only; bf16 + channels_last)" &&
timeout 120 $PY benchmarks/sampler.py --presets "$BENCH_PRESETS" --skip-cpu \
    --skip-quality --gpu-batch 16 --sampler-preset "$PRESET" --sampler-size "$SAMPLER_SIZE" \
    --sampler-precision bf16 2>&1 | tee -a "$LOG"

wait $UNPACK
run cat /tmp/unpack.log
run ls /tmp/data

# steps for the time budget: the single-process rate at batch 32, two runs sharing the GPU
S_STEP=$($PY -c "
import json
rows = [json.loads(l) for l in open('/tmp/train_step.jsonl') if l.startswith('{')]
print(next((r['s_per_step'] for r in rows if r['batch'] == $BATCH), 0.1))")
# never past T0 + HARD_END seconds (the exports and copies need the rest of the lease)
LEFT=$((T0 + HARD_END - $(date +%s) - SLACK))
[ $LEFT -lt $BUDGET ] && BUDGET=$LEFT
STEPS=$($PY -c "print(max($MIN_STEPS, min(40000, int($BUDGET / ($S_STEP * (1.6 if $TRAIN_TOY else 1.25))) // 10 * 10)))")
log "== training: $STEPS steps each (s/step alone at batch $BATCH: $S_STEP), budget ${BUDGET}s"
mkdir -p /tmp/train
COMMON=(--preset "$PRESET" --steps "$STEPS" --batch-size "$BATCH" --learning-rate 3e-4
    --warmup 200 --val-fraction 0.05 --val-every 1000 --checkpoint-every "$CKPT_EVERY"
    --device "$DEVICE" --seed 0)
TRAIN_START=$(date +%s)
$PY -m cvdm_cli train --lr /tmp/data/lr --hr /tmp/data/hr \
    --out /tmp/train/phys.safetensors "${COMMON[@]}" >"$OUT/train_phys.log" 2>&1 &
PHYS=$!
TOY=""
if [ "$TRAIN_TOY" = 1 ]; then
    $PY -m cvdm_cli train --lr /tmp/data/toy_lr --hr /tmp/data/hr \
        --out /tmp/train/toy.safetensors "${COMMON[@]}" >"$OUT/train_toy.log" 2>&1 &
    TOY=$!
fi

log "== GPU tests (while training)"
timeout 240 $PY -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider 2>&1 \
    | tail -n 25 | tee -a "$LOG"

# wait for both runs; past the deadline stop them and export the last checkpoint
DEADLINE=$((TRAIN_START + BUDGET + SLACK))
alive() { for pid in "$@"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
while alive $PHYS $TOY; do
    if [ "$(date +%s)" -gt $DEADLINE ]; then
        log "deadline: stopping the runs, exporting their last checkpoints"
        kill $PHYS $TOY 2>/dev/null  # $TOY is empty when only one run
        sleep 3
        for name in phys $([ "$TRAIN_TOY" = 1 ] && echo toy); do
            lr=/tmp/data/lr
            [ $name = toy ] && lr=/tmp/data/toy_lr
            timeout 60 $PY -m cvdm_cli train --lr $lr --hr /tmp/data/hr \
                --out /tmp/train/$name.safetensors --resume /tmp/train/$name.ckpt.safetensors \
                --export-only >>"$LOG" 2>&1 &
        done
        wait
        break
    fi
    sleep 5
done
wait
log "== training done after $(($(date +%s) - TRAIN_START))s"
for name in phys $([ "$TRAIN_TOY" = 1 ] && echo toy); do
    tail -n 4 "$OUT/train_$name.log" | tee -a "$LOG"
    cp /tmp/train/$name.safetensors "$OUT/" 2>>"$LOG"
done
ls -la "$OUT" | tee -a "$LOG"
log "== end"
