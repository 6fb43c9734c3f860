"""
Loss at 1x to 16x the training length, for one or more checkpoints, as ONE markdown table.

$ python eval.py                                  # out/ckpt.pt at 1 2 4 8 16 x block_size
$ python eval.py --ev 4 --scale 0.5               # 4x, positions scaled by 1/2 (interpolation)
$ python eval.py --ckpt out/expe out/rope --out out/eval
$ python eval.py --ckpt out/rope --set block_size=256 rope_scaling=yarn rope_factor=2 rope_original=128   # YaRN, 1x = 256

Protocol: every cell averages the cross-entropy (nats/token) of the SAME target tokens: one fixed
stretch at the start of the val split (--windows x 16 x block_size tokens, whichever --ev are asked),
cut into non-overlapping windows of ev x block_size tokens. Longer windows only give those tokens
more context. Windows may cross document boundaries (EOT). An earlier eval in --out is kept unless
--overwrite is given.
"""
import argparse
import csv
from ast import literal_eval
from dataclasses import fields
import json
import math
import os
import sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from model import GPTConfig, load_checkpoint
from prepare import get_tokenizer, load_meta, read_shard, shard_paths

STRETCH_EV = 16  # the stretch is cut for 16x (or the largest --ev), so a cell's tokens never depend on the other --ev


def parse_settings(items):
    """--set KEY=VALUE ... -> {GPTConfig field: value of its type}; exits with one line on a bad item."""
    defaults = {f.name: f.default for f in fields(GPTConfig)}
    settings = {}
    for item in items:
        key, eq, text = item.partition('=')
        if not eq or key not in defaults:
            sys.exit(f"error: --set {item}: use KEY=VALUE, KEY a model setting (a GPTConfig field of model.py)")
        want = type(defaults[key])
        try:
            value = text if want is str else literal_eval(text)
        except (SyntaxError, ValueError):
            value = text
        value = float(value) if want is float and type(value) is int else value
        if type(value) is not want:
            sys.exit(f"error: --set {item}: {key} takes a {want.__name__}")
        settings[key] = value
    return settings


def load_models(paths, device, settings=None):
    """[(path, model, ckpt)] for out_dirs or ckpt.pt files, in eval mode; settings: GPTConfig fields to
    change (--set), as far as the weights carry them (model.start_from). Exits with one line on bad input."""
    try:
        loaded = [(path, *load_checkpoint(path, device, settings)) for path in paths]
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    for _, model, _ in loaded:
        model.eval()
    return loaded


def autocast(device, dtype=''):
    """bf16 autocast on CUDA (or when asked), plain fp32 elsewhere."""
    dtype = dtype or ('bfloat16' if device.startswith('cuda') else 'float32')
    if dtype not in ('float32', 'bfloat16'):
        sys.exit(f"error: --dtype {dtype}: use float32 or bfloat16")
    return torch.amp.autocast(device_type=device.split(':')[0], dtype=torch.bfloat16) if dtype == 'bfloat16' else nullcontext()


def tokenizer_of(ckpt, name=''):
    """(encode, decode, eot) of the data a checkpoint was trained on (or of tokenizer `name`)."""
    meta = ckpt.get('data', {}).get('meta') or load_meta(ckpt['config']['data_dir'])
    name = name or meta.get('tokenizer')
    if not name:
        raise ValueError("the checkpoint's data has no meta.json naming its tokenizer: pass --tokenizer")
    encode, decode, eot, vocab = get_tokenizer(name)
    if vocab > ckpt['model_args']['vocab_size']:  # its ids would index past the model's embedding table
        raise ValueError(f"tokenizer {name!r} has {vocab:,} tokens, more than the model's vocab_size "
                         f"{ckpt['model_args']['vocab_size']}: use the tokenizer it was trained with")
    return encode, decode, eot


def cannot_run(model, length, scale=1.0):
    """Why the model cannot be evaluated at `length` tokens with pos_scale `scale` (short, for a
    table cell), or '' if it can. Asks the model what its pe can do."""
    if scale != 1.0 and not model.scalable:
        return f"pos_scale means nothing for pe={model.config.pe}"
    if model.max_len is not None and length > model.max_len:
        return f"pe={model.config.pe} accepts at most {model.max_len} positions"
    return ''


OUT_FILES = ('eval.md', 'eval.json', 'per_position.csv', 'per_position.png')


def refuse_overwrite(out, names, overwrite):
    """Exit with one line if `out` already holds one of `names` and --overwrite was not given."""
    found = [n for n in names if os.path.exists(os.path.join(out, n))]
    if found and not overwrite:
        sys.exit(f"error: {out} already holds an earlier run ({', '.join(found)}): pass another --out, or --overwrite to replace it")


