#!/usr/bin/env bash
# The CPU demo, end to end: prepare the embedded Shakespeare corpus, train three tiny models (ExPE,
# RoPE and TAPE, config/demo_cpu.py), and print their loss at 1x..16x the training length.
# Re-running resumes or skips finished runs, then re-evaluates. Extra PEs: PES="expe rope alibi" bash demo.sh
# One CPU thread per step (THREADS=n to change): the table depends on the thread count in its last
# digits, and on a busy machine more threads than free cores slow every step down several times.
set -euo pipefail
cd "$(dirname "$0")"
PES=${PES:-"expe rope tape"}
export OMP_NUM_THREADS=${THREADS:-1}
echo "demo.sh: $OMP_NUM_THREADS CPU thread(s) per process"
python prepare.py
ckpts=()
for pe in $PES; do
    out=out/demo_$pe
    resume=()
    [ -f "$out/ckpt.pt" ] && resume=(--init_from=resume)  # finished runs just re-evaluate
    echo "=== training pe=$pe -> $out"
    python train.py config/demo_cpu.py --pe="$pe" --out_dir="$out" "${resume[@]}"
    ckpts+=("$out")
done
python eval.py --ckpt "${ckpts[@]}" --out out/demo_eval --overwrite  # the demo's own folder: re-running re-evaluates
