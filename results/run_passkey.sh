#!/usr/bin/env bash
# Passkey retrieval at CPU scale (results/README.md, "Passkey retrieval"), end to end:
#   bash results/run_passkey.sh          (from the repo root; PES="expe rope" for fewer runs)
# Each run is config/passkey_cpu.py: the demo model at T = 256, 1500 steps x 16 rows, a fifth of the
# rows synthetic passkey examples. Two runs train at a time (one thread each); finished runs are
# skipped, interrupted ones resume. Then eval_tasks.py: 1x..16x x 5 depths x 10 keys per checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PES=${PES:-"expe rope tape alibi"}
mkdir -p out/logs
python prepare.py

train() {  # train PE
    local dir=out/passkey_$1
    if [ -f "$dir/ckpt.pt" ] && python -c "import torch,sys; c=torch.load('$dir/ckpt.pt',weights_only=False); sys.exit(c['iter_num']<c['config']['max_iters'])"; then
        echo "skip $dir (finished)"; return
    fi
    local resume=()
    [ -f "$dir/ckpt.pt" ] && resume=(--init_from=resume)
    echo "train $dir"
    OMP_NUM_THREADS=1 python train.py config/passkey_cpu.py --pe="$1" --out_dir="$dir" "${resume[@]}" >> "out/logs/passkey_$1.log" 2>&1
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
python eval_tasks.py --ckpt "${ckpts[@]}" --tasks passkey --out results/cpu_passkey
