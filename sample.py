"""
Sample from a trained checkpoint (KV-cached decoding).

$ python sample.py --ckpt out --start "ROMEO:" --num-samples 3 --max-new-tokens 500
$ python sample.py --start FILE:prompt.txt --temperature 0.8 --top-k 200 --scale 0.5
Every pe but `learned` can generate past block_size; `learned` crops its context to block_size.
"""
import argparse
import math
import sys

import torch

from eval import autocast, tokenizer_of
from model import load_checkpoint


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', default='out', help="out_dir or ckpt.pt")
    p.add_argument('--start', default='\n', help="prompt text, or FILE:path to read it from a file")
    p.add_argument('--num-samples', type=int, default=3)
    p.add_argument('--max-new-tokens', type=int, default=500)
    p.add_argument('--temperature', type=float, default=0.8, help="< 1 sharper, > 1 more random")
    p.add_argument('--top-k', type=int, default=200, help="sample among the k likeliest tokens (0 = all)")
    p.add_argument('--seed', type=int, default=1337)
    p.add_argument('--scale', type=float, default=None, help="pos_scale (position interpolation; default: the checkpoint's own)")
    p.add_argument('--tokenizer', default='', help="default: the one in the checkpoint's data meta.json")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    args = p.parse_args()
    if args.num_samples < 1 or args.max_new_tokens < 0:
        sys.exit("error: --num-samples must be >= 1 and --max-new-tokens >= 0")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        sys.exit(f"error: --temperature {args.temperature}: use a finite number >= 0 (0 = always the likeliest token)")
    if args.top_k < 0:
        sys.exit(f"error: --top-k {args.top_k}: use a number of tokens >= 0 (0 = all)")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale > 0):
        sys.exit(f"error: --scale {args.scale}: pos_scale must be a finite number > 0 (1 = as trained)")

    try:
        model, ckpt = load_checkpoint(args.ckpt, args.device)
        if args.scale not in (None, 1.0) and not model.scalable:
            raise ValueError(f"--scale {args.scale}: pos_scale means nothing for pe={model.config.pe}: leave it at 1")
        model.config.pos_scale = model.config.pos_scale if args.scale is None else args.scale
        encode, decode, eot = tokenizer_of(ckpt, args.tokenizer)
        start = args.start
        if start.startswith('FILE:'):
            try:
                with open(start[5:], encoding='utf-8') as f:
                    start = f.read()
            except OSError as e:
                raise ValueError(f"--start FILE:{start[5:]}: {e.strerror}")
    except (FileNotFoundError, ValueError) as e:  # a bad file is UnicodeDecodeError, a ValueError
        sys.exit(f"error: {e}")
    model.eval()
    torch.manual_seed(args.seed)
    ids = [eot] + encode(start)  # EOT starts every document in training (prepare.py)
    x = torch.tensor(ids, dtype=torch.long, device=args.device)[None].repeat(args.num_samples, 1)
    ctx = autocast(args.device)
    with ctx:
        y = model.generate(x, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None)
    for row in y.tolist():
        print(decode(row[1:]))
        print('---------------')


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        sys.exit("error: interrupted (Ctrl-C)")
