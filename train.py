"""
Train a GPT with any positional encoding, on one device or many.

Single device:
$ python train.py config/demo_cpu.py --pe=rope
Single node, 8 GPUs (DDP):
$ torchrun --standalone --nproc_per_node=8 train.py config/expe_medium.py
Resume an interrupted run (same config and overrides, plus):
$ python train.py config/demo_cpu.py --pe=rope --init_from=resume
Start from another run's weights (a fine-tune: here at twice its length, TAPE's parameter-efficient recipe):
$ python train.py config/extend_cpu.py --init_from=out/demo_rope --pe=tape --trainable=pe,wte,norm --out_dir=out/ext
Every setting, its default and what it does:
$ python train.py --help
"""
import fcntl
import json
import math
import os
import shutil
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import numpy as np
import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

from model import PARAM_GROUPS, GPT, GPTConfig, check_config, peak_flops, read_checkpoint, start_from
from prepare import get_tokenizer, load_meta, read_shard, shard_paths
from synthetic import addition_len, addition_row, passkey_row

# -----------------------------------------------------------------------------
# default config values; override with a config file and/or --key=value
# I/O
out_dir = 'out'
eval_interval = 250       # also writes a checkpoint
log_interval = 10         # iterations per log line (and per check that the loss is finite)
eval_iters = 50           # val batches per evaluation (the same batches every time)
eval_only = False         # evaluate once and exit
always_save_checkpoint = True  # else only when val loss improves
init_from = 'scratch'     # 'scratch', 'resume' (from out_dir/ckpt.pt), or a run to start from (its out_dir or ckpt.pt)
overwrite = False         # let a new run (not a resume) replace the checkpoint and log.jsonl already in out_dir
trainable = ''            # '' = every parameter trains; else some of model.PARAM_GROUPS, e.g. 'pe,wte,norm'
seed = 1337               # seeds the weights and every batch: a resume must keep it
# data
data_dir = 'data/shakespeare_byte'  # shards written by prepare.py
gradient_accumulation_steps = 1     # total over all processes
batch_size = 16                     # micro-batch per process
passkey_frac = 0.0        # chance that a training row is a synthetic passkey example (synthetic.py), not corpus text
addition_digits = 0       # N > 0: every train and val row is a synthetic addition problem (synthetic.py), operands of
                          # 1..N digits, loss on the answer only; no shards are read (byte-level characters)
# model: every GPTConfig field (model.py) is a key here, with GPTConfig's default unless set below
globals().update({f.name: f.default for f in fields(GPTConfig)})
block_size = 256          # the training length T
n_layer = 6               # blocks
n_head = 6
n_embd = 384              # width of the residual stream
vocab_size = 0            # 0 -> the data's vocab_size (meta.json) rounded up to a multiple of 64
# AdamW
learning_rate = 1e-3
max_iters = 5000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0           # 0 disables
# learning rate schedule: linear warmup, then cosine down to min_lr
decay_lr = True
warmup_iters = 100
lr_decay_iters = 0        # 0 -> max_iters
min_lr = 0.0              # 0 -> learning_rate / 10 (Chinchilla)
# system
device = ''               # '' -> cuda if available, else mps, else cpu
dtype = ''                # '' -> bfloat16 on cuda if supported, else float16 (with GradScaler); float32 off cuda
compile = True            # torch.compile the model
# -----------------------------------------------------------------------------
from configurator import configure  # noqa: E402
config = configure(globals())


def die(msg):
    sys.exit(f"error: {msg}")


# every setting is checked before anything is read or written
for k in ('batch_size', 'gradient_accumulation_steps', 'eval_interval', 'log_interval', 'eval_iters'):
    if globals()[k] < 1:
        die(f"{k}={globals()[k]} must be at least 1")
for k in ('max_iters', 'warmup_iters', 'lr_decay_iters', 'seed'):
    if globals()[k] < 0:
        die(f"{k}={globals()[k]} must be >= 0")
if not (math.isfinite(learning_rate) and learning_rate > 0):
    die(f"learning_rate={learning_rate} must be a finite number > 0")
for k in ('min_lr', 'weight_decay', 'grad_clip'):  # 0 = lr/10, no decay, no clipping
    if not (math.isfinite(globals()[k]) and globals()[k] >= 0):
        die(f"{k}={globals()[k]} must be a finite number >= 0")
if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
    die(f"beta1={beta1}, beta2={beta2}: Adam's betas are from 0 to below 1")
