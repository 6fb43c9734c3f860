#!/usr/bin/env bash
# Everything a GPU session measures, in three parts of under 10 minutes each on one H100
# (a session lends a GPU for 30 minutes and 10 minutes per command):
#   PART=1 bash results/run_gpu.sh   CUDA tests; bench.py training step at the GPT-2 124M shape
#   PART=2 bash results/run_gpu.sh   bench.py eval cost at 1x..16x; train.py's tokens/s vs bench.py's
#   PART=3 bash results/run_gpu.sh   the paper's small setting (Table 6): expe, rope, alibi trained side by side
#                                    on the one GPU; 1x..16x and --scale 0.5
# Parts 2 and 3 read a corpus prepared beforehand where prepare.py's `datasets` is installed (the device
# machine has neither it nor a network), and carried there (<= 64 MiB):
#   PART=corpus bash results/run_gpu.sh   this machine's Python sources, files of >= 4000 tokens, 28M
#                                         GPT-2 tokens -> .carry/gpu_data (git-ignored), plus the BPE file
# Tables go to $RESULTS (default results/gpu) and, on the device machine, to $OUT too.
# Rehearsal on CPU at a tiny size (every step, minutes): DEVICE=cpu SMALL=1 PART=all bash results/run_gpu.sh
# (writes to out/gpu_rehearsal). Offline machines: TIKTOKEN_CACHE_DIR must hold GPT-2's BPE file.
set -euo pipefail
cd "$(dirname "$0")/.."
PART=${PART:-all}
DEVICE=${DEVICE:-cuda}
SMALL=${SMALL:-0}
export PYTHONUNBUFFERED=1
if [ "$SMALL" = 1 ]; then
    RESULTS=${RESULTS:-out/gpu_rehearsal}
    SHAPE="--n_layer=2 --n_head=4 --n_embd=64 --block_size=64 --vocab_size=50304 --batch_size=4"
    BENCH="--warmup=1 --repeats=3 --compile=False"
    EVS=1,2,4
    T6="--n_layer=2 --n_embd=64 --n_head=4 --block_size=64 --batch_size=8 --gradient_accumulation_steps=1 --eval_interval=20 --eval_iters=2 --compile=False"
    T6_ITERS=20
    THROUGHPUT="--max_iters=30 --log_interval=5 --compile=False"
    TESTS="tests/test_gpu_path.py -k bf16_autocast"
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
else
    RESULTS=${RESULTS:-results/gpu}
    SHAPE="--n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --vocab_size=50304 --batch_size=16"
    BENCH="--warmup=5 --repeats=20 --compile=True"
    EVS=1,2,4,8,16
    T6="--eval_interval=1000 --eval_iters=20 --compile=True"
    T6_ITERS=${T6_ITERS:-300}         # x 262,144 tokens: ~79M tokens per pe, 3 epochs of the 26M-token corpus
    THROUGHPUT="--max_iters=120 --log_interval=10 --compile=True"
    TESTS="tests/test_gpu_path.py -k cuda"  # the CUDA-marked tests; the CPU ones run in CI
fi
mkdir -p "$RESULTS"
TRAIN_PES=${TRAIN_PES:-expe,rope,alibi,nope,tape}
T6_PES=${T6_PES:-"expe rope alibi"}
DATA=${DATA:-.carry/gpu_data}         # the Table 6 / throughput corpus (git-ignored, carried to the device)
[ -z "${TIKTOKEN_CACHE_DIR:-}" ] && [ -d .carry/tiktoken ] && export TIKTOKEN_CACHE_DIR=$PWD/.carry/tiktoken
log() { echo "=== $(date +%H:%M:%S) $*"; }
save() { [ -n "${OUT:-}" ] && cp "$@" "$OUT"/ || true; }  # the device machine returns only $OUT

part1() {
    log "CUDA tests"
    python -m pytest -q $TESTS 2>&1 | tail -n 40 | tee "$RESULTS/tests.txt"
    log "bench.py: the training step, $TRAIN_PES"
    { nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv 2>/dev/null || true
      python -c "import torch; print('torch', torch.__version__)"
      echo "\$ python bench.py $SHAPE $BENCH --pes=$TRAIN_PES --device=$DEVICE"
      python bench.py $SHAPE $BENCH --pes="$TRAIN_PES" --device="$DEVICE"; } 2>&1 | tee "$RESULTS/bench_train.md"
    save "$RESULTS/tests.txt" "$RESULTS/bench_train.md"
}

corpus() {  # this machine's Python sources as text, GPT-2 BPE (a file = a document)
    [ -f "$DATA/meta.json" ] && return
    python -c 'import datasets' 2>/dev/null || { echo "error: no corpus in $DATA and no \`datasets\` here to prepare one:"\
        "run PART=corpus bash results/run_gpu.sh where it is installed and carry $DATA"; exit 2; }
    local src=out/gpu_corpus max_tokens=${CORPUS_TOKENS:-28e6}
    [ "$SMALL" = 1 ] && max_tokens=3e5
    rm -rf "$src"  # this script's own scratch folder
    python -c '
import os, shutil, sys, sysconfig
src = sys.argv[1]
roots = {sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]}
files = sorted({os.path.join(d, f) for r in roots for d, _, fs in os.walk(r) for f in fs if f.endswith(".py")})
files = [f for f in files if 2000 < os.path.getsize(f) < 400000]
os.makedirs(src)
for i, f in enumerate(files):
    shutil.copyfile(f, os.path.join(src, f"{i:06d}.txt"))
