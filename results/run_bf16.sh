#!/usr/bin/env bash
# bf16 and ExPE (docs/pes.md, "bf16"): trains the demo ExPE, ExQPE and RoPE models once more with bf16
# autocast on the CPU (the fp32 ones are results/run_cpu.sh's {expe,exqpe,rope}-s1337, the same config and
# seed), then evaluates all six under five precisions of attention (results/bf16_probe.py). ExQPE is
# there for its stated purpose: values on a bf16-exact grid.
#   bash results/run_bf16.sh          (after results/run_cpu.sh; one thread per process)
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
OUT=out/results
for pe in expe exqpe rope; do
    [ -f "$OUT/$pe-s1337/ckpt.pt" ] || { echo "error: $OUT/$pe-s1337 is missing: run results/run_cpu.sh first"; exit 1; }
    if [ ! -f "$OUT/$pe-bf16/ckpt.pt" ]; then
        echo "train $OUT/$pe-bf16"
        python train.py config/demo_cpu.py --pe=$pe --dtype=bfloat16 --out_dir="$OUT/$pe-bf16" > "$OUT/$pe-bf16.train.log" 2>&1 &
    fi
done
wait
python results/bf16_probe.py --ckpt $OUT/expe-s1337 $OUT/expe-bf16 $OUT/exqpe-s1337 $OUT/exqpe-bf16 $OUT/rope-s1337 $OUT/rope-bf16 \
    | tee results/bf16_probe.md
