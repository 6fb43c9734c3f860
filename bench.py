r"""
Time model.py's real training step (forward, backward, AdamW) for several PEs, or its forward
pass at 1x..16x the training length, on random tokens. One table; ratios are against RoPE. Each
row shows the median of the timed steps and their spread (min - max); a warning names the rows whose
spread overlaps RoPE's, since that run cannot rank them against RoPE.

$ python bench.py                                              # CPU-sized defaults, train mode, 1 CPU thread
$ python bench.py --threads=0 --repeats=30                     # torch's default CPU threads (one per core)
$ python bench.py --pes=expe,rope,alibi,tape --archs=gpt2,llama
$ python bench.py --n_layer=12 --n_head=12 --n_embd=768 --block_size=1024 --vocab_size=50304 \
      --batch_size=16 --compile=True                           # GPT-2 124M shape on a GPU
$ python bench.py --mode=eval --evs=1,2,4,8,16                 # cost of long inputs
"""
import statistics
import sys
import time
from dataclasses import fields

import numpy as np
import torch

from configurator import configure, die, exit_on_ctrl_c
from core import autocast, default_dtype, free_memory, out_of_memory, peak_flops, pick_device
from model import ARCHS, GPT, GPTConfig, PES, check_config

# -----------------------------------------------------------------------------
pes = ','.join(PES)       # comma-separated; any of model.PES (default: all)
archs = 'gpt2'            # comma-separated: gpt2, llama
mode = 'train'            # 'train': a full optimizer step; 'eval': forward passes at evs x block_size
evs = '1,2,4,8,16'        # eval mode: multiples of block_size
batch_size = 16
block_size = 128
n_layer = 4
n_head = 4
n_embd = 128
vocab_size = 320
bias = False
device = ''               # '' -> cuda if available, else cpu
dtype = ''                # '' -> bfloat16 on cuda, float32 on cpu
compile = False
warmup = 3                # untimed steps first (compile, allocator, caches)
repeats = 10              # timed steps; the median and the min - max are reported
threads = 1               # CPU threads: 1 keeps rows comparable on a shared machine; 0 = torch's default (one per core)
seed = 1337
# every pe's knobs (model.GPTConfig), at their defaults: each pe gets the ones it owns
KNOBS = {f.name: f.default for f in fields(GPTConfig) if any(f.name in p.knobs for p in PES.values())}
globals().update(KNOBS)
# -----------------------------------------------------------------------------
configure(globals())
exit_on_ctrl_c()
device = pick_device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))  # one that this machine has
if not (device == 'cpu' or device.startswith('cuda')):
    die(f"device='{device}': bench.py times cpu, cuda or cuda:N")
device_type = 'cuda' if device.startswith('cuda') else 'cpu'
dtype = dtype or default_dtype(device_type)
if dtype not in ('float32', 'bfloat16', 'float16'):
    die(f"dtype='{dtype}': use float32, bfloat16 or float16")
ctx = autocast(device_type, dtype)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
peak = peak_flops(device_type)
pe_list, arch_list = pes.split(','), archs.split(',')
if threads < 0:
    die(f"threads={threads}: use a positive count, or 0 for torch's default")
if device_type == 'cpu' and threads:
    torch.set_num_threads(threads)
if mode not in ('train', 'eval'):
    die(f"mode='{mode}': use 'train' or 'eval'")
if not all(e.strip().isdigit() and int(e) >= 1 for e in evs.split(',')):
    die(f"evs='{evs}': use comma-separated multiples of block_size, each >= 1 (e.g. 1,2,4)")
ev_list = [int(e) for e in evs.split(',')]
for pe in pe_list:
    if pe not in PES:
        die(f"unknown pe '{pe}' in --pes: choose from {', '.join(PES)}")
for arch in arch_list:
    if arch not in ARCHS:
        die(f"unknown arch '{arch}' in --archs: choose from {', '.join(ARCHS)}")
if repeats < 1 or warmup < 0 or batch_size < 1:
    die(f"repeats={repeats}, warmup={warmup}, batch_size={batch_size}: repeats and batch_size must be >= 1, warmup >= 0")
if seed < 0:
    die(f"seed={seed}: use a seed >= 0 (numpy's generators take no negative seed)")
if len(set(ev_list)) < len(ev_list):
    die(f"evs='{evs}': a multiple is given more than once; name each once")
knobs_set = {k: globals()[k] for k, default in KNOBS.items() if globals()[k] != default}
for k, v in knobs_set.items():
    if not any(k in PES[pe].knobs for pe in pe_list):  # it would change no row
        die(f"{k}={v!r} belongs to pe={'/'.join(n for n, p in PES.items() if k in p.knobs)}, none of --pes {pes}: "
            "add one of them or leave it at its default")


def config_of(pe, arch='gpt2'):
    """The model of one row: the shared sizes, and the knobs set on the command line that this pe owns."""
    own = {k: v for k, v in knobs_set.items() if k in PES[pe].knobs}
    return GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                     bias=bias, arch=arch, pe=pe, **own)