if init_from not in ('scratch', 'resume') and not os.path.exists(init_from):
    die(f"init_from='{init_from}': use 'scratch', 'resume', or a run to start from (its out_dir or ckpt.pt; none there)")
if overwrite and init_from == 'resume':
    die("overwrite=True only applies to a new run (init_from='scratch' or a run to start from): a resume continues "
        "the checkpoint in out_dir")
if set(trainable.split(',')) - set(PARAM_GROUPS) and trainable:
    die(f"trainable='{trainable}': use a comma-separated list of {', '.join(PARAM_GROUPS)} ('' = all)")
if dtype not in ('', 'float32', 'bfloat16', 'float16'):
    die(f"dtype='{dtype}': use float32, bfloat16 or float16")
if not out_dir or (os.path.exists(out_dir) and not os.path.isdir(out_dir)):
    die(f"out_dir='{out_dir}' is not a folder: name a folder for the checkpoint and log")
try:
    _dev = torch.device(device or 'cpu')
except RuntimeError:
    die(f"device='{device}' is not a device torch knows: use cpu, cuda, cuda:N or mps ('' picks one)")
if _dev.type == 'cuda' and not (torch.cuda.is_available() and (_dev.index or 0) < torch.cuda.device_count()):
    die(f"device='{device}' but this machine has {torch.cuda.device_count()} CUDA device(s): use --device=cpu, or '' to pick one")
if _dev.type == 'mps' and not torch.backends.mps.is_available():
    die("device='mps' is not available on this machine: use --device=cpu, or '' to pick one")


# -----------------------------------------------------------------------------
# processes and devices
ddp = int(os.environ.get('RANK', -1)) != -1  # launched by torchrun?
if not device:
    device = 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
device_type = 'cuda' if device.startswith('cuda') else device
if ddp:
    init_process_group(backend='nccl' if device_type == 'cuda' else 'gloo')
    ddp_rank, ddp_local_rank, ddp_world_size = int(os.environ['RANK']), int(os.environ['LOCAL_RANK']), int(os.environ['WORLD_SIZE'])
    if device_type == 'cuda':
        device = f'cuda:{ddp_local_rank}'
        torch.cuda.set_device(device)
    if gradient_accumulation_steps % ddp_world_size:
        die(f"gradient_accumulation_steps={gradient_accumulation_steps} must be a multiple of the {ddp_world_size} processes")
    gradient_accumulation_steps //= ddp_world_size
else:
    ddp_rank, ddp_local_rank, ddp_world_size = 0, 0, 1
master_process = ddp_rank == 0
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
if not dtype:
    dtype = ('bfloat16' if torch.cuda.is_bf16_supported() else 'float16') if device_type == 'cuda' else 'float32'
torch.manual_seed(seed + ddp_rank)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ptdtype = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}[dtype]
ctx = nullcontext() if dtype == 'float32' else torch.amp.autocast(device_type=device_type, dtype=ptdtype)
if master_process:
    print(f"tokens per iteration: {tokens_per_iter:,} ({ddp_world_size} process(es) x {gradient_accumulation_steps} "
          f"accumulation x {batch_size} x {block_size}); device {device}, {dtype}")

# -----------------------------------------------------------------------------
# data: random windows of block_size+1 tokens from the shards. Batch k of a process is drawn
# from an RNG seeded by (seed, rank, split, fixed, k), so the loader's whole state is the counter k,
# and a resumed run sees exactly the batches the uninterrupted run would have seen.
try:
    shard_files = {split: [] if addition_digits else shard_paths(data_dir, split) for split in ('train', 'val')}
    shards = {split: [read_shard(p) for p in paths] for split, paths in shard_files.items()}
    meta = None if addition_digits else load_meta(data_dir)
except (FileNotFoundError, ValueError) as e:
    die(e)
if addition_digits:  # characters, no shards: the byte tokenizer's own facts stand in for a meta.json
    encode, _, eot, n_vocab = get_tokenizer('byte')
    meta = {'tokenizer': 'byte', 'vocab_size': n_vocab, 'eot': eot}
for split, ss in shards.items():
    if any(len(s) <= block_size + 1 for s in ss):
        die(f"a {split} shard in {data_dir} is shorter than block_size+1={block_size + 1} tokens: prepare more data or lower block_size")
if not vocab_size:
    if 'vocab_size' not in meta:
        die(f"{data_dir} has no meta.json to take vocab_size from: set --vocab_size")
    vocab_size = 64 * math.ceil(meta['vocab_size'] / 64)
