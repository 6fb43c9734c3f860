#!/usr/bin/env bash
# Passkey retrieval at CPU scale (results/README.md, "Passkey retrieval"), end to end:
#   bash results/run_passkey.sh          (from the repo root; PES="expe rope" for fewer runs,
#                                         RESULTS=folder to write the tables elsewhere)
# Each run is config/passkey_cpu.py: the demo model (T = 128), 6000 steps x 16 rows (cosine to
# step 3000, then flat), half of the rows synthetic passkey examples. Two runs train at a time
# (one thread each); interrupted and shorter runs resume, finished ones only re-evaluate. Then
# eval_tasks.py (1x..16x x 5 depths x 10 keys per checkpoint, and 1x..4x with --scale 0.5),
# results/passkey_probe.py, and eval.py for the same checkpoints' val loss. Every process runs on
# one CPU thread (the numbers depend on the thread count in their last digits).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
PES=${PES:-"expe rope tape alibi fire t5 randpe xpos"}
RESULTS=${RESULTS:-results/cpu_passkey}
mkdir -p out/logs
python prepare.py

train() {  # train PE
    local dir=out/passkey_$1 resume=()
    [ -f "$dir/ckpt.pt" ] && resume=(--init_from=resume)  # a finished run only re-evaluates
    echo "train $dir"
    python train.py config/passkey_cpu.py --pe="$1" --out_dir="$dir" "${resume[@]}" >> "out/logs/passkey_$1.log" 2>&1
}

t0=$(date +%s)
set -- $PES
while [ $# -gt 0 ]; do  # two at a time; a failed run stops the script
    pids=()
    train "$1" & pids+=($!)
    if [ $# -gt 1 ]; then train "$2" & pids+=($!); fi
    for pid in "${pids[@]}"; do wait "$pid"; done
    shift $(( $# > 1 ? 2 : 1 ))
done
echo "training: $(( $(date +%s) - t0 )) s"
ckpts=()
for pe in $PES; do ckpts+=("out/passkey_$pe"); done
t0=$(date +%s)
python eval_tasks.py --ckpt "${ckpts[@]}" --tasks passkey --out "$RESULTS" --overwrite
python eval_tasks.py --ckpt "${ckpts[@]}" --tasks passkey --ev 1 2 4 --scale 0.5 --out "$RESULTS/scaled" --overwrite
python results/passkey_probe.py --ckpt "${ckpts[@]}" > "$RESULTS/probe.md"
python eval.py --ckpt "${ckpts[@]}" --out "$RESULTS/loss" --overwrite
echo "eval: $(( $(date +%s) - t0 )) s"
