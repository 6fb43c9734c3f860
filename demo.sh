#!/usr/bin/env bash
# The CPU demo, end to end, on a machine with only python3: sets up what is missing (setup.sh: a local .venv),
# prepares the embedded Shakespeare corpus, trains three tiny models (ExPE, RoPE and TAPE, config/demo_cpu.py)
# and prints their loss at 1x..16x the training length. Re-running resumes or skips finished runs, then
# re-evaluates. PES="expe rope alibi" bash demo.sh: other pes. Arguments are passed to every train.py call
# (bash demo.sh --max_iters=20: a smoke run). One CPU thread per step (THREADS=2 to change): the table
# depends on the thread count in its last digits, and threads beyond the free cores slow every step.
set -euo pipefail
cd "$(dirname "$0")"
source ./setup.sh
PES=${PES:-"expe rope tape"}
export OMP_NUM_THREADS=${THREADS:-1}
echo "demo.sh: $OMP_NUM_THREADS CPU thread(s) per process"
"$PY" prepare.py
ckpts=()
for pe in $PES; do
    out=out/demo_$pe
    resume=()
    [ -f "$out/ckpt.pt" ] && resume=(--init_from=resume)  # finished runs just re-evaluate
    echo "=== training pe=$pe -> $out"
    "$PY" train.py config/demo_cpu.py --pe="$pe" --out_dir="$out" "${resume[@]}" "$@"
    ckpts+=("$out")
done
"$PY" eval.py --ckpt "${ckpts[@]}" --out out/demo_eval --overwrite  # the demo's own folder: re-running re-evaluates