for pe in pe_list:  # every shape and knob before any timing
    try:
        config = config_of(pe)
        check_config(config)
        GPT(config)  # the pe's own checks
    except ValueError as e:
        die(e)


def timed(fn):
    """(median, min, max) seconds of fn() over `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device_type == 'cuda':
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), max(times)


def peak_mem():
    return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if device_type == 'cuda' else 'n/a'


def build(pe, arch):
    torch.manual_seed(seed)
    model = GPT(config_of(pe, arch)).to(device)
    return model, (torch.compile(model) if compile else model)


def out_of_memory_note(e, what, lower):
    """The cell of an out-of-memory on any device, after one line naming what ran out and what to lower; any
    other error goes on."""
    if not out_of_memory(e):
        raise e
    free_memory()
    print(f"{what} ran out of memory on {device}: n/a in the table; lower {lower}", file=sys.stderr)
    return 'n/a (out of memory)'


def bench_train(pe, arch):
    raw, model = build(pe, arch)
    opt = raw.configure_optimizers(0.1, 1e-4, (0.9, 0.95), device_type)
    x = torch.randint(0, vocab_size, (batch_size, block_size + 1), device=device)
    pos = raw.pe.train_positions(np.random.default_rng(seed), batch_size, block_size)  # as train.py: None = 0..T-1
    pos = pos if pos is None else pos.to(device)

    def step():
        with ctx:
            _, loss = model(x[:, :-1], x[:, 1:], pos=pos)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device_type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    try:
        dt, lo, hi = timed(step)
    except (RuntimeError, MemoryError) as e:  # this row is n/a, the rows already timed stay
        return out_of_memory_note(e, f"{arch} {pe}: a step of {batch_size} x {block_size} tokens",
                                  f"--batch_size (now {batch_size}) or --block_size")
    tokens = batch_size * block_size
    mfu = raw.flops_per_token(block_size) * tokens / dt / peak if peak else None
    return dt, lo, hi, tokens / dt, mfu, peak_mem()


@torch.no_grad()
def bench_eval(pe, arch, ev):
    raw, model = build(pe, arch)
    model.eval()
    T = ev * block_size
    if raw.max_len is not None and T > raw.max_len:
        return None
    x = torch.randint(0, vocab_size, (1, T), device=device)

    def forward():
        with ctx:
            model(x)
    if device_type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    try:
        dt = timed(forward)
    except (RuntimeError, MemoryError) as e:  # this cell is n/a, the cells already timed stay
        return out_of_memory_note(e, f"{arch} {pe} at {ev}x = {T} tokens", f"--evs (one forward of {T} tokens)")
    return dt, peak_mem()  # dt = (median, min, max)


name = torch.cuda.get_device_name() if device_type == 'cuda' else f"cpu, {torch.get_num_threads()} thread(s)"
print(f"device {name}, {dtype}, compile={compile}; "
      f"{n_layer}x{n_embd}, {n_head} heads, T={block_size}, batch {batch_size}, vocab {vocab_size}; "
      f"median and min - max of {repeats} steps after {warmup} warm-up")
if mode == 'train':
    print('| arch | pe | ms/step | min - max | tokens/s | MFU | peak memory | x RoPE |')
    print('|---|---|---|---|---|---|---|---|')
    unranked = []
    for arch in arch_list:
        results = {pe: bench_train(pe, arch) for pe in pe_list}
        rope = results.get('rope') if isinstance(results.get('rope'), tuple) else None  # None: not run, or out of memory
        for pe, r in results.items():
            if isinstance(r, str):  # out of memory
                print(f"| {arch} | {pe} | {r} | n/a | n/a | n/a | n/a | n/a |")
                continue
            dt, lo, hi, tok_s, mfu, mem = r
            ratio = f"{dt / rope[0]:.2f}" if rope else 'n/a'
            mfu_s = f"{100 * mfu:.1f}%" if mfu is not None else 'n/a'
            print(f"| {arch} | {pe} | {1000 * dt:.1f} | {1000 * lo:.1f} - {1000 * hi:.1f} | {tok_s:,.0f} | {mfu_s} | {mem} | {ratio} |")
            if rope and pe != 'rope' and lo <= rope[2] and hi >= rope[1]:  # the two spreads overlap
                unranked.append(f"{arch} {pe}")
    if unranked:
        print(f"\nwarning: the step times of {', '.join(unranked)} overlap RoPE's (min - max): this run cannot rank them "
              f"against RoPE, their x RoPE is within the noise (more --repeats or a quieter machine may separate them)")
else:
    print('| arch | pe | ' + ' | '.join(f'{ev}x = {ev * block_size}: ms (min - max), memory' for ev in ev_list) + ' |')
    print('|---|---|' + '---|' * len(ev_list))
    for arch in arch_list:
        for pe in pe_list:
            cells = []
            for ev in ev_list:
                r = bench_eval(pe, arch, ev)
                cells.append('n/a' if r is None else r if isinstance(r, str) else
                             f"{1000 * r[0][0]:.1f} ({1000 * r[0][1]:.1f} - {1000 * r[0][2]:.1f}), {r[1]}")
            print(f"| {arch} | {pe} | " + ' | '.join(cells) + ' |')
