"""
Loss at 1x to 16x the training length, for one or more checkpoints, as ONE markdown table.

$ python eval.py --ckpt out/demo_expe out/demo_rope               # 1 2 4 8 16 x block_size (default --ckpt out)
$ python eval.py --ckpt out/demo_expe --ev 4 --scale 0.5          # 4x, positions scaled by 1/2 (interpolation)
$ python eval.py --ckpt out/demo_rope --stride 128 --windows 2        # sliding windows: every token has >= ev x T - 128 of context
$ python eval.py --ckpt out/demo_rope --set block_size=256 rope_scaling=yarn rope_factor=2 rope_original=128  # YaRN, 1x = 256

Every cell averages the cross-entropy (nats/token) of the SAME target tokens: one fixed stretch at the
start of the val split (--windows x 16 x block_size tokens, whichever --ev are asked), cut into
non-overlapping windows of ev x block_size tokens; longer windows only give those tokens more context
(evaluation.py). --stride S switches to the sliding-window protocol: windows of ev x block_size advanced
by S tokens, each scoring only its last S, so every scored token has at least ev x block_size - S tokens
of context (the same number of scored tokens). A pe that cannot run at a length shows n/a and why. Written to --out: eval.md,
eval.json, and the per-position loss at the longest length (per_position.csv, per_position.png); an
earlier eval there is kept unless --overwrite.
"""
import json
import os
import sys
from functools import partial

from configurator import configure, die, exit_on_ctrl_c
from core import (autocast, check_multiples, data_of, free_memory, load_models, model_settings, out_folder, out_of_memory,
                  pick_device, scale_problem, write_results, write_text)
from data import val_tokens
from evaluation import STRETCH_EV, cannot_run, plot_curves, sliding_losses, window_losses, write_curves_csv

# -----------------------------------------------------------------------------
# settings (core.configure: --key value or --key=value)
ckpt = ['out']            # out_dirs (or ckpt.pt files) to evaluate, one table row each
ev = [1, 2, 4, 8, 16]     # multiples of the training length
scale = None              # pos_scale: positions (or ExPE's values) multiplied by this; default: each checkpoint's own
set = []                  # KEY=VALUE ...: model settings to evaluate with, those the weights carry (block_size, rope_scaling, ...)
windows = 16              # windows at 16x (or the largest ev): sets the tokens per cell
stride = 0                # > 0: sliding-window protocol, windows advanced by this many tokens, each scoring its last stride
data_dir = ''             # val shards to use ('' = each checkpoint's data_dir)
batch_tokens = 32768      # tokens per forward pass (lower it if memory runs out)
out = 'out/eval'          # folder for eval.md, eval.json, per_position.csv and per_position.png
overwrite = False         # replace an earlier eval in out (else refused)
device = ''               # '' -> cuda if available, else mps, else cpu
dtype = ''                # float32 | bfloat16 ('' -> bfloat16 on cuda, else float32)
# -----------------------------------------------------------------------------
configure(globals())
exit_on_ctrl_c()
check_multiples(ev)
if windows < 1:
    die(f"--windows {windows}: use a positive number of windows")
if stride < 0:
    die(f"--stride {stride}: use 0 (non-overlapping windows) or a positive number of tokens")
if scale is not None and scale_problem(scale):
    die(scale_problem(scale))
if batch_tokens < 1:
    die(f"--batch_tokens {batch_tokens}: use a positive number of tokens per forward pass")
if dtype not in ('', 'float32', 'bfloat16'):
    die(f"--dtype {dtype}: use float32 or bfloat16")
settings = model_settings(set)
if scale is not None and 'pos_scale' in settings:
    die("--scale and --set pos_scale=... say the same thing: give one")
device = device or pick_device()  # a device asked for is checked where the checkpoints load
loaded = load_models(ckpt, device, settings, scale, unscalable='keep')  # a pe without positions to scale: n/a below
try:  # each run's val data, found (a relative data_dir from wherever it was meant) and checked before --out is touched
    datas = [data_of(ck, path, data_dir) for path, _, ck in loaded]
except ValueError as e:
    die(e)
OUT_FILES = ('eval.md', 'eval.json', 'per_position.csv', 'per_position.png')
found = [n for n in OUT_FILES if os.path.exists(os.path.join(out, n))]
if found and not overwrite:
    die(f"{out} already holds an earlier run ({', '.join(found)}): pass another --out, or --overwrite to replace it")
out_folder(out)  # now, not after the whole evaluation
ctx = autocast(device, dtype)

# -----------------------------------------------------------------------------
# one row per checkpoint, one cell per length
max_ev = max(ev)
T_max = max(m.config.block_size for _, m, _ in loaded)
longest, stretch = max_ev * T_max, max(STRETCH_EV, max_ev) * T_max
n_tokens = windows * stretch
if stride:  # every cell scores the same n_tokens targets after the first `stretch` tokens, stride at a time
    shortest = min(ev) * min(m.config.block_size for _, m, _ in loaded)
    if stride > shortest:
        die(f"--stride {stride}: a window scores its last stride tokens, so it must be at most the shortest window "
            f"({min(ev)}x = {shortest} tokens)")
    n_tokens = n_tokens // stride * stride or stride