elif meta.get('vocab_size', 0) > vocab_size:
    die(f"vocab_size={vocab_size} is smaller than the data's {meta['vocab_size']} tokens: raise it or set 0")
data_vocab = meta.get('vocab_size') or vocab_size  # token ids must stay below it (the model's may be padded)
if not 0.0 <= passkey_frac <= 1.0:
    die(f"passkey_frac={passkey_frac} is a probability: use a value from 0 to 1")
if addition_digits < 0 or (addition_digits and passkey_frac):
    die(f"addition_digits={addition_digits}: use 0 (corpus text) or N > 0 (addition problems only, with passkey_frac=0)")
if passkey_frac:  # the passkey text is tokenized like the corpus
    if 'tokenizer' not in meta:
        die(f"passkey_frac needs the tokenizer of the data, but {data_dir} has no meta.json naming it: prepare it with prepare.py")
    try:
        encode, _, eot, _ = get_tokenizer(meta['tokenizer'])
    except ValueError as e:
        die(e)
    try:
        passkey_row(encode, eot, block_size + 1, np.random.default_rng(0))
    except ValueError as e:
        die(f"passkey_frac: {e} = block_size+1: raise block_size or set passkey_frac=0")
if addition_digits and block_size < addition_len(addition_digits, addition_digits):
    die(f"addition_digits={addition_digits}: the longest problem needs block_size >= {addition_len(addition_digits, addition_digits)} "
        f"tokens, not {block_size}: raise block_size or lower addition_digits")


def get_batch(split, k, fixed=False):
    rng = np.random.default_rng((seed, ddp_rank, split == 'val', fixed, k))
    if addition_digits:  # one problem per row, val a fixed seeded set too; targets -1 outside the answer
        x, y = map(torch.tensor, zip(*[addition_row(encode, eot, block_size, addition_digits, rng) for _ in range(batch_size)]))
    else:
        x, y = corpus_rows(split, rng)
    # positions of a training batch, where the pe draws its own (None: 0..T-1); from the same RNG, so resume is exact
    pos = raw_model.pe.train_positions(rng, batch_size, block_size) if split == 'train' and not fixed else None
    pos = pos if pos is None else pos.to(device)
    if device_type == 'cuda':  # pinned memory lets the copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True), pos
    return x.to(device), y.to(device), pos


def corpus_rows(split, rng):
    """(x, y): windows of block_size+1 tokens from the split's shards; passkey examples replace some train rows."""
    ss = shards[split]
    weights = np.array([len(s) - block_size - 1 for s in ss], dtype=np.float64)
    which = rng.choice(len(ss), size=batch_size, p=weights / weights.sum())
    rows = []
    for w in which:
        i = rng.integers(0, len(ss[w]) - block_size - 1)
        row = ss[w][i:i + block_size + 1].astype(np.int64)
        if row.max() >= data_vocab:  # cheap, and certain for every token trained on
            die(f"{shard_files[split][w]} holds token id {row.max()}, outside the vocabulary of {data_vocab} "
                f"({'its meta.json' if meta.get('vocab_size') else 'vocab_size'}): the shard does not belong with it; re-run prepare.py")
        rows.append(torch.from_numpy(row))
    if passkey_frac and split == 'train':  # val stays pure corpus, so val loss is comparable across runs
        for r in np.flatnonzero(rng.random(batch_size) < passkey_frac):
            rows[r] = torch.tensor(passkey_row(encode, eot, block_size + 1, rng))
    xy = torch.stack(rows)
    return xy[:, :-1], xy[:, 1:]


# -----------------------------------------------------------------------------
# model, optimizer, and resume
model_args = {f.name: globals()[f.name] for f in fields(GPTConfig)}
try:
    check_config(GPTConfig(**model_args))  # e.g. an unknown pe, or a knob the pe would ignore
except ValueError as e:
    die(e)
