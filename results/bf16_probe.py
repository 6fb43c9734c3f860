"""
Where does bf16 cost ExPE its loss past the training length? Evaluates checkpoints at 1x..16x
(eval.py's protocol: the same 32,768 val targets in every cell) under five precisions of attention:

  fp32        no autocast (the CPU tables)
  bf16        bf16 autocast as eval.py runs it on CUDA (ExPE/ExQPE: q·k in fp32, model.fp32_logits)
  bf16 q,k    bf16 autocast with q and k rounded to bf16 before attention (the pre-fix behaviour)
  fp16 q,k    bf16 autocast with q and k rounded to fp16 (10 mantissa bits) instead
  bf16 attn-out  bf16 autocast with q, k in fp32 but v and the attention output in bf16

$ python results/bf16_probe.py --ckpt out/results/expe-s1337 out/results/rope-s1337 > results/bf16_probe.md
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import model as M  # noqa: E402
from configurator import configure  # noqa: E402
from core import autocast, load_models, trained_with  # noqa: E402
from data import val_tokens  # noqa: E402
from evaluation import window_losses  # noqa: E402

ckpt = []                 # out_dirs (or ckpt.pt files) to probe
configure(globals())

VARIANTS = ('fp32', 'bf16', 'bf16 q,k', 'fp16 q,k', 'bf16 attn-out')
ATTENTION = M.attention  # model.py's own


def attention_variant(name):
    """model.attention with q, k (or v) rounded as the variant says, else unchanged."""
    orig = ATTENTION

    def attn(q, k, v, pe, tables, past, dropout_p, fp32=False):
        if name == 'bf16 q,k':
            return orig(q.bfloat16(), k.bfloat16(), v, pe, tables, past, dropout_p, False)
        if name == 'fp16 q,k':
            q, k = q.half().float(), k.half().float()
            return orig(q, k, v, pe, tables, past, dropout_p, True)
        if name == 'bf16 attn-out':
            y = orig(q.float(), k.float(), v.bfloat16().float(), pe, tables, past, dropout_p, True)
            return y.bfloat16()
        return orig(q, k, v, pe, tables, past, dropout_p, fp32)
    return attn


def main(paths):
    torch.set_num_threads(1)
    evs = (1, 2, 4, 8, 16)
    print('| checkpoint | pe | attention | ' + ' | '.join(f'{ev}x' for ev in evs) + ' |')
    print('|---|---|---|' + '---|' * len(evs))
    for path, model, ck in load_models(paths, 'cpu'):
        T = model.config.block_size
        tokens = val_tokens(trained_with(ck, 'data_dir'), 16 * 16 * T + 1)  # eval.py --windows 16
        for name in VARIANTS:
            M.attention = attention_variant(name)
            ctx = autocast('cpu', 'float32' if name == 'fp32' else 'bfloat16')
            cells = [window_losses(model, tokens, ev * T, 32768, 'cpu', ctx).mean().item() for ev in evs]
            print(f"| {path} | {model.config.pe} | {name} | " + ' | '.join(f'{c:.4f}' for c in cells) + ' |', flush=True)
    print(f"\nMean cross-entropy (nats/token) on val; every cell averages the same {16 * 16 * T:,} target tokens.")


if __name__ == '__main__':
    main(ckpt)