rows, curves = [], {}
for (path, model, ck), (where, meta) in zip(loaded, datas):
    T, pe = model.config.block_size, model.config.pe
    try:
        tokens = val_tokens(where, n_tokens + 1 + (stretch if stride else 0))
        vocab = min(model.config.vocab_size, meta.get('vocab_size') or model.config.vocab_size)
    except (FileNotFoundError, ValueError) as e:
        die(e)
    if len(tokens) and tokens.max() >= vocab:
        die(f"the val split of {where} holds token id {tokens.max()}, outside the vocabulary of {vocab}: "
            "it is not this checkpoint's data, or a shard is damaged; re-run prepare.py or pass --data_dir")
    if stride and len(tokens) < stretch + n_tokens + 1:
        die(f"the val split of {where} has {len(tokens)} tokens, fewer than the {stretch + n_tokens + 1} the sliding "
            "protocol needs (a 16x context, then the scored tokens): lower --windows or prepare more val data")
    if len(tokens) < longest + 1:
        die(f"the val split of {where} has {len(tokens)} tokens, fewer than one window of {longest}: "
            "prepare more val data or lower --ev")
    unit = stretch if len(tokens) > stretch else longest  # a short val split: whole windows of the asked lengths
    if not stride:
        tokens = tokens[:(len(tokens) - 1) // unit * unit + 1]  # whole windows at every length
    row = {'ckpt': path, 'pe': pe, 'arch': model.config.arch, 'scale': model.config.pos_scale if scale is None else scale,
           'block_size': T, 'set': settings, 'data_dir': where, 'iter': ck.get('iter_num'), 'cells': {}}
    for e in ev:
        cell, note = {'length': e * T}, ''
        na = cannot_run(model, e * T, scale if scale is not None else model.config.pos_scale)
        try:
            if na:
                cell['na'] = na
            elif stride:
                losses = sliding_losses(model, tokens, e * T, stride, stretch, n_tokens, batch_tokens, device, ctx)
                cell.update(loss=losses.mean().item(), tokens=losses.numel(), windows=losses.numel() // stride,
                            context=e * T - stride)
            else:
                losses = window_losses(model, tokens, e * T, batch_tokens, device, ctx)
                cell.update(loss=losses.mean().item(), tokens=losses.numel(), windows=losses.size(0))
                if e == max_ev:
                    curves[path] = (losses.mean(0).numpy(), T, pe)
        except (RuntimeError, MemoryError) as oom:  # on any device: this cell is n/a, the ones computed stay
            if not out_of_memory(oom):
                raise
            free_memory()
            cell['na'] = 'out of memory'
            several = batch_tokens // (e * T) > 1  # windows per forward pass
            note = (f", {e * T} tokens on {device}: lower --batch_tokens (now {batch_tokens})" if several else
                    f": one window of {e * T} tokens does not fit on {device}; lower --ev or use a larger device")
        row['cells'][e] = cell
        print(f"{path} {e}x: " + (f"{cell['loss']:.4f} over {cell['tokens']:,} tokens" if 'loss' in cell
                                  else f"n/a ({cell['na']}{note})"), file=sys.stderr)
    rows.append(row)

# -----------------------------------------------------------------------------
# one markdown table: a row per checkpoint, a column per multiple
lines = ['| checkpoint | pe | scale | ' + ' | '.join(f'{e}x' for e in ev) + ' |', '|' + '---|' * (3 + len(ev))]
for r in rows:
    cells = [f"{c['loss']:.4f}" if 'loss' in c else f"n/a ({c['na']})" for c in r['cells'].values()]
    name = r['ckpt'] + ''.join(f" {k}={v}" for k, v in r['set'].items() if k != 'pos_scale')
    lines.append(f"| {name} | {r['pe']} | {r['scale']:g} | " + ' | '.join(cells) + ' |')
counts = sorted({c['tokens'] for r in rows for c in r['cells'].values() if 'tokens' in c})
lengths = ', '.join(f"{e}x = {e * rows[0]['block_size']}" for e in ev)
how = (f"sliding windows ({lengths} tokens) advanced by {stride}, each scoring its last {stride}: every scored token "
       f"has at least the window minus {stride} tokens of context" if stride else f"non-overlapping windows ({lengths} tokens)")
lines += ['', f"Mean cross-entropy (nats/token) on val; each cell averages the same {' / '.join(f'{n:,}' for n in counts)} "
              f"target tokens, from {how}."]
table = '\n'.join(lines)
print(table)
result = {'ev': ev, 'scale': scale, 'set': settings, 'tokens_per_cell': n_tokens, 'stride': stride, 'rows': rows}
files = [(os.path.join(out, 'eval.md'), partial(write_text, table + '\n')),
         (os.path.join(out, 'eval.json'), partial(write_text, json.dumps(result, indent=1)))]
if curves:
    files += [(os.path.join(out, 'per_position.csv'), partial(write_curves_csv, curves)),
              (os.path.join(out, 'per_position.png'), partial(plot_curves, curves, max_ev, scale or 1.0))]
write_results(files, out, 'the table printed above is the result')  # after the print: a late write error loses nothing
print(f"wrote {out}/eval.md, eval.json" + (", per_position.csv, per_position.png" if curves else ''), file=sys.stderr)
