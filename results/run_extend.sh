#!/usr/bin/env bash
# Context extension at CPU scale, end to end (docs/extension.md):
#   bash results/run_extend.sh            (from the repo root, after results/run_cpu.sh; JOBS=2 runs two at a time)
# Parents: the demo runs of results/run_cpu.sh, $PARENTS/{rope,expe,alibi}-s{1337,1338} (T = 128); a
# missing or unfinished one is trained (or resumed) with run_cpu.sh's command. Each row below starts
# from a parent and trains config/extend_cpu.py at T = 256: the same budget for every row (300 steps
# x 2,048 tokens), the parent's seed, so the same batches. The eval-only rows give the parents an
# extension with eval.py --set, without training. Then eval.py (loss at 1x..16x of 256) and
# eval_tasks.py (the passkey grid) for every row, and $RES/summary.md: mean ± half-range over seeds,
# trainable parameters and training time. Every process runs on one CPU thread. Finished runs are
# skipped, interrupted ones resume.
# A rehearsal on a scratch folder (the settings below are the defaults otherwise):
#   PARENTS=/tmp/p OUT=/tmp/o RES=/tmp/r SEEDS=1337 PARENT_ARGS="--max_iters=100" \
#   FT_ARGS="--max_iters=20 --eval_interval=10 --log_interval=5" ROWS="rope-pi tape-peft" EVAL_ROWS="rope-yarn" \
#   WINDOWS=1 KEYS=1 bash results/run_extend.sh
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
export OMP_NUM_THREADS=1
PARENTS=${PARENTS:-out/results}
OUT=${OUT:-out/extend}
RES=${RES:-results/extend}
SEEDS=${SEEDS:-"1337 1338"}
PARENT_ARGS=${PARENT_ARGS:-}  # more train.py settings for a missing parent
FT_ARGS=${FT_ARGS:-}          # more train.py settings for every fine-tune
WINDOWS=${WINDOWS:-16}        # eval.py --windows
KEYS=${KEYS:-10}              # eval_tasks.py --keys
THETA=0.00390625              # ExPE's θ of the parents, 1/(2 x 128): a child at T = 256 keeps it
# name, parent pe, then the child's settings (train.py)
FINE_TUNED=(
    "rope-ft rope --pe=rope"
    "rope-pi rope --pe=rope --pos_scale=0.5"
    "rope-ntk rope --pe=rope --rope_scaling=ntk --rope_factor=2.0"
    "rope-yarn rope --pe=rope --rope_scaling=yarn --rope_factor=2.0 --rope_original=128"
    "tape-full rope --pe=tape"
    "tape-peft rope --pe=tape --trainable=pe,wte,norm"
    "expe-ft expe --pe=expe --expe_theta=$THETA"
    "expe-scaled expe --pe=expe --expe_theta=$THETA --pos_scale=0.5"
    "alibi-ft alibi --pe=alibi"
    "drope rope --pe=nope --replace_pe=True"
)
# drope (DroPE, Sakana 2025): the RoPE parent continued without any pe (replace_pe: rope -> nope) on the same
# budget as the other rows, at T = 256 (the paper recalibrates at the original length and extends zero-shot)
# name, parent pe, then the settings the parent is evaluated with (eval.py --set): no training
EVAL_ONLY=(
    "rope rope block_size=256"
    "rope-pi rope block_size=256 pos_scale=0.5"
    "rope-ntk rope block_size=256 rope_scaling=ntk rope_factor=2.0"
    "rope-yarn rope block_size=256 rope_scaling=yarn rope_factor=2.0 rope_original=128"
    "expe expe block_size=256 expe_theta=$THETA"
    "expe-scaled expe block_size=256 expe_theta=$THETA pos_scale=0.5"
    "alibi alibi block_size=256"
)
pick() {  # pick "NAMES" ROW...: the rows whose name is in NAMES (all if NAMES is empty)
    local names=$1; shift
    for row in "$@"; do
        if [ -z "$names" ] || [[ " $names " == *" ${row%% *} "* ]]; then echo "$row"; fi
    done
}
mapfile -t FINE_TUNED < <(pick "${ROWS:-}" "${FINE_TUNED[@]}")
mapfile -t EVAL_ONLY < <(pick "${EVAL_ROWS:-}" "${EVAL_ONLY[@]}")
python prepare.py
mkdir -p "$PARENTS" "$OUT" "$RES"

