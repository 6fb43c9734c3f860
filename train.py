"""
Train a GPT with any positional encoding, on one device or many.

$ python train.py config/demo_cpu.py --pe=alibi --out_dir=out/demo_alibi   # one device: cuda, mps or cpu
$ torchrun --standalone --nproc_per_node=8 train.py config/expe_medium.py     # one node, 8 GPUs (DDP)
$ python train.py config/demo_cpu.py --pe=alibi --out_dir=out/demo_alibi --init_from=resume   # continue it: same settings
$ python train.py config/extend_cpu.py --init_from=out/demo_rope --pe=tape --trainable=pe,wte,norm --out_dir=out/ext
                                                                        # a new run from another run's weights
$ python train.py config/extend_cpu.py --init_from=hf:gpt2 --pe=expe --replace_pe=True   # GPT-2 from the hub, its
                                                                        # learned table replaced by ExPE (hf.py)
$ python train.py --help                                                # every setting, its default and what it does
"""
import math
import os
import signal
import sys
import time
from dataclasses import fields

import torch
from torch.distributed import destroy_process_group, init_process_group
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
from configurator import configure, die
from core import (RunDir, autocast, batches_identity, check_train_settings, default_dtype, hf_started_settings,
                  learning_rate_at, out_of_memory, peak_flops, pick_device, restore_training_state, signal_name,
                  start_from_checkpoint, start_of_run, start_wandb, train_step)
from data import TASK_KNOBS, Batches
from hf import hf_model_args
from model import GPT, GPTConfig, check_config

# -----------------------------------------------------------------------------
# settings: these defaults, then config files, then --key=value (core.configure)
# I/O
out_dir = 'out'
eval_interval = 250       # also writes a checkpoint
log_interval = 10         # iterations per log line (and per check that the loss is finite)
eval_iters = 50           # val batches per evaluation (the same batches every time)
eval_only = False         # evaluate once and exit
always_save_checkpoint = True  # else only when val loss improves
init_from = 'scratch'     # 'scratch', 'resume' (from out_dir/ckpt.pt), a run to start from (its out_dir or ckpt.pt), or
                          # hf:<hub name or folder>, a Hugging Face GPT-2 or Llama: its settings replace the defaults
replace_pe = False        # starting from a run: let pe be one that cannot start exactly from it (the parent's positional
                          # parameters are dropped and the new pe learns from its init)
overwrite = False         # let a new run (not a resume) replace the checkpoint and log.jsonl already in out_dir
resume_other_batches = False  # let a resume go on although its batches changed (other data, mix, batch or process count):
                              # logged in log.jsonl, and no longer the uninterrupted run's batches
trainable = ''            # '' = every parameter trains; else some of model.PARAM_GROUPS, e.g. 'pe,wte,norm'
seed = 1337               # seeds the weights and every batch: a resume must keep it
# data
data_dir = 'data/shakespeare_byte'  # shards written by prepare.py
gradient_accumulation_steps = 1     # total over all processes
batch_size = 16                     # micro-batch per process
task = ''                 # a synthetic task (data.TASKS: passkey, addition, flipflop, mqar, copy, reverse, needle,
                          # vartrack): '' = corpus text only
task_frac = 1.0           # share of training rows that are the task's; 1 with a task of its own characters (all but
                          # passkey): every train and val row is the task's, the loss on its answers, no shards read
# every task's knobs (data.TASKS: addition_digits, flipflop_p, mqar_pairs, ...), at their defaults
globals().update(TASK_KNOBS)
# model: every GPTConfig field (model.py) is a setting here, with GPTConfig's default unless set below
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
# logging: what log.jsonl gets, also to Weights & Biases (pip install wandb; WANDB_MODE=offline works offline)
wandb_log = False
wandb_project = 'expe-gpt'
wandb_run_name = ''       # '' -> the name of out_dir
# -----------------------------------------------------------------------------
configurator.RANK = int(os.environ.get('RANK', 0))  # under torchrun every rank checks the same settings: rank 0 speaks
config = configure(globals())
if init_from.startswith('hf:') or init_from == 'resume':  # a pretrained model's settings come first (also when such a
    try:                                                    # run resumes), then the config files and overrides again
        pretrained = hf_model_args(init_from) if init_from != 'resume' else hf_started_settings(out_dir)
    except ValueError as e:
        die(f"init_from: {e}")
    if pretrained:
        globals().update(pretrained)
        config = configure(globals())
check_train_settings(config)  # every setting is checked before anything is read or written
config.update(data_dir=os.path.abspath(data_dir), out_dir=os.path.abspath(out_dir))  # a checkpoint works from any folder

