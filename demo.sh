#!/usr/bin/env bash
# The CPU demo, end to end: prepare the embedded Shakespeare corpus, train a tiny ExPE and a tiny
# RoPE model and a tiny TAPE model (config/demo_cpu.py), and print their loss at 1x..16x the training length.
# Re-running resumes or skips finished runs. Extra PEs: PES="expe rope alibi" bash demo.sh
set -euo pipefail
cd "$(dirname "$0")"
PES=${PES:-"expe rope tape"}
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
python eval.py --ckpt "${ckpts[@]}" --out out/demo_eval