finished() {  # finished DIR: its checkpoint reached its max_iters
    [ -f "$1/ckpt.pt" ] && python -c "import torch,sys; c=torch.load('$1/ckpt.pt',weights_only=True); sys.exit(c['iter_num']<c['config']['max_iters'])"
}
throttle() { while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done; }  # a failed job stops the script
wait_all() { for pid in $(jobs -p); do wait "$pid"; done; }                      # (a bare `wait` would not)

t0=$(date +%s)
parents=$(for row in "${FINE_TUNED[@]}" "${EVAL_ONLY[@]}"; do echo "$row" | cut -d' ' -f2; done | sort -u)
for pe in $parents; do
    for seed in $SEEDS; do
        dir=$PARENTS/$pe-s$seed
        if finished "$dir"; then continue; fi
        resume=(); [ -f "$dir/ckpt.pt" ] && resume=(--init_from=resume)
        echo "train parent $dir"
        # shellcheck disable=SC2086
        python train.py config/demo_cpu.py --out_dir="$dir" --pe="$pe" --seed="$seed" $PARENT_ARGS "${resume[@]}" > "$dir.train.log" 2>&1 &
        throttle
    done
done
wait_all
for row in "${FINE_TUNED[@]}"; do
    read -r name parent args <<< "$row"
    for seed in $SEEDS; do
        dir=$OUT/$name-s$seed
        if finished "$dir"; then echo "skip $dir (finished)"; continue; fi
        from=(--init_from="$PARENTS/$parent-s$seed"); [ -f "$dir/ckpt.pt" ] && from=(--init_from=resume)
        echo "train $dir $args"
        # shellcheck disable=SC2086
        python train.py config/extend_cpu.py "${from[@]}" --seed="$seed" --out_dir="$dir" $args $FT_ARGS > "$dir.train.log" 2>&1 &
        throttle
    done
done
wait_all
echo "training wall time: $(( $(date +%s) - t0 )) s"

