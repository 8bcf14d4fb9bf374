#!/usr/bin/env bash
# Every GPU measurement of issue 12 in one run, with a time guard (BUDGET seconds, default 520 < 9 min).
#
# 1. On the CPU host (network), once:   bash bench/gpu_check.sh --prepare
#    downloads cp312 manylinux wheels of the pure-pip dependencies the GPU machine lacks (lmdb, isal, ...)
#    into .gpu-wheels/ (git-ignored, ~8 MB).
# 2. On the GPU machine, through the device tool:
#    run(command="bash bench/gpu_check.sh", carry=[".gpu-wheels"], timeout_s=600)
#    Everything it prints also goes to $OUT/gpu_check.log (plus the train runs' metrics.jsonl).
#
# Steps, in this order; STEPS="data attn recipe ..." runs a subset (default: all but attn, which measured no
# difference). A step that would start with < 25 s left is skipped (and said so):
#   data     mmf data synth --questions 3000 --images 700, mmf data pack textvqa
#   profile  bench/train.py, one batch resident, the trainer's CUDA-graphed bf16 forward with the last MMT layer
#            over every row (MMF) and over the rows read only (ours), the last 5 steps of each under
#            torch.profiler: GPU time per part of the step (matmul, attention, triton-fused elementwise/norm,
#            optimizer + clip, copies) and GPU-busy share of the wall; first, the attention kernel eager torch
#            picks for the MMT's shapes and mask per attention_backend, and why fused kernels are refused
#   attn     mmf train bf16 + compile (auto: CUDA graphs) + resident features, ATTN_UPDATES (100) updates, once per
#            training.attention_backend in $ATTN (auto math efficient): samples/s; the fastest goes to recipe
#   recipe   bench/recipe.py full size: ours (bf16 + compile + incremental decoding + resident features + the
#            fastest attention backend) vs MMF's setting (strict fp32 eager, full recompute, synchronous
#            checkpoints), projected recipe; val pass first/steady/loader alone
#   decode   bench/decode.py full size, batch 128: fp32 (identical argmax required) and bf16 (agreement vs the
#            precision's own disagreement with fp32), incremental vs full recompute speed
#   bf16     mmf train bf16 + compile (auto) + resident features, 200 updates: samples/s, data wait, finite
#            decreasing losses
#   fp16     mmf train training.fp16=true (MMF's AMP), eager, 200 updates, packed: finite decreasing losses
#   lmdb     mmf train bf16 on the LMDB path (prefer_packed=false), 200 updates: samples/s, losses
#   autotune as bf16, with training.compile_mode=max-autotune (inductor's tuned matmul templates + CUDA graphs),
#            100 updates: samples/s (the step's wall time includes the tuning)
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
WHEELS=$ROOT/.gpu-wheels
NEED="lmdb isal xxhash typer filelock pyyaml tqdm requests"

if [ "${1:-}" = "--prepare" ]; then
    mkdir -p "$WHEELS"
    exec "${PY:-python3}" -m pip download --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d "$WHEELS" $NEED
fi

START=$(date +%s)
PY=${PY:-python3}  # the GPU machine's torch lives in python3; a bare `python` may be another interpreter
command -v python >/dev/null || { mkdir -p /tmp/gpu-check-bin && ln -sf "$(command -v "$PY")" /tmp/gpu-check-bin/python; }
export PATH=/tmp/gpu-check-bin:$PATH
BUDGET=${BUDGET:-520}
OUTDIR=${OUT:-/tmp/gpu-check-out}
WORK=${WORK:-/tmp/gpu-check}
mkdir -p "$OUTDIR" "$WORK"
LOG=$OUTDIR/gpu_check.log
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
D=$WORK/data
# SMOKE=1: the same plumbing on a CPU with the tiny model and data (checks this script, measures nothing)
if [ "${SMOKE:-0}" = 1 ]; then
    MODEL=tiny.yaml BATCH=16 QUESTIONS=160 IMAGES=40 UPDATES=6 WINDOW=2 TINY=--tiny ATTN_UPDATES=${ATTN_UPDATES:-6}
    DECODE="--device cpu --models tiny --batch 16 --questions 32 --repeat 1"
    PROFILE="--device cpu --batch 2 --steps 6 --warmup 1 --questions 64 --images 16 --sdpa-check --modes bf16 --profile bf16"
else
    MODEL=defaults.yaml BATCH=128 QUESTIONS=3000 IMAGES=700 UPDATES=200 WINDOW=40 TINY= ATTN_UPDATES=${ATTN_UPDATES:-100}
    DECODE="--device cuda --models full --batch 128 --questions 640 --repeat 2"
    PROFILE="--device cuda --steps 30 --warmup 15 --sdpa-check --modes bf16+graphs+fullrows@resident,bf16+graphs@resident
             --profile bf16+graphs+fullrows@resident,bf16+graphs@resident"
fi
CFG="config=projects/m4c/configs/textvqa/$MODEL datasets=textvqa model=m4c env.data_dir=$D
     env.fetch_missing_data=false training.batch_size=$BATCH training.progress_bar=false training.seed=1"