iter_num, best_val_loss, checkpoint, saved_iter = 0, 1e9, None, None  # saved_iter: the iteration in ckpt.pt
parent = None  # the run this one started from (init_from=<run>): its path, iteration and config, kept in every checkpoint
ckpt_path, log_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'log.jsonl')
if init_from == 'resume':
    if not os.path.exists(ckpt_path):
        die(f"init_from='resume' but there is no checkpoint at {ckpt_path}: check out_dir or start with init_from='scratch'")
    try:
        checkpoint, _ = read_checkpoint(ckpt_path, device)
    except ValueError as e:
        die(e)
    missing = [k for k in ('optimizer', 'scaler', 'iter_num', 'best_val_loss', 'rng_cpu') if k not in checkpoint]
    if missing:
        die(f"{ckpt_path} holds weights but not the training state to resume ({', '.join(missing)}): "
            "evaluate it, or start a new run in another out_dir")
    differ = {k: (v, model_args.get(k)) for k, v in checkpoint['model_args'].items() if model_args.get(k) != v}
    old_data = checkpoint.get('data', {}).get('data_dir', data_dir)
    old_config = checkpoint.get('config', {})
    for k, old, new in (('seed', old_config.get('seed', seed), seed), ('data_dir', old_data, data_dir),
                        ('trainable', old_config.get('trainable', ''), trainable)):  # another trainable: another optimizer
        if old != new and not (k == 'data_dir' and os.path.realpath(old) == os.path.realpath(new)):
            differ[k] = (old, new)  # the batches would differ from the run's own: no exact resume
    if differ:
        k, (old, new) = next(iter(differ.items()))
        die(f"{ckpt_path} was trained with {k}={old!r} but this config says {k}={new!r} ({len(differ)} setting(s) differ): "
            "resume with the same config file and overrides, or use another out_dir")
    iter_num, best_val_loss = checkpoint['iter_num'], checkpoint['best_val_loss']
    saved_iter, parent = iter_num, checkpoint.get('parent')
elif not overwrite and os.path.exists(ckpt_path):
    die(f"{out_dir} already holds a checkpoint ({ckpt_path}): continue it with --init_from=resume, "
        "use another out_dir, or pass --overwrite=True to replace it")
if init_from not in ('scratch', 'resume'):  # a new run on another run's weights; optimizer and iteration start afresh
    try:
        checkpoint, parent_path = read_checkpoint(init_from, device)
    except (FileNotFoundError, ValueError) as e:
        die(f"init_from: {e}")
    if os.path.realpath(parent_path) == os.path.realpath(ckpt_path):
        die(f"init_from={init_from} is this run's own checkpoint: continue it with init_from='resume', or use another out_dir")
    parent = {'path': parent_path, 'iter_num': checkpoint.get('iter_num'), 'model_args': checkpoint['model_args'],
              'config': checkpoint.get('config'), 'parent': checkpoint.get('parent')}

try:
    model = GPT(GPTConfig(**model_args))  # the pe checks its own settings here (e.g. rope_base, rope_scaling)
except ValueError as e:
    die(e)
if init_from not in ('scratch', 'resume'):
    try:
        start_from(model, checkpoint, parent['path'])  # refuses what the weights cannot carry, in one line
    except ValueError as e:
        die(f"init_from: {e}")
try:
    n_trainable = model.set_trainable(trainable)  # the others get no gradient, optimizer state or weight decay
except ValueError as e:
    die(e)
model.to(device)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if init_from == 'resume':
    try:
        model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in checkpoint['model'].items()})
        optimizer.load_state_dict(checkpoint['optimizer'])
        scaler.load_state_dict(checkpoint['scaler'])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        die(f"{ckpt_path}: its weights or optimizer state do not fit its model settings ({type(e).__name__}): it comes "
            "from another version of the code; evaluate it, or start a new run in another out_dir")
    torch.set_rng_state(checkpoint['rng_cpu'].cpu())  # dropout continues as if never stopped
    if device_type == 'cuda' and checkpoint.get('rng_cuda') is not None:
        torch.cuda.set_rng_state(checkpoint['rng_cuda'].cpu())

# out_dir: created only now that every setting and the checkpoint have been checked; one run at a time
if master_process:
    try:
        os.makedirs(out_dir, exist_ok=True)
        lock = open(os.path.join(out_dir, 'train.lock'), 'a+')  # held while we run; the OS drops it when we die
    except OSError as e:
        die(f"cannot write to out_dir {out_dir} ({e.strerror}): choose a folder you can write to")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        die(f"{out_dir} is in use by another training run (pid {lock.read().strip() or '?'}): "
            "wait for it to end, or use another out_dir")
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    if init_from != 'resume':
        for path in (ckpt_path, log_path):  # a log without a checkpoint is of a run that can no longer resume
            if os.path.exists(path):
                os.remove(path)
                print(f"removed the earlier {path}" + (" (overwrite=True)" if path == ckpt_path else ''))
    elif os.path.exists(log_path):  # each iteration logged once: drop what the killed run logged past its checkpoint
        redo = iter_num % eval_interval == 0 or iter_num == max_iters  # the loop evaluates again at iter_num
        keep = []
        for line in open(log_path):
            try:
                r = json.loads(line)
            except ValueError:  # a line torn by the kill
                continue
            it = r.get('iter', -1) if isinstance(r, dict) else -1
            if it < iter_num or (it == iter_num and not ('val_loss' in r and redo)):
                keep.append(line if line.endswith('\n') else line + '\n')
        with open(log_path + '.tmp', 'w') as f:
            f.writelines(keep)
        os.replace(log_path + '.tmp', log_path)