print(len(files), "Python files copied to", src)' "$src"
    python prepare.py --dataset "$src" --tokenizer gpt2 --out_dir "$DATA" --val_tokens 2e6 --max_tokens "$max_tokens" \
        --min_doc_tokens 4000 --num_proc "$(nproc)"
    [ -n "${TIKTOKEN_CACHE_DIR:-}" ] && [ "$TIKTOKEN_CACHE_DIR" != "$PWD/.carry/tiktoken" ] && \
        mkdir -p .carry/tiktoken && cp "$TIKTOKEN_CACHE_DIR"/* .carry/tiktoken/
    du -sh "$DATA"
}

part2() {
    log "bench.py: eval cost at $EVS x"
    { echo "\$ python bench.py $SHAPE --mode=eval --evs=$EVS --device=$DEVICE"
      python bench.py $SHAPE --mode=eval --evs="$EVS" --device="$DEVICE" --warmup=1 --repeats=3; } 2>&1 | tee "$RESULTS/bench_eval.md"
    corpus
    log "train.py throughput (expe, the 124M shape) against bench.py"
    local dir=out/gpu_throughput
    rm -rf "$dir"
    # shellcheck disable=SC2086
    python train.py $SHAPE --pe=expe --data_dir="$DATA" --out_dir="$dir" $THROUGHPUT --eval_interval=100000 \
        --eval_iters=1 --warmup_iters=10 --device="$DEVICE" > "$dir.log" 2>&1 || { tail -n 20 "$dir.log"; exit 1; }
    # shellcheck disable=SC2086
    python bench.py $SHAPE $BENCH --pes=expe --device="$DEVICE" > "$dir.bench" 2>&1
    python - "$dir" "$dir.bench" <<'EOF' | tee "$RESULTS/train_throughput.md"
import json, statistics, sys
log = [json.loads(l) for l in open(sys.argv[1] + '/log.jsonl') if 'tok_per_s' in l]
later = [r['tok_per_s'] for r in log[len(log) // 2:]]  # the second half: compile and warm-up are over
lines = [l.strip().strip('|').split('|') for l in open(sys.argv[2]) if l.startswith('| ')]
col = [c.strip() for c in lines[0]].index('tokens/s')  # bench.py's header names its columns
bench = float(next(r for r in lines if r[1].strip() == 'expe')[col].replace(',', ''))
train = statistics.median(later)
print('| | tokens/s |\n|---|---|')
print(f'| train.py (median of the last {len(later)} logged intervals) | {train:,.0f} |')
print(f'| bench.py (same shape and pe) | {bench:,.0f} |')
print(f'\ntrain.py / bench.py = {train / bench:.3f} (target: within 5%)')
EOF
    save "$RESULTS/bench_eval.md" "$RESULTS/train_throughput.md"
}

part3() {
    corpus
    log "Table 6: $T6_PES, $T6_ITERS steps each, side by side on the one device (a small model leaves it idle)"
    local ckpts=() pids=() t0
    t0=$(date +%s)
    for pe in $T6_PES; do
        local dir=out/gpu_table6_$pe
        rm -rf "$dir"  # this script's own run folder: a fresh run each time
        # shellcheck disable=SC2086
        python train.py config/table6_expe.py --pe="$pe" --data_dir="$DATA" --out_dir="$dir" --max_iters="$T6_ITERS" \
            --init_from=scratch $T6 --device="$DEVICE" > "$dir.log" 2>&1 &
        pids+=($!)
        ckpts+=("$dir")
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || { tail -n 20 "${ckpts[$i]}.log"; exit 1; }
        grep -E '^step|^iter' "${ckpts[$i]}.log" | tail -n 2
    done
    echo "training wall time: $(( $(date +%s) - t0 )) s"
    rm -rf out/gpu_table6_eval out/gpu_table6_eval_scaled
    { echo "\$ python eval.py --ckpt ${ckpts[*]} --ev ${EVS//,/ } --device $DEVICE"
      python eval.py --ckpt "${ckpts[@]}" --ev ${EVS//,/ } --device "$DEVICE" --out out/gpu_table6_eval
      echo "\$ python eval.py --ckpt ${ckpts[*]} --ev ${EVS//,/ } --scale 0.5 --device $DEVICE"
      python eval.py --ckpt "${ckpts[@]}" --ev ${EVS//,/ } --scale 0.5 --device "$DEVICE" --out out/gpu_table6_eval_scaled; } 2>&1 | tee "$RESULTS/table6.md"
    save "$RESULTS/table6.md"
}

case $PART in
    1) part1 ;;
    2) part2 ;;
    3) part3 ;;
    all) part1; part2; part3 ;;
    corpus) corpus ;;
    *) echo "error: PART=$PART: use 1, 2, 3, all or corpus"; exit 2 ;;
esac
log "done: $RESULTS"