def val_tokens(data_dir, n):
    """The first n tokens of the val split (shards concatenated in order)."""
    parts, have = [], 0
    for path in shard_paths(data_dir, 'val'):
        parts.append(np.asarray(read_shard(path)[:n - have], dtype=np.int64))
        have += len(parts[-1])
        if have >= n:
            break
    return np.concatenate(parts)


@torch.no_grad()
def window_losses(model, tokens, length, batch_tokens, device, ctx):
    """Per-token loss (windows, length) of the windows [i*length, (i+1)*length] of `tokens`."""
    n_win = (len(tokens) - 1) // length
    out = torch.empty(n_win, length)
    bs = max(1, batch_tokens // length)
    for i in range(0, n_win, bs):
        rows = [torch.from_numpy(tokens[j * length:(j + 1) * length + 1]) for j in range(i, min(n_win, i + bs))]
        xy = torch.stack(rows).to(device)
        with ctx:
            logits, _ = model(xy[:, :-1])
        out[i:i + len(rows)] = F.cross_entropy(logits.float().transpose(1, 2), xy[:, 1:], reduction='none').cpu()
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', nargs='+', default=['out'], help="out_dirs (or ckpt.pt files) to evaluate, one table row each")
    p.add_argument('--ev', nargs='+', type=int, default=[1, 2, 4, 8, 16], help="multiples of the training length")
    p.add_argument('--scale', type=float, default=None, help="pos_scale: positions (or ExPE values) multiplied by this "
                   "(default: the checkpoint's own, 1 unless it was trained with another)")
    p.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                   help="model settings to evaluate with, those the weights carry: block_size (the 1x length), pos_scale, "
                        "rope_scaling, rope_factor, ... (README, 'Context extension')")
    p.add_argument('--windows', type=int, default=16, help="windows at 16x (or the largest --ev); sets the tokens per cell")
    p.add_argument('--data-dir', default='', help="val shards to use (default: the checkpoint's data_dir)")
    p.add_argument('--batch-tokens', type=int, default=32768, help="tokens per forward pass (lower it if memory runs out)")
    p.add_argument('--out', default='out/eval', help="folder for eval.json, eval.md, per_position.csv/.png")
    p.add_argument('--overwrite', action='store_true', help="replace an earlier eval in --out (else refused)")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtype', default='', help="float32 | bfloat16 (default: bfloat16 on cuda, else float32)")
    args = p.parse_args()
    if any(e < 1 for e in args.ev) or args.windows < 1:
        sys.exit("error: --ev multiples and --windows must be positive integers")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale > 0):
        sys.exit(f"error: --scale {args.scale}: pos_scale must be a finite number > 0 (1 = as trained)")
    if args.batch_tokens < 1:
        sys.exit(f"error: --batch-tokens {args.batch_tokens}: use a positive number of tokens per forward pass")
    settings = parse_settings(args.set)
    if args.scale is not None and 'pos_scale' in settings:
        sys.exit("error: --scale and --set pos_scale=... say the same thing: give one")
    refuse_overwrite(args.out, OUT_FILES, args.overwrite)
    loaded = load_models(args.ckpt, args.device, settings)  # checks the device first
    ctx = autocast(args.device, args.dtype)
    try:  # now, not after the whole evaluation
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: cannot write --out {args.out} ({e.strerror}): choose a folder you can write to")
    max_ev = max(args.ev)
    T_max = max(m.config.block_size for _, m, _ in loaded)
    longest, stretch = max_ev * T_max, max(STRETCH_EV, max_ev) * T_max
    n_tokens = args.windows * stretch
    rows, curves = [], {}
    for path, model, ckpt in loaded:
        T, pe = model.config.block_size, model.config.pe
        data_dir = args.data_dir or ckpt['config']['data_dir']
        try:
            tokens = val_tokens(data_dir, n_tokens + 1)
            vocab = min(model.config.vocab_size, load_meta(data_dir).get('vocab_size') or model.config.vocab_size)
        except (FileNotFoundError, ValueError) as e:
            sys.exit(f"error: {e}")
        if len(tokens) and tokens.max() >= vocab:
            sys.exit(f"error: the val split of {data_dir} holds token id {tokens.max()}, outside the vocabulary of {vocab}: "
                     "it is not this checkpoint's data, or a shard is damaged; re-run prepare.py or pass --data-dir")
        if len(tokens) < longest + 1:
            sys.exit(f"error: the val split of {data_dir} has {len(tokens)} tokens, fewer than one window of "
                     f"{longest}: prepare more val data or lower --ev")
        unit = stretch if len(tokens) > stretch else longest  # a short val split: whole windows of the asked lengths
        tokens = tokens[:(len(tokens) - 1) // unit * unit + 1]  # whole windows at every length
        scale = model.config.pos_scale if args.scale is None else args.scale
        model.config.pos_scale = scale
        row = {'ckpt': path, 'pe': pe, 'arch': model.config.arch, 'scale': scale, 'block_size': T, 'set': settings,
               'data_dir': data_dir, 'iter': ckpt.get('iter_num'), 'cells': {}}
        for ev in args.ev:
            cell = {'length': ev * T}
            na = cannot_run(model, ev * T, scale)
            try:
                if na:
                    cell['na'] = na
                else:
                    losses = window_losses(model, tokens, ev * T, args.batch_tokens, args.device, ctx)
                    cell.update(loss=losses.mean().item(), tokens=losses.numel(), windows=losses.size(0))
                    if ev == max_ev:
                        curves[path] = (losses.mean(0).numpy(), T, pe)
            except torch.OutOfMemoryError:
                cell['na'] = 'out of memory'
                torch.cuda.empty_cache()
            row['cells'][ev] = cell
            print(f"{path} {ev}x: " + (f"{cell['loss']:.4f} over {cell['tokens']:,} tokens" if 'loss' in cell else f"n/a ({cell['na']})"),
                  file=sys.stderr)
        rows.append(row)

    # one markdown table: a row per checkpoint, a column per multiple
    head = '| checkpoint | pe | scale | ' + ' | '.join(f'{ev}x' for ev in args.ev) + ' |'
    lines = [head, '|' + '---|' * (3 + len(args.ev))]
    for r in rows:
        cells = [f"{c['loss']:.4f}" if 'loss' in c else f"n/a ({c['na']})" for c in r['cells'].values()]
        name = r['ckpt'] + ''.join(f" {k}={v}" for k, v in r['set'].items() if k != 'pos_scale')
        lines.append(f"| {name} | {r['pe']} | {r['scale']:g} | " + ' | '.join(cells) + ' |')
    counts = sorted({c['tokens'] for r in rows for c in r['cells'].values() if 'tokens' in c})
    lengths = ', '.join(f"{ev}x = {ev * rows[0]['block_size']}" for ev in args.ev)
    lines.append('')
    lines.append(f"Mean cross-entropy (nats/token) on val; each cell averages the same {' / '.join(f'{n:,}' for n in counts)} "
                 f"target tokens, from non-overlapping windows ({lengths} tokens).")
    table = '\n'.join(lines)
    print(table)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'eval.md'), 'w') as f:
        f.write(table + '\n')
    with open(os.path.join(args.out, 'eval.json'), 'w') as f:
        json.dump({'ev': args.ev, 'scale': args.scale, 'set': settings, 'tokens_per_cell': n_tokens, 'rows': rows}, f, indent=1)
    if curves:
        write_curves(curves, max_ev, args.scale or 1.0, args.out)
    print(f"wrote {args.out}/eval.md, eval.json" + (", per_position.csv, per_position.png" if curves else ''), file=sys.stderr)


