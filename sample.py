"""
Sample from a trained checkpoint (KV-cached decoding).

$ python sample.py --ckpt out/demo_expe --start "ROMEO:" --num_samples 3 --max_new_tokens 500
$ python sample.py --ckpt out/demo_expe --start FILE:prompt.txt --temperature 0.8 --top_k 200 --scale 0.5
Every pe but `learned` can generate past block_size; `learned` crops its context to block_size.
"""
import math

import torch

from configurator import configure, die, exit_on_ctrl_c
from core import autocast, load_models, pick_device, scale_problem, tokenizer_of

# -----------------------------------------------------------------------------
# settings (core.configure: --key value or --key=value)
ckpt = 'out'              # out_dir or ckpt.pt
start = '\n'              # the prompt, or FILE:path to read it from a file
num_samples = 3           # samples to draw
max_new_tokens = 500      # tokens generated per sample
temperature = 0.8         # < 1 sharper, > 1 more random, 0 = always the likeliest token
top_k = 200               # sample among the k likeliest tokens (0 = all)
seed = 1337
scale = None              # pos_scale (position interpolation); default: the checkpoint's own
tokenizer = ''            # '' = the one in the checkpoint's data meta.json
device = ''               # '' -> cuda if available, else mps, else cpu
dtype = ''                # float32 | bfloat16 ('' -> bfloat16 on cuda, else float32)
# -----------------------------------------------------------------------------
configure(globals())
exit_on_ctrl_c()
if num_samples < 1 or max_new_tokens < 0:
    die("--num_samples must be >= 1 and --max_new_tokens >= 0")
if not (math.isfinite(temperature) and temperature >= 0):
    die(f"--temperature {temperature}: use a finite number >= 0 (0 = always the likeliest token)")
if top_k < 0:
    die(f"--top_k {top_k}: use a number of tokens >= 0 (0 = all)")
if scale is not None and scale_problem(scale):
    die(scale_problem(scale))
if dtype not in ('', 'float32', 'bfloat16'):
    die(f"--dtype {dtype}: use float32 or bfloat16")
device = device or pick_device()  # a device asked for is checked where the checkpoint loads
(_, model, checkpoint), = load_models([ckpt], device, scale=scale)
try:
    encode, decode, eot = tokenizer_of(checkpoint, tokenizer, ckpt)
    if start.startswith('FILE:'):
        try:
            with open(start[5:], encoding='utf-8') as f:
                start = f.read()
        except OSError as e:
            raise ValueError(f"--start FILE:{start[5:]}: {e.strerror}")
except ValueError as e:  # a file that is not UTF-8 is a UnicodeDecodeError, a ValueError
    die(e)

# -----------------------------------------------------------------------------
torch.manual_seed(seed)
ids = [eot] + encode(start)  # EOT starts every document in training (prepare.py)
x = torch.tensor(ids, dtype=torch.long, device=device)[None].repeat(num_samples, 1)
with autocast(device, dtype):
    y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k or None)
for row in y.tolist():
    print(decode(row[1:]))
    print('---------------')