checkpoint = None  # free memory
if master_process:
    print(f"{model.get_num_params() / 1e6:.2f}M parameters, arch={arch}, pe={pe}")
    if parent:
        print(f"started from {parent['path']} (iter {parent['iter_num']}, pe={parent['model_args']['pe']}, "
              f"block_size={parent['model_args']['block_size']})")
    if parent or trainable:
        print(f"{n_trainable:,} of {sum(p.numel() for p in model.parameters()):,} parameters train (trainable='{trainable}')")
raw_model = model
if compile:
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[ddp_local_rank] if device_type == 'cuda' else None)


@torch.no_grad()
def estimate_loss():
    out = {}
    eval_model = model.module if ddp else model  # only rank 0 evaluates: bypass DDP's collective forward
    eval_model.eval()
    for split in ('train', 'val'):
        losses = torch.zeros(eval_iters)
        for k in range(eval_iters):
            X, Y, _ = get_batch(split, k, fixed=True)  # the same batches at every evaluation
            with ctx:
                _, loss = eval_model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean().item()
    eval_model.train()
    return out


def get_lr(it):
    decay_iters = lr_decay_iters or max_iters
    lr_min = min_lr or learning_rate / 10
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return lr_min
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return lr_min + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - lr_min)


def kept():
    """What is in out_dir now, for the one line that ends a run early."""
    if saved_iter is None:
        return "no checkpoint was written yet"
    return f"the last checkpoint {ckpt_path} (iter {saved_iter}) is intact; continue it with --init_from=resume"


def cannot_write(path, e):
    try:
        free = f", {shutil.disk_usage(out_dir).free / 2**20:,.0f} MiB free there"
    except OSError:
        free = ''
    os_error = e if isinstance(e, OSError) else e.__context__  # torch's writer raises a RuntimeError over the OSError
    reason = os_error.strerror if isinstance(os_error, OSError) and os_error.strerror else type(e).__name__
    die(f"could not write {path} ({reason}{free}): {kept()}")


def log(record):
    try:
        with open(log_path, 'a') as f:
            f.write(json.dumps(record) + '\n')
    except OSError as e:  # a full disk, a vanished out_dir
        cannot_write(log_path, e)


def stop_if_diverged():
    """A non-finite loss ends the run before anything is saved: the last checkpoint stays the good one."""
    bad = int(bad_iter)  # a sync point: only called where we sync anyway (logging, evaluation)
    if bad >= 0:
        die(f"the training loss is not finite at iter {bad}: the run diverged and was stopped without saving; {kept()} "
            "(lower learning_rate or raise warmup_iters first)")


def save_checkpoint():
    global saved_iter
    for name, p in raw_model.named_parameters():  # never a NaN over good work (cheap next to the write)
        if not torch.isfinite(p).all():
            die(f"weight {name} is not finite at iter {iter_num}: not saved; {kept()}")
    ckpt = {'model': raw_model.state_dict(), 'optimizer': optimizer.state_dict(), 'scaler': scaler.state_dict(),
            'model_args': model_args, 'iter_num': iter_num, 'best_val_loss': best_val_loss, 'config': config,
            'parent': parent, 'trainable_params': n_trainable,
            'data': {'data_dir': data_dir, 'meta': meta, 'next_batch': iter_num * gradient_accumulation_steps},
            'rng_cpu': torch.get_rng_state(), 'rng_cuda': torch.cuda.get_rng_state() if device_type == 'cuda' else None}
    tmp = ckpt_path + '.tmp'
    try:
        with open(tmp, 'wb') as f:  # a file object, so a full disk surfaces as an OSError with its reason
            torch.save(ckpt, f)
        os.replace(tmp, ckpt_path)  # atomic: a crash mid-write never leaves a broken ckpt.pt
    except (OSError, RuntimeError) as e:  # a full disk: torch reports it as a RuntimeError
        cannot_write(ckpt_path, e)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    saved_iter = iter_num