# -----------------------------------------------------------------------------
# processes, device and precision
ddp = int(os.environ.get('RANK', -1)) != -1  # launched by torchrun?
device = pick_device(device)
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
if ddp and not master_process:
    def quiet_when_a_peer_stopped(kind, e, tb):  # its collective failed because another rank stopped and said why
        sys.exit(1) if isinstance(e, torch.distributed.DistError) else sys.__excepthook__(kind, e, tb)
    sys.excepthook = quiet_when_a_peer_stopped
tokens_per_iter = gradient_accumulation_steps * ddp_world_size * batch_size * block_size
dtype = dtype or default_dtype(device_type)
torch.manual_seed(seed + ddp_rank)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ctx = autocast(device_type, dtype)
if master_process:
    print(f"tokens per iteration: {tokens_per_iter:,} ({ddp_world_size} process(es) x {gradient_accumulation_steps} "
          f"accumulation x {batch_size} x {block_size}); device {device}, {dtype}")

# -----------------------------------------------------------------------------
# data: batch k of a process comes from an RNG seeded by (seed, rank, split, fixed, k), so resume is exact
try:
    batches = Batches(data_dir, block_size, batch_size, seed, ddp_rank, vocab_size, task, task_frac,
                      {k: globals()[k] for k in TASK_KNOBS})
except (FileNotFoundError, ValueError) as e:
    die(e)
vocab_size = batches.vocab_size


def get_batch(split, k, fixed=False):
    try:
        x, y, pos = batches.get(split, k, fixed, raw_model.pe.train_positions)  # pos: where the pe draws its own
    except ValueError as e:  # a token id outside the vocabulary: only this rank may meet it, so it says so itself
        sys.exit(f"error: {f'rank {ddp_rank}: ' if ddp else ''}{e}")
    if device_type == 'cuda':  # pinned memory lets the copy overlap with compute
        x, y = x.pin_memory(), y.pin_memory()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True), pos if pos is None else pos.to(device)


# -----------------------------------------------------------------------------
# model and optimizer: from scratch, resumed, or started from another run's weights
model_args = {f.name: globals()[f.name] for f in fields(GPTConfig)}
try:
    check_config(GPTConfig(**model_args))  # e.g. an unknown pe, or a knob the pe would ignore
except ValueError as e:
    die(e)
identity = batches_identity(batches, ddp_world_size)  # kept in every checkpoint: a resume must see the same batches
resume, parent_ckpt, parent, other_batches = start_of_run(config, model_args, device, identity)
try:
    model = GPT(GPTConfig(**model_args))  # the pe checks its own settings here (e.g. rope_base, rope_scaling)
except ValueError as e:
    die(e)
except (RuntimeError, MemoryError) as e:
    if not out_of_memory(e):
        raise
    die(f"out of memory building the model ({n_layer} layers x n_embd={n_embd}, vocab_size={vocab_size}): lower them")
if parent_ckpt:
    known, data = parent_ckpt['meta'].get('tokenizer'), batches.meta.get('tokenizer')
    if known and data and known != data:  # the same ids would be other text
        die(f"init_from: {parent['path']} reads tokenizer {known!r} but {data_dir} is {data!r}: prepare the data with "
            f"python prepare.py --tokenizer {known}")
    try:
        start_from_checkpoint(model, parent_ckpt, parent['path'], replace_pe)  # refuses what the weights cannot carry
    except ValueError as e:
        die(f"init_from: {e}")
try:
    n_trainable = model.set_trainable(trainable)  # the others get no gradient, optimizer state or weight decay
except ValueError as e:
    die(e)
model.to(device)
scaler = torch.amp.GradScaler(device_type, enabled=(dtype == 'float16'))
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
iter_num, best_val_loss = 0, 1e9
run = RunDir(out_dir)
if resume:
    restore_training_state(model, optimizer, scaler, resume, run.ckpt_path, device_type)
    iter_num, best_val_loss = resume['iter_num'], resume['best_val_loss']
    run.saved_iter = iter_num
resume = parent_ckpt = None  # free memory
if master_process:  # out_dir is created only now that every setting and checkpoint has been checked
    run.lock()  # one run per out_dir
    run.start_log(iter_num if init_from == 'resume' else None, iter_num % eval_interval == 0 or iter_num == max_iters)
    if other_batches:  # resume_other_batches=True: said, and kept in the log
        print(f"warning: resumed on other batches ({'; '.join(other_batches)}): not the uninterrupted run's batches")
        run.log({'iter': iter_num, 'resumed_with_other_batches': other_batches})
    if wandb_log:  # every log.jsonl record goes there too
        run.wandb = start_wandb(wandb_project, wandb_run_name or os.path.basename(os.path.abspath(out_dir)), config, out_dir)
    print(f"{model.get_num_params() / 1e6:.2f}M parameters, arch={model.config.arch}, pe={model.config.pe}")
    if parent:
        print(f"started from {parent['path']} (iter {parent['iter_num']}, pe={parent['model_args']['pe']}, "
              f"block_size={parent['model_args']['block_size']})")
        was = parent['model_args']['pe']
        if replace_pe and model.config.pe != was and was not in model.pe.starts_from:
            print(f"replace_pe: pe={model.config.pe} learns from its init; the parent's pe={was} parameters are dropped")
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
    return learning_rate_at(it, learning_rate, warmup_iters, lr_decay_iters or max_iters, min_lr or learning_rate / 10)


