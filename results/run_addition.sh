#!/usr/bin/env bash
# Integer addition at CPU scale (TAPE's length-generalization experiment), end to end:
#   bash results/run_addition.sh                        (from the repo root)
#   PES="rope expe" SEEDS=1337 RESULTS=/tmp/add bash results/run_addition.sh     (fewer runs, tables elsewhere)
# Every pe x seed trains config/addition_cpu.py (operands of 1..N digits, see the config), two runs at
# a time with one thread each; finished runs are skipped, interrupted ones resume. Then eval_tasks.py
# scores every checkpoint on the grid of operand lengths 1..4N (exact match, 100 problems per cell)
# and writes the summary table, the accuracy by answer length, a heat map per checkpoint and
# tasks.json into results/addition/.
set -euo pipefail
cd "$(dirname "$0")/.."
PES=${PES:-$(python -c "import model; print(' '.join(model.PES))")}
SEEDS=${SEEDS:-"1337 1338 1339"}
OUT=out/addition
RESULTS=${RESULTS:-results/addition}  # the tables (replaced): another folder for a subset of the runs
mkdir -p "$OUT" "$RESULTS"

train() {  # train PE SEED
    local dir=$OUT/$1-s$2
    if [ -f "$dir/ckpt.pt" ] && python -c "import torch,sys; c=torch.load('$dir/ckpt.pt',weights_only=True); sys.exit(c['iter_num']<c['config']['max_iters'])"; then
        echo "skip $dir (finished)"; return
    fi
    local resume=()
    [ -f "$dir/ckpt.pt" ] && resume=(--init_from=resume)
    echo "train $dir"
    OMP_NUM_THREADS=1 python train.py config/addition_cpu.py --pe="$1" --seed="$2" --out_dir="$dir" "${resume[@]}" > "$dir.train.log" 2>&1
}

t0=$(date +%s)
ckpts=()
for pe in $PES; do
    for seed in $SEEDS; do
        train "$pe" "$seed" &
        ckpts+=("$OUT/$pe-s$seed")
        while [ "$(jobs -rp | wc -l)" -ge 2 ]; do wait -n; done  # a failed run stops the script (set -e)
    done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n; done
echo "training wall time: $(( $(date +%s) - t0 )) s"
t0=$(date +%s)
OMP_NUM_THREADS=2 python eval_tasks.py --ckpt "${ckpts[@]}" --tasks addition --out "$RESULTS" --overwrite
echo "eval wall time: $(( $(date +%s) - t0 )) s"