def on_stop_signal(signum, frame):
    if stop:  # a second signal: stop now (an unfinished write only ever leaves ckpt.pt.tmp behind)
        die(f"interrupted ({signal_name(signum)}) at iter {iter_num}: {kept()}")
    stop.append(signum)


def signal_name(signum):
    return 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name


stop = []  # Ctrl-C, or a scheduler's SIGTERM, asks the loop to stop between steps, so a checkpoint being written is never cut short
signal.signal(signal.SIGINT, on_stop_signal)
signal.signal(signal.SIGTERM, on_stop_signal)  # what Slurm and torchrun send before they kill a job


# -----------------------------------------------------------------------------
# training loop
peak = peak_flops(device_type)
flops_per_iter = raw_model.flops_per_token(block_size) * tokens_per_iter
t0 = time.time()
running_mfu = -1.0
bad_iter = torch.tensor(-1, device=device)  # the first iteration with a non-finite loss, kept on the device: no sync per step
while True:
    if stop:
        die(f"interrupted ({signal_name(stop[0])}) at iter {iter_num}: {kept()}")
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group['lr'] = lr

    if (iter_num % eval_interval == 0 or iter_num == max_iters) and master_process:
        losses = estimate_loss()
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        stop_if_diverged()
        if not all(map(math.isfinite, losses.values())):
            die(f"the evaluated loss is not finite at iter {iter_num} (train {losses['train']}, val {losses['val']}): "
                f"not saved; {kept()}")
        log({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'], 'lr': lr})
        if losses['val'] < best_val_loss or always_save_checkpoint:
            best_val_loss = min(best_val_loss, losses['val'])
            if iter_num > 0 and iter_num != saved_iter:  # a resumed run has this one already
                save_checkpoint()
                print(f"saved checkpoint to {ckpt_path}")
    if iter_num >= max_iters or eval_only:
        break
    if iter_num % eval_interval == 0:
        t0 = time.time()  # evaluation time is not training time

    # forward/backward with gradient accumulation; DDP syncs gradients on the last micro-step only
    loss_sum = 0.0
    for micro_step in range(gradient_accumulation_steps):
        X, Y, P = get_batch('train', iter_num * gradient_accumulation_steps + micro_step)
        if ddp:
            model.require_backward_grad_sync = (micro_step == gradient_accumulation_steps - 1)
        with ctx:
            _, loss = model(X, Y, pos=P)
            loss = loss / gradient_accumulation_steps
        loss_sum += loss.detach()
        scaler.scale(loss).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)

    iter_num += 1
    bad_iter = torch.where(torch.isfinite(loss_sum) | (bad_iter >= 0), bad_iter, iter_num)
    if iter_num % log_interval == 0 and master_process:
        stop_if_diverged()
        lossf = loss_sum.item()  # a sync point, so only when logging
        if device_type == 'cuda':
            torch.cuda.synchronize()
        dt = (time.time() - t0) / log_interval
        t0 = time.time()
        tok_s = tokens_per_iter / dt
        mfu = flops_per_iter / dt / peak if peak else None
        if mfu is not None and iter_num > 5 * log_interval:  # skip compile and warm-up iterations
            running_mfu = mfu if running_mfu < 0 else 0.9 * running_mfu + 0.1 * mfu
        mfu_s = f"{100 * running_mfu:.1f}%" if running_mfu >= 0 else 'n/a'
        print(f"iter {iter_num}: loss {lossf:.4f}, lr {lr:.2e}, {dt * 1000:.1f} ms/iter, {tok_s:,.0f} tok/s, mfu {mfu_s}")
        log({'iter': iter_num, 'loss': lossf, 'lr': lr, 'ms_per_iter': dt * 1000, 'tok_per_s': tok_s, 'mfu': mfu})

if ddp:  # cheap guard against silent divergence: every rank must hold the same weights
    import torch.distributed as dist
    checksum = torch.stack([p.detach().double().sum() for p in raw_model.parameters()]).sum().reshape(1)
    sums = [torch.zeros_like(checksum) for _ in range(ddp_world_size)]
    dist.all_gather(sums, checksum)
    if master_process:
        if any(not torch.equal(s, sums[0]) for s in sums):
            die(f"the {ddp_world_size} processes ended with different weights: {[s.item() for s in sums]}")
        print(f"all {ddp_world_size} processes hold identical weights")
    destroy_process_group()
