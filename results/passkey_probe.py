"""
Where does passkey retrieval break? For each checkpoint, copy accuracy (all 5 digits right under
greedy decoding) of (a) the key's second mention inside the key line, 15 bytes after the first, and
(b) the answer after the question, in prompts at 1x, 2x and 4x the training length with the key line
first (depth 0: the short copy happens at the same early positions as in training) or last (depth 1:
the short copy happens at the end of the window, past the training length at 2x and 4x).

$ python results/passkey_probe.py --ckpt out/passkey_expe out/passkey_rope > results/cpu_passkey/probe.md
"""
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configurator import configure, die  # noqa: E402
from core import load_models, tokenizer_of  # noqa: E402
from data import passkey_example  # noqa: E402

KEYS = [12345, 40217, 77881, 50123, 91912, 33333, 60606, 24680, 11235, 98765]
ckpt = []                 # out_dirs (or ckpt.pt files) of byte-level checkpoints
configure(globals())

print('| checkpoint | pe | length | depth | 2nd mention at position | 2nd mention copied | answer copied |')
print('|---|---|---|---|---|---|---|')
for path, model, ck in load_models(ckpt, 'cpu'):
    encode, _, eot = tokenizer_of(ck)
    if len(encode(str(KEYS[0]))) != 5:
        die(f"{path}: the probe needs one token per digit (a byte-level checkpoint)")
    T = model.config.block_size
    for ev in (1, 2, 4):
        for depth in (0, 1):
            rows = [passkey_example(encode, eot, ev * T, depth, k) for k in KEYS]
            ids = torch.tensor([r for r, _ in rows])
            with torch.no_grad():
                logits, _ = model(ids[:, :-1])
            guess = logits.argmax(-1)
            mark = encode("Remember it. ")  # the second mention's 5 digits follow this
            at = next(i for i in range(len(rows[0][0])) if rows[0][0][i:i + len(mark)] == mark) + len(mark)  # same for every key
            second = (guess[:, at - 1:at + 4] == ids[:, at:at + 5]).all(1).float().mean().item()
            n = rows[0][1]
            answer = (guess[:, -n:] == ids[:, -n:]).all(1).float().mean().item()
            print(f"| {path} | {model.config.pe} | {ev}x = {ev * T} | {depth:g} | {at} | {100 * second:.0f}% | {100 * answer:.0f}% |")
print(f"\n{len(KEYS)} keys per row; greedy decoding scored teacher-forced, as eval_tasks.py does.")
