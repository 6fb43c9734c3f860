#!/usr/bin/env bash
# Re-runs every CPU-scale result of results/README.md end to end:
#   bash results/run_cpu.sh            (from the repo root; JOBS=2 trains two runs at a time)
#   PES="kerple fox" SEEDS="1337 1338" ABL_SEEDS="" RESULTS=results/new_pes bash results/run_cpu.sh   (some runs)
# PES: the main table's pes (default: every pe in model.PES); SEEDS: theirs (default 5); ABL_SEEDS: the
# seeds of the ExPE ablations and sweeps (default 3); STAGE=train stops before the tables (which need
# every run of the defaults, or RESULTS=another folder for a subset's own tables).
# Every run is config/demo_cpu.py (byte-level Shakespeare, 4 x 128, T = 128, 1000 steps x 2,048
# tokens) plus the overrides named below. Finished runs are skipped, interrupted ones resume.
# Every process runs on one CPU thread, whatever JOBS is: the numbers depend on the thread count
# in their last digits, and two runs at a time fill the 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1
OUT=out/results
PES=${PES:-$(python -c "import model; print(' '.join(model.PES))")}
SEEDS=${SEEDS-"1337 1338 1339 1340 1341"}
ABL_SEEDS=${ABL_SEEDS-"1337 1338 1339"}
STAGE=${STAGE:-all}
RES=${RESULTS:-results}  # the tables (replaced): another folder for a subset of the runs
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
for seed in $SEEDS; do  # seed by seed: every pe gets its first seeds before any gets its fifth
    for pe in $PES; do runs+=("$pe-s$seed --pe=$pe --seed=$seed"); done
done
# Table 7 ablations, and sweeps of the two lost numbers: l = n_embd/8, n_embd/2 (n_embd/4 = 32 is the
# default) and theta = 1/(4T), 1/T (1/(2T) is the default). Seed 1337 keeps its old folder names.
ABLATIONS=("abl-stable --expe_stable=True" "abl-l1 --expe_dims=1" "abl-once --expe_once=True"
           "abl-learned --expe_learned=random" "abl-learned-init --expe_learned=init" "abl-v --expe_v=True"
           "sweep-l16 --expe_dims=16" "sweep-l64 --expe_dims=64"
           "sweep-theta-4T --expe_theta=0.001953125" "sweep-theta-1T --expe_theta=0.0078125")
abl_dir() { [ "$2" = 1337 ] && echo "$1" || echo "$1-s$2"; }  # abl_dir NAME SEED
for seed in $ABL_SEEDS; do
    for row in "${ABLATIONS[@]}"; do runs+=("$(abl_dir "${row%% *}" "$seed") ${row#* } --seed=$seed"); done
done

t0=$(date +%s)
for run in "${runs[@]}"; do
    # shellcheck disable=SC2086
    train $run &
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
done
wait
echo "training wall time: $(( $(date +%s) - t0 )) s"
[ "$STAGE" = train ] && exit 0

ev() { python eval.py --windows 16 --overwrite "$@"; }  # $RES holds the previous run's tables
mkdir -p "$RES"
main=(); for pe in $PES; do for s in $SEEDS; do main+=("$OUT/$pe-s$s"); done; done
ev --ckpt "${main[@]}" --out "$RES/cpu_main" | tee "$RES/cpu_main.txt"
# the second protocol (eval.py --stride): every scored token has at least ev x 128 - 64 tokens of context
python eval.py --windows 4 --stride 64 --overwrite --ckpt "${main[@]}" --out "$RES/cpu_main_sliding" | tee "$RES/cpu_main_sliding.txt"
scaled=(); for pe in $PES; do case $pe in expe|exqpe|rope) for s in $SEEDS; do scaled+=("$OUT/$pe-s$s"); done;; esac; done
if [ ${#scaled[@]} -gt 0 ]; then
    ev --ckpt "${scaled[@]}" --scale 0.5 --out "$RES/cpu_scaled" | tee "$RES/cpu_scaled.txt"
fi
abl=(); for seed in $ABL_SEEDS; do
    abl+=("$OUT/expe-s$seed"); for row in "${ABLATIONS[@]}"; do abl+=("$OUT/$(abl_dir "${row%% *}" "$seed")"); done
done
if [ ${#abl[@]} -gt 0 ]; then
    ev --ckpt "${abl[@]}" --out "$RES/cpu_ablations" | tee "$RES/cpu_ablations.txt"
fi
summarized=("$RES/cpu_main/eval.json"); [ ${#scaled[@]} -gt 0 ] && summarized+=("$RES/cpu_scaled/eval.json")
python results/summarize.py --files "${summarized[@]}" > "$RES/cpu_summary.md"
python results/summarize.py --files "$RES/cpu_main_sliding/eval.json" > "$RES/cpu_summary_sliding.md"
cat "$RES/cpu_summary.md" "$RES/cpu_summary_sliding.md"