left() { echo $((BUDGET - ($(date +%s) - START))); }
say() { echo "$*" | tee -a "$LOG"; }
step() {  # step NAME COMMAND...: runs under the remaining budget, output to the log
    local name=$1 l rc before
    shift
    l=$(left)
    if [ "$l" -lt 25 ]; then say "=== SKIP $name: ${l}s of the budget left"; return 1; fi
    say "=== $name (t=$(($(date +%s) - START))s, ${l}s left): $*"
    before=$(wc -l <"$LOG")
    timeout --signal=TERM --kill-after=10 "$l" "$@" >>"$LOG" 2>&1
    rc=$?
    tail -n +"$((before + 1))" "$LOG" | grep -v '^\s*$' | grep -v 'INFO | mmftrain : \(loaded\|checkpoints\|----\)' |
        tail -n 14
    say "=== $name rc=$rc (t=$(($(date +%s) - START))s)"
    return $rc
}
losses() {  # losses SAVE_DIR: samples/s and whether the logged losses are finite and decreasing
    $PY - "$1" <<'EOF' 2>&1 | tee -a "$LOG"
import json, math, sys
recs = [json.loads(x) for x in open(sys.argv[1] + "/metrics.jsonl") if x.strip()]
tr = [r for r in recs if "train/total_loss/avg" in r]
avg = [r["train/total_loss/avg"] for r in tr]
sps = [r["samples_per_s"] for r in tr[1:]] or [0.0]
wait = [r["data_wait_share"] for r in tr[1:]] or [0.0]
finite = all(math.isfinite(x) for x in avg)
print(f"losses {sys.argv[1]}: window averages {[round(x, 3) for x in avg]}; finite {finite}; decreasing "
      f"{finite and len(avg) > 1 and avg[-1] < avg[0]}; samples/s after the first window "
      f"{sum(sps) / len(sps):.0f}; data wait {100 * sum(wait) / len(wait):.2f}%")
EOF
}
train() {  # train NAME UPDATES OVERRIDES...
    local name=$1 n=$2
    shift 2
    # shellcheck disable=SC2086
    step "$name" $PY -m mmfzoo_cli train $CFG run_type=train env.save_dir="$WORK/save-$name" \
        training.max_updates="$n" training.log_interval=$WINDOW training.evaluation_interval=100000 \
        training.checkpoint_interval=100000 "$@"
    losses "$WORK/save-$name"
    cp "$WORK/save-$name/metrics.jsonl" "$OUTDIR/metrics-$name.jsonl" 2>/dev/null
}

: >"$LOG"
say "gpu_check: $(date -u +%FT%TZ) budget ${BUDGET}s, repo $(git rev-parse --short HEAD 2>/dev/null)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG"
$PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$LOG"
missing=$($PY - <<'EOF'
import importlib.util as u
mods = {"lmdb": "lmdb", "isal": "isal", "xxhash": "xxhash", "typer": "typer", "filelock": "filelock",
        "yaml": "pyyaml", "tqdm": "tqdm", "requests": "requests"}
print(" ".join(p for m, p in mods.items() if u.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    if [ -d "$WHEELS" ]; then
        say "installing from .gpu-wheels: $missing"
        # into a folder of our own: the image's site-packages may be read-only or externally managed
        $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-check-site --find-links "$WHEELS" \
            $missing >>"$LOG" 2>&1 || say "pip install failed"
        export PYTHONPATH=$PYTHONPATH:/tmp/gpu-check-site
    else
        say "missing $missing and no .gpu-wheels/ (run bash bench/gpu_check.sh --prepare on the host, carry it)"
    fi
fi

want() { case " ${STEPS:-data profile recipe decode bf16 fp16 autotune lmdb} " in *" $1 "*) return 0 ;; esac; return 1; }
want data && step data bash -c "$PY -m mmfzoo_cli data synth --out $D --questions $QUESTIONS --images $IMAGES &&
                                 $PY -m mmfzoo_cli data pack textvqa --data-dir $D"
# shellcheck disable=SC2086
want profile && step profile $PY bench/train.py $PROFILE
BEST=auto
if want attn; then
    for backend in ${ATTN:-auto math efficient}; do
        train "attn-$backend" "$ATTN_UPDATES" training.bf16=true training.compile=true \
            training.features_on_device=true training.attention_backend="$backend"
    done
    BEST=$($PY - "$WORK" ${ATTN:-auto math efficient} <<'EOF'
import json, sys
rate = {}
for b in sys.argv[2:]:
    try:
        recs = [json.loads(x) for x in open(f"{sys.argv[1]}/save-attn-{b}/metrics.jsonl") if x.strip()]
        tr = [r["samples_per_s"] for r in recs if "train/total_loss/avg" in r][1:]
        rate[b] = sum(tr) / len(tr)
    except (OSError, ZeroDivisionError, KeyError, ValueError):
        pass
print(max(rate, key=rate.get) if rate else "auto")
EOF
)
    say "fastest attention backend: $BEST"
fi
want recipe && step recipe $PY bench/recipe.py $TINY --data-dir "$D" \
    --ours training.features_on_device=true,training.attention_backend="$BEST"
if want decode; then
    # shellcheck disable=SC2086
    step decode-fp32 $PY bench/decode.py $DECODE --amp fp32
    # shellcheck disable=SC2086
    step decode-bf16 $PY bench/decode.py $DECODE --amp bf16
fi
want bf16 && train bf16 "$UPDATES" training.bf16=true training.compile=true training.features_on_device=true \
    training.attention_backend="$BEST"
want fp16 && train fp16 "$UPDATES" training.fp16=true
want autotune && train autotune "$ATTN_UPDATES" training.bf16=true training.compile=true \
    training.features_on_device=true training.compile_mode=max-autotune
want lmdb && train lmdb "$UPDATES" training.bf16=true training.prefer_packed=false
say "gpu_check done in $(($(date +%s) - START))s"