def check_in():
    """A stop request (Ctrl-C, SIGTERM) or a non-finite loss ends the run before anything more is saved: the last
    checkpoint stays the good one. Under DDP every rank calls this at the same iterations and they decide together
    (any rank's request or divergence stops all of them at this step), so none is left waiting in a collective."""
    flags = torch.stack([bad_iter, torch.tensor(stop[0] if stop else -1, device=device)])
    if ddp:
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    bad, signum = flags.tolist()  # a sync point: only at logging and evaluation steps
    if bad >= 0:
        die(f"the training loss is not finite at iter {bad}: the run diverged and was stopped without saving; {run.kept()} "
            "(lower learning_rate or raise warmup_iters first)")
    if signum >= 0:
        die(f"interrupted ({signal_name(signum)}) at iter {iter_num}: {run.kept()}")


def stop_if_out_of_memory(e, when):
    if not out_of_memory(e):
        raise e
    die(f"out of memory {when} ({batch_size} x {block_size} tokens a micro-batch on {device}): lower batch_size (raise "
        f"gradient_accumulation_steps to keep the batch), block_size or the model; {run.kept()}")


def on_stop_signal(signum, frame):
    if stop:  # a second signal: stop now (an unfinished write only ever leaves ckpt.pt.tmp behind)
        die(f"interrupted ({signal_name(signum)}) at iter {iter_num}: {run.kept()}")
    stop.append(signum)


stop = []  # Ctrl-C, or a scheduler's SIGTERM, asks the loop to stop between steps: a checkpoint write is never cut short
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
    if iter_num % log_interval == 0 or iter_num % eval_interval == 0 or iter_num == max_iters or (stop and not ddp):
        check_in()  # every rank at the same iterations (one process: at once on a stop request too)
    lr = get_lr(iter_num) if decay_lr else learning_rate
    for group in optimizer.param_groups:
        group['lr'] = lr

    if (iter_num % eval_interval == 0 or iter_num == max_iters) and master_process:
        try:
            losses = estimate_loss()
        except (RuntimeError, MemoryError) as e:
            stop_if_out_of_memory(e, f"evaluating at iter {iter_num}")
        print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
        if not all(map(math.isfinite, losses.values())):
            die(f"the evaluated loss is not finite at iter {iter_num} (train {losses['train']}, val {losses['val']}): "
                f"not saved; {run.kept()}")
        run.log({'iter': iter_num, 'train_loss': losses['train'], 'val_loss': losses['val'], 'lr': lr})
        if losses['val'] < best_val_loss or always_save_checkpoint:
            best_val_loss = min(best_val_loss, losses['val'])
            if iter_num > 0 and iter_num != run.saved_iter:  # a resumed run has this one already
                run.save(raw_model, {  # the format: core.py's docstring
                    'model': raw_model.state_dict(), 'model_args': model_args, 'config': config, 'meta': batches.meta,
                    'iter_num': iter_num, 'best_val_loss': best_val_loss, 'optimizer': optimizer.state_dict(),
                    'scaler': scaler.state_dict(), 'rng_cpu': torch.get_rng_state(),
                    'rng_cuda': torch.cuda.get_rng_state() if device_type == 'cuda' else None,
                    'parent': parent, 'trainable_params': n_trainable, 'batches': identity})
                print(f"saved checkpoint to {run.ckpt_path}")
    if iter_num >= max_iters or eval_only:
        break
    if iter_num % eval_interval == 0:
        t0 = time.time()  # evaluation time is not training time

    # forward, backward and update, with gradient accumulation over the micro-batches
    micro = [get_batch('train', iter_num * gradient_accumulation_steps + i) for i in range(gradient_accumulation_steps)]
    try:
        loss = train_step(model, optimizer, scaler, micro, ctx, grad_clip)
    except (RuntimeError, MemoryError) as e:
        stop_if_out_of_memory(e, f"training iter {iter_num}")
    iter_num += 1
    bad_iter = torch.where(torch.isfinite(loss) | (bad_iter >= 0), bad_iter, iter_num)
    if iter_num % log_interval == 0 and master_process:
        if not torch.isfinite(loss):  # check_in stops the run at the top of the next iteration; log nothing non-finite
            continue
        lossf = loss.item()  # a sync point, so only when logging
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
        run.log({'iter': iter_num, 'loss': lossf, 'lr': lr, 'ms_per_iter': dt * 1000, 'tok_per_s': tok_s, 'mfu': mfu})

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
