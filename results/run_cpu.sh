#!/usr/bin/env bash
# Re-runs every CPU-scale result of results/README.md end to end:
#   bash results/run_cpu.sh            (from the repo root; JOBS=2 trains two runs at a time)
# Every run is config/demo_cpu.py (byte-level Shakespeare, 4 x 128, T = 128, 1000 steps x 2,048
# tokens) plus the overrides named below. Finished runs are skipped, interrupted ones resume.
# Every process runs on one CPU thread, whatever JOBS is: the numbers depend on the thread count
# in their last digits, and two runs at a time fill the 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1
OUT=out/results
SEEDS="1337 1338"
python prepare.py

train() {  # train OUT_NAME OVERRIDES...
    local dir=$OUT/$1; shift
    local log=$dir.train.log
    mkdir -p "$OUT"
    if [ -f "$dir/ckpt.pt" ] && python -c "import torch,sys; c=torch.load('$dir/ckpt.pt',weights_only=True); sys.exit(c['iter_num']<c['config']['max_iters'])"; then
        echo "skip $dir (finished)"; return
    fi
    local resume=()
    [ -f "$dir/ckpt.pt" ] && resume=(--init_from=resume)
    echo "train $dir $*"
    python train.py config/demo_cpu.py --out_dir="$dir" "$@" "${resume[@]}" > "$log" 2>&1
}

runs=()
for pe in expe exqpe rope sinusoidal learned alibi nope tape fire t5 randpe xpos; do
    for seed in $SEEDS; do runs+=("$pe-s$seed --pe=$pe --seed=$seed"); done
done
# Table 7 ablations (seed 1337), and sweeps of the two lost numbers: l = n_embd/8, n_embd/2
# (n_embd/4 = 32 is the default) and theta = 1/(4T), 1/T (1/(2T) is the default)
runs+=("abl-stable --expe_stable=True" "abl-l1 --expe_dims=1" "abl-once --expe_once=True"
       "abl-learned --expe_learned=random" "abl-learned-init --expe_learned=init" "abl-v --expe_v=True"
       "sweep-l16 --expe_dims=16" "sweep-l64 --expe_dims=64"
       "sweep-theta-4T --expe_theta=0.001953125" "sweep-theta-1T --expe_theta=0.0078125")

t0=$(date +%s)
for run in "${runs[@]}"; do
    # shellcheck disable=SC2086
    train $run &
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
done
wait
echo "training wall time: $(( $(date +%s) - t0 )) s"

ev() { python eval.py --windows 16 --overwrite "$@"; }  # results/ holds the previous run's tables
main=(); for pe in expe exqpe rope sinusoidal learned alibi nope tape fire t5 randpe xpos; do for s in $SEEDS; do main+=("$OUT/$pe-s$s"); done; done
ev --ckpt "${main[@]}" --out results/cpu_main | tee results/cpu_main.txt
scaled=(); for pe in expe exqpe rope; do for s in $SEEDS; do scaled+=("$OUT/$pe-s$s"); done; done
ev --ckpt "${scaled[@]}" --scale 0.5 --out results/cpu_scaled | tee results/cpu_scaled.txt
abl=("$OUT/expe-s1337"); for a in stable l1 once learned learned-init v; do abl+=("$OUT/abl-$a"); done
for s in l16 l64 theta-4T theta-1T; do abl+=("$OUT/sweep-$s"); done
ev --ckpt "${abl[@]}" --out results/cpu_ablations | tee results/cpu_ablations.txt
python results/summarize.py --files results/cpu_main/eval.json results/cpu_scaled/eval.json > results/cpu_summary.md
cat results/cpu_summary.md