# evaluation: loss at 1x..16x of 256 and the passkey grid, the fine-tuned rows in one table, each eval-only row in its own
t1=$(date +%s)
ckpts=(); for row in "${FINE_TUNED[@]}"; do for seed in $SEEDS; do ckpts+=("$OUT/${row%% *}-s$seed"); done; done
if [ ${#ckpts[@]} -gt 0 ]; then
    python eval.py --ckpt "${ckpts[@]}" --windows "$WINDOWS" --out "$RES/loss/fine-tuned" --overwrite \
        > "$OUT/eval-loss-fine-tuned.log" 2>&1 &
    throttle
    python eval_tasks.py --ckpt "${ckpts[@]}" --tasks passkey --keys "$KEYS" --out "$RES/passkey/fine-tuned" --overwrite \
        > "$OUT/eval-passkey-fine-tuned.log" 2>&1 &
    throttle
fi
for row in "${EVAL_ONLY[@]}"; do
    read -r name parent settings <<< "$row"
    ckpts=(); for seed in $SEEDS; do ckpts+=("$PARENTS/$parent-s$seed"); done
    # shellcheck disable=SC2086
    python eval.py --ckpt "${ckpts[@]}" --set $settings --windows "$WINDOWS" --out "$RES/loss/eval-only-$name" --overwrite \
        > "$OUT/eval-loss-eval-only-$name.log" 2>&1 &
    throttle
    # shellcheck disable=SC2086
    python eval_tasks.py --ckpt "${ckpts[@]}" --set $settings --tasks passkey --keys "$KEYS" \
        --out "$RES/passkey/eval-only-$name" --overwrite > "$OUT/eval-passkey-eval-only-$name.log" 2>&1 &
    throttle
done
wait_all
echo "evaluation wall time: $(( $(date +%s) - t1 )) s"

# the tables: a row per recipe in the order above, seeds pooled (mean ± half the range)
order=(); for row in "${FINE_TUNED[@]}" "${EVAL_ONLY[@]}"; do order+=("${row%% *}"); done
python - "$RES" "${order[@]}" <<'EOF' | tee "$RES/summary.md"
import glob, json, os, sys
import numpy as np
import torch

res, order = sys.argv[1], sys.argv[2:]
rows = {}  # (fine-tuned?, name) -> {'loss': [...], 'passkey': [...], 'ckpts': [...]}
for kind in ('loss', 'passkey'):
    for path in sorted(glob.glob(f'{res}/{kind}/*/{"eval" if kind == "loss" else "tasks"}.json')):
        folder = os.path.basename(os.path.dirname(path))
        for r in json.load(open(path))['rows']:
            tuned = folder == 'fine-tuned'
            name = os.path.basename(r['ckpt']).rsplit('-s', 1)[0] if tuned else folder.removeprefix('eval-only-')
            if name not in order:  # an earlier run's row that this run did not ask for
                continue
            row = rows.setdefault((tuned, name), {'loss': [], 'passkey': [], 'ckpts': []})
            row[kind].append(r)
            if kind == 'loss':
                row['ckpts'].append(r['ckpt'])
spread = lambda v: f"{np.mean(v):.3f} ± {(max(v) - min(v)) / 2:.3f}"
evs = sorted({int(e) for row in rows.values() for r in row['loss'] for e in r['cells']})
print('| recipe | fine-tuned | seeds | trainable params | train s | ' + ' | '.join(f'{e}x' for e in evs) + ' | 16x vs 1x |')
print('|---|---|---|---|---|' + '---|' * (len(evs) + 1))
for (tuned, name), row in sorted(rows.items(), key=lambda kv: (not kv[0][0], order.index(kv[0][1]))):
    losses = {e: [r['cells'][str(e)].get('loss') for r in row['loss']] for e in evs}
    cells = [spread(v) if v and None not in v else 'n/a' for v in losses.values()]
    ratio = [b / a - 1 for a, b in zip(losses[evs[0]], losses[evs[-1]]) if a and b]
    n_params, secs = 'none', '-'
    if tuned:
        cks = [torch.load(os.path.join(c, 'ckpt.pt'), weights_only=True, map_location='cpu') for c in row['ckpts']]
        n_params = ' / '.join(sorted({f"{c['trainable_params']:,}" for c in cks}))
        # training time: the logged ms/iter over the logged iterations (evaluations excluded; a resume counts once)
        t = [sum(r['ms_per_iter'] * c['config']['log_interval'] for r in map(json.loads, open(os.path.join(d, 'log.jsonl')))
                 if 'ms_per_iter' in r) / 1000 for d, c in zip(row['ckpts'], cks)]
        secs = f"{np.mean(t):.0f}"
    growth = f"{100 * np.mean(ratio):+.1f}%" if len(ratio) == len(row['loss']) else 'n/a'
    print(f"| {name} | {'yes' if tuned else 'no'} | {len(row['loss'])} | {n_params} | {secs} | " + ' | '.join(cells) + f" | {growth} |")
print(f"\nLoss (nats/token) on val at 1x..16x of T = 256 (eval.py); mean ± half the range over seeds. 16x vs 1x: "
      "the 16x loss over the 1x loss, minus 1. Eval-only rows are the parents (T = 128) with eval.py --set.\n")
print('| recipe | fine-tuned | ' + ' | '.join(f'{e}x' for e in evs) + ' |')
print('|---|---|' + '---|' * len(evs))
for (tuned, name), row in sorted(rows.items(), key=lambda kv: (not kv[0][0], order.index(kv[0][1]))):
    cells = []
    for e in evs:
        accs = [c['acc'] for r in row['passkey'] for c in r['passkey'][str(e)].values() if 'acc' in c]
        cells.append(f"{100 * np.mean(accs):.0f}%" if accs else 'n/a')
    print(f"| {name} | {'yes' if tuned else 'no'} | " + ' | '.join(cells) + ' |')
print("\nPasskey accuracy (eval_tasks.py, exact match of greedy decoding), all depths and seeds pooled. "
      "None of these models was trained with the passkey mix.")
EOF