def write_curves(curves, ev, scale, out):
    """Per-position mean loss at the longest length: CSV (raw) and PNG (smoothed)."""
    length = max(len(c) for c, _, _ in curves.values())
    with open(os.path.join(out, 'per_position.csv'), 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['position'] + list(curves))
        for i in range(length):
            w.writerow([i] + [f"{c[i]:.5f}" if i < len(c) else '' for c, _, _ in curves.values()])
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = plt.get_cmap('tab10' if len(curves) <= 10 else 'tab20').colors  # one colour per line, even past 10
    for i, (name, (c, T, pe)) in enumerate(curves.items()):
        k = max(1, T // 8)  # a moving average: single positions are noisy
        smooth = np.convolve(c, np.ones(k) / k, mode='valid')
        ax.plot(np.arange(len(smooth)) + k // 2, smooth, label=name if name == pe else f"{name} ({pe})", lw=1.2,
                color=colors[i % len(colors)], ls='-' if i < len(colors) else '--')
    T = min(T for _, T, _ in curves.values())
    ax.axvline(T, color='k', ls='--', lw=0.8, label=f'training length {T}')
    ax.set_xlabel('position in window')
    ax.set_ylabel('loss (nats/token)')
    ax.set_title(f'Per-position val loss at {ev}x the training length' + (f', positions scaled by {scale:g}' if scale != 1 else ''))
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))  # beside the plot: the lines stay visible
    fig.tight_layout()
    fig.savefig(os.path.join(out, 'per_position.png'), dpi=120)


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        sys.exit("error: interrupted (Ctrl-C)")
