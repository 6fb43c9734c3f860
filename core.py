"""
What the scripts share on the torch side: devices and precision, the checkpoint format, loading a run
for evaluation, and the pieces of a training run (its checks, its out_dir lock and log, one optimizer
step). Scripts import this module, configurator.py (the command line), model.py, data.py and
evaluation.py; no script imports another.

The checkpoint format (ckpt.pt, written by train.py through save_checkpoint, version 2): a dict of
    version        int    CHECKPOINT_VERSION (absent: version 1, read through upgrade_checkpoint)
    model          dict   {parameter name: tensor}, model.GPT's state_dict (no compile or DDP prefix)
    model_args     dict   {GPTConfig field: value}: the model's settings
    config         dict   {train.py setting: value}: every setting of the run (data_dir, seed, trainable,
                          task, task_frac, ...), as resolved at its start
    meta           dict   the data's meta.json as read at training time (tokenizer, vocab_size, eot);
                          {} for shards that came without one (llm.c's)
    iter_num       int    optimizer steps taken
    best_val_loss  float  the lowest val loss evaluated so far
    optimizer      dict   AdamW's state_dict   } the training state: without them a checkpoint can be
    scaler         dict   GradScaler's          } evaluated and started from, not resumed
    rng_cpu        tensor torch's CPU RNG state  } (dropout continues as if never stopped)
    rng_cuda       tensor or None: the CUDA RNG state of rank 0
    batches        dict   what decides the batches besides the config: {'data': a fingerprint of meta.json and
                          the shards' names and sizes, 'processes': how many trained} (a resume checks both)
    parent         dict or None: the run this one started from (init_from=<run>): its path, iter_num,
                          model_args, config and parent
    trainable_params int  how many parameters train (train.py's `trainable`)
Only tensors and plain data (dict, list, tuple, str, int, float, bool, None): read_checkpoint loads
with weights_only=True, so a checkpoint from elsewhere can never run code.
"""
import contextlib
import fcntl
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import signal
import warnings
import zipfile
from dataclasses import fields, replace

import torch

from configurator import die, parse_value
from data import TASK_KNOBS, get_tokenizer, load_meta
from hf import read_hf
from model import GPT, PARAM_GROUPS, PES, GPTConfig, check_config, start_from


# -----------------------------------------------------------------------------
# devices and precision

DTYPES = {'float32': torch.float32, 'bfloat16': torch.bfloat16, 'float16': torch.float16}
PEAK_FLOPS = {  # dense bf16 tensor-core peak per device, FLOP/s (vendor datasheets)
    'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'A10G': 125e12, 'L4': 121e12,
    'RTX 4090': 165e12, 'RTX 3090': 71e12, 'V100': 125e12, 'A40': 150e12, 'L40S': 362e12,
}


def devices_here():
    """The devices torch can use on this machine, e.g. ['cpu', 'cuda:0', 'cuda:1']."""
    found = ['cpu'] + [f'cuda:{i}' for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    if torch.backends.mps.is_available():
        found.append('mps')
    xpu = getattr(torch, 'xpu', None)  # Intel GPUs, in torch since 2.4
    if xpu is not None and xpu.is_available():
        found += [f'xpu:{i}' for i in range(xpu.device_count())]
    return found


def device_problem(device):
    """Why `device` cannot be used on this machine, or '' if it can: a name torch does not know, or a device
    it knows (cuda:1, xpu, meta, ...) that this machine lacks. The line names the devices that are here."""
    here = devices_here()
    fix = "use one of those (--device=cpu), or '' to pick one"
    try:
        dev = torch.device(device)
    except RuntimeError:
        return f"device='{device}' is not a device torch knows; this machine has {', '.join(here)}: {fix}"
    if dev.type == 'cpu' or f"{dev.type}:{dev.index or 0}" in here or (dev.type == 'mps' and 'mps' in here):
        return ''
    return f"device='{device}' is not available on this machine, which has {', '.join(here)}: {fix}"


def pick_device(device=''):
    """`device`, checked; '' picks cuda, else mps, else cpu. Exits with one line if it cannot be used."""
    device = device or ('cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu')
    problem = device_problem(device)
    if problem:
        die(problem)
    return device


def default_dtype(device_type):
    """bf16 autocast on CUDA (fp16 where a GPU has no bf16), fp32 elsewhere."""
    if device_type != 'cuda':
        return 'float32'
    return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'


def autocast(device, dtype=''):
    """The context every forward pass runs in on `device`: nothing for fp32, else autocast to `dtype`
    ('' = default_dtype: bf16 on CUDA, fp32 elsewhere)."""
    device_type = device.split(':')[0]
    dtype = dtype or default_dtype(device_type)
    if dtype == 'float32':
        return contextlib.nullcontext()
    return torch.amp.autocast(device_type=device_type, dtype=DTYPES[dtype])


def peak_flops(device_type):
    """Peak FLOP/s of the current CUDA device, or None where we do not know it (CPU, mps)."""
    if device_type != 'cuda':
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def out_of_memory(e):
    """Whether exception e is a device running out of memory: CUDA's OutOfMemoryError, the CPU allocator's
    RuntimeError ("DefaultCPUAllocator: can't allocate memory"), MPS's, or Python's MemoryError."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(e, RuntimeError) and bool(re.search(r"can't allocate memory|could not allocate|out of memory|"
                                                          r"failed to allocate", str(e), re.IGNORECASE))


def free_memory():
    """After an out-of-memory: give the failed attempt's cached blocks back (CPU memory is freed with its tensors)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# the pos_scale the evaluation scripts accept: 1 is as trained, 1/n fits n x the training length into it
# (interpolation). Past 16, the positions at 1x already pass 16 x block_size, the longest any pe here trains
# on (RandPE's default randpe_max, whose expected spacing at 1x is 16) and the longest these scripts evaluate
# by default; below 1/1024, more than 1024x the training length would be squeezed into it, far past any
# length evaluated here. Outside, tables fill with NaN (ExPE's values overflow fp32 near 1e19) or with
# numbers that measure nothing.
SCALE_RANGE = (1 / 1024, 16.0)


def scale_problem(scale, key='--scale '):
    """Why pos_scale `scale` cannot be evaluated, or '' if it can: not finite, not > 0, or outside SCALE_RANGE.
    key names the setting in the line ('--scale ', 'scale=', '--set pos_scale=')."""
    lo, hi = SCALE_RANGE
    if isinstance(scale, (int, float)) and math.isfinite(scale) and lo <= scale <= hi:
        return ''
    return (f"{key}{scale}: pos_scale must be a finite number > 0 from 1/{1 / lo:g} to {hi:g} (1 = as trained, 1/n "
            f"interpolates n x the training length); past {hi:g} the positions at 1x pass {hi:g} x block_size, the "
            "longest any pe here trains on")


# -----------------------------------------------------------------------------
# checkpoints: the format is in this module's docstring

CHECKPOINT_VERSION = 2


def read_checkpoint(path, device='cpu'):
    """The dict in a ckpt.pt (a file or an out_dir), in the current format, loaded with weights_only=True.
    An error says why a file cannot be read and never advises re-training: the file may be fine.
    'hf:<hub name or folder>' reads a Hugging Face GPT-2 or Llama as such a checkpoint (hf.py). Returns (checkpoint, path)."""
    if str(path).startswith('hf:'):
        return read_hf(str(path)), str(path)
    if os.path.isdir(path):
        path = os.path.join(path, 'ckpt.pt')
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one with `python train.py ...` first")
    problem = device_problem(device)
    if problem:
        raise ValueError(f"cannot load {path}: {problem} (the checkpoint itself may be fine)")
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
    except OSError as e:  # permission, a folder named ckpt.pt, ...
        raise ValueError(f"cannot read {path}: {e.strerror} (the checkpoint itself may be fine): fix its permissions "
                         "or read it as its owner")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; its directory sits at the very end
        if head == b'PK\x03\x04':
            raise ValueError(f"{path} is truncated (a zip without its end, {os.path.getsize(path):,} bytes): an incomplete "
                             "copy or download? copy it again from its source")
        raise ValueError(f"{path} is not a PyTorch checkpoint (torch.save writes a zip file; this is not one)")
    try:
        with warnings.catch_warnings():  # torch's own advice (load with weights_only=False) is exactly what not to do
            warnings.simplefilter('ignore')
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # read from the opcodes, nothing is run
        raise ValueError(f"refused to load {path}: it holds Python objects ({', '.join(found[:3]) or 'unknown'}) that "
                         "could run code when loaded; a train.py checkpoint holds only tensors and plain data")
    except Exception as e:  # a damaged zip member
        raise ValueError(f"{path} is damaged: torch cannot read it ({type(e).__name__}); copy it again from its source")
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get('model_args'), dict) and isinstance(ckpt.get('model'), dict)):
        raise ValueError(f"{path} is a PyTorch file but not a checkpoint of this project (no model and model_args): "
                         "point at a ckpt.pt written by train.py")
    return upgrade_checkpoint(ckpt, path), path


def upgrade_checkpoint(ckpt, path):
    """A checkpoint of an earlier version in the current format. Version 1 (no `version`) kept data_dir twice and
    meta.json under `data`; its pes may use older weight names (PE.renamed); the weights may carry torch.compile's prefix."""
    version = ckpt.get('version', 1)
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ValueError(f"{path} is checkpoint version {version!r}, newer than this code reads ({CHECKPOINT_VERSION}): "
                         "update the code")
    if version == 1:
        data = ckpt.pop('data', None) or {}
        ckpt['meta'] = data.get('meta') or {}
        ckpt['config'] = ckpt.get('config') or {}
        if 'data_dir' in data:
            ckpt['config'].setdefault('data_dir', data['data_dir'])
        ckpt['version'] = CHECKPOINT_VERSION
    for key in ('config', 'meta'):  # a converted checkpoint holds only model and model_args: {} = nothing recorded
        if ckpt.get(key) is None:
            ckpt[key] = {}
        elif not isinstance(ckpt[key], dict):
            raise ValueError(f"{path}: its {key} is a {type(ckpt[key]).__name__}, not a dict: it was not written by train.py; "
                             f"save it with {key}={{}} or with what train.py records there")
    ckpt['model'] = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
    pe = PES.get(ckpt['model_args'].get('pe'))
    for old, new in (pe.renamed if pe else ()):  # checkpoints from before a pe's weights were renamed
        ckpt['model'] = {re.sub(old, new, k): v for k, v in ckpt['model'].items()}
    return ckpt


def checkpoint_config(ckpt, path):
    """The GPTConfig of a checkpoint (read_checkpoint), checked."""
    args = ckpt['model_args']
    known = {f.name for f in fields(GPTConfig)}
    if set(args) - known:
        raise ValueError(f"{path} has model settings this model.py does not know ({', '.join(sorted(set(args) - known))}): "
                         "it comes from another version of the code")
    defaults = {f.name: f.default for f in fields(GPTConfig)}
    args = dict(args)
    for k, v in args.items():  # GPTConfig does not check types: a str n_layer would fail deep in the model
        want = type(defaults[k])
        if want is float and type(v) is int:
            args[k] = float(v)  # a whole number is a float setting's value, as on the command line
        elif type(v) is not want:
            raise ValueError(f"{path}: model_args {k}={v!r} is of type {type(v).__name__}, but {k} is {want.__name__} "
                             "(GPTConfig in model.py): the file was not written by train.py as it is; fix that field")
    config = GPTConfig(**args)
    check_config(config)
    return config


def checkpoint_weights(ckpt, path):
    """The weights of a checkpoint; refuses non-finite ones."""
    state = ckpt['model']
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path} holds non-finite weights ({bad[0]}{' and more' if len(bad) > 1 else ''}): "
                         "its run diverged before this was saved; use an earlier checkpoint")
    return state


def start_from_checkpoint(model, ckpt, path, replace_pe=False):
    """Give `model` the checkpoint's weights where its settings differ only in what the weights carry (model.start_from)."""
    start_from(model, checkpoint_config(ckpt, path), checkpoint_weights(ckpt, path), path, replace_pe)


def model_from_checkpoint(ckpt, path, device='cpu', settings=None):
    """The model of a checkpoint (read_checkpoint) on device. settings: GPTConfig fields to change (eval.py --set,
    --scale), as far as the weights carry them (model.start_from); they pass the same checks as at build time."""
    config = checkpoint_config(ckpt, path)
    if settings:
        try:
            model = GPT(replace(config, **settings))
        except ValueError as e:
            raise ValueError(f"{path}: {e}")
        start_from_checkpoint(model, ckpt, path)
        return model.to(device)
    model = GPT(config)
    try:
        model.load_state_dict(checkpoint_weights(ckpt, path))
    except RuntimeError as e:  # missing, unexpected or mis-shaped weights
        raise ValueError(f"{path} does not match its model settings ({str(e).splitlines()[1].strip()}): "
                         "it comes from another version of the code")
    return model.to(device)


def load_checkpoint(path, device='cpu', settings=None):
    """(model, checkpoint) from a ckpt.pt or an out_dir: read_checkpoint, then model_from_checkpoint."""
    ckpt, path = read_checkpoint(path, device)
    return model_from_checkpoint(ckpt, path, device, settings), ckpt


def load_models(paths, device, settings=None, scale=None, unscalable='error', scale_key='--scale '):
    """[(path, model, checkpoint)] for out_dirs or ckpt.pt files, in eval mode: what the evaluation scripts
    evaluate. settings: GPTConfig fields to change (--set); scale: pos_scale (None: each checkpoint's own). For a
    pe where pos_scale means nothing, a scale other than 1 is one error line, or with unscalable='keep' the
    model keeps its own (eval.py shows n/a); scale_key names the setting in that line. Exits with one line on bad input."""
    loaded = []
    try:
        for path in paths:
            ckpt, where = read_checkpoint(path, device)
            wanted = dict(settings or {})
            pe = PES.get(wanted.get('pe', ckpt['model_args'].get('pe')))
            if scale is not None and pe and pe.scalable:
                wanted['pos_scale'] = scale
            elif scale not in (None, 1.0) and pe and unscalable == 'error':
                raise ValueError(f"{scale_key}{scale:g}: pos_scale means nothing for pe={wanted.get('pe', ckpt['model_args']['pe'])} "
                                 f"({path}): leave it at 1")
            model = model_from_checkpoint(ckpt, where, device, wanted)
            model.eval()
            loaded.append((path, model, ckpt))
    except (FileNotFoundError, ValueError) as e:
        die(e)
    return loaded


def model_settings(items):
    """--set KEY=VALUE ... -> {GPTConfig field: value of its type}, parsed as every setting is; exits with one line."""
    defaults = {f.name: f.default for f in fields(GPTConfig)}
    settings = {}
    for item in items:
        key, eq, text = item.partition('=')
        if not eq or key not in defaults:
            die(f"--set {item}: use KEY=VALUE, KEY a model setting (a GPTConfig field of model.py)")
        settings[key] = parse_value(key, text, defaults[key], f"--set {item}")
        if key == 'pos_scale' and scale_problem(settings[key], '--set pos_scale='):
            die(scale_problem(settings[key], '--set pos_scale='))
    return settings


def check_multiples(ev, key='--ev'):
    """--ev: multiples of the training length, each an integer >= 1, each once (a repeat would print a second
    column over the same cell). Exits with one line."""
    if not ev or any(e < 1 for e in ev):
        die(f"{key} {' '.join(map(str, ev))}: give multiples of the training length, integers >= 1")
    twice = sorted({e for e in ev if ev.count(e) > 1})
    if twice:
        die(f"{key} {' '.join(map(str, ev))}: {', '.join(map(str, twice))} is given more than once; name each multiple once")


def save_checkpoint(ckpt, path):
    """Write ckpt (this module's format) to path atomically: a crash mid-write never leaves a broken file.
    Raises OSError (or torch's RuntimeError over one) on a full or read-only disk; nothing half-written stays."""
    tmp = path + '.tmp'
    try:
        with open(tmp, 'wb') as f:  # a file object, so a full disk surfaces as an OSError with its reason
            torch.save({'version': CHECKPOINT_VERSION, **ckpt}, f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# -----------------------------------------------------------------------------
# what a run was trained on

REPO = os.path.dirname(os.path.abspath(__file__))  # where the scripts live; data/ and out/ default to it


def holds_data(folder):
    """Whether a folder holds prepare.py's output (or llm.c's shards): a meta.json or a shard."""
    return os.path.isdir(folder) and any(n == 'meta.json' or n.endswith('.bin') for n in os.listdir(folder))


def checkpoint_data_dir(ckpt, path, fix='pass --data_dir'):
    """The data_dir a checkpoint (read from path, its out_dir or ckpt.pt) was trained on, as a path from here.
    train.py recorded it as given, often relative to the folder it ran in: one that holds no data from the
    current folder is looked for from the repository's folder, then from the run's folder and its parents;
    the first that holds data wins. Raises ValueError naming every place tried, and `fix`."""
    data_dir = trained_with(ckpt, 'data_dir')
    if not data_dir:
        raise ValueError(f"{path} does not record the data it was trained on (its config has no data_dir): {fix}")
    if os.path.isabs(data_dir) or holds_data(data_dir):
        return data_dir
    run = os.path.abspath(path if os.path.isdir(path) else os.path.dirname(path) or '.')
    bases = [os.getcwd(), REPO, run]
    while os.path.dirname(bases[-1]) != bases[-1]:  # the run's parents, up to the root
        bases.append(os.path.dirname(bases[-1]))
    tried = list(dict.fromkeys(os.path.normpath(os.path.join(base, data_dir)) for base in bases))
    found = next((where for where in tried[1:] if holds_data(where)), None)
    if found is None:
        raise ValueError(f"{path} was trained on data_dir={data_dir!r}, which holds no data from the current folder, the "
                         f"repository's or the run's: tried {', '.join(tried)}; {fix}")
    return found


def data_of(ckpt, path, data_dir=''):
    """(data_dir, its meta.json) to evaluate a checkpoint on: data_dir (--data_dir), or the run's own
    (checkpoint_data_dir). Refuses data of another tokenizer than the one the checkpoint was trained on."""
    where = data_dir or checkpoint_data_dir(ckpt, path)
    meta = load_meta(where)
    own, theirs = ckpt['meta'].get('tokenizer'), meta.get('tokenizer')
    if own and theirs and own != theirs:  # the ids would be read as another tokenizer's: a table of nonsense
        raise ValueError(f"{where} holds tokens of tokenizer {theirs!r} (its meta.json), but {path} was trained on "
                         f"{own!r}: pass a --data_dir prepared with --tokenizer {own}")
    return where, meta


def tokenizer_of(ckpt, name='', path='', key='--tokenizer'):
    """(encode, decode, eot) of the data a checkpoint (read from path) was trained on, or of tokenizer `name` for a
    checkpoint that does not name its own; key names that setting in an error line."""
    own = ckpt['meta'].get('tokenizer')
    if not (own or name) and trained_with(ckpt, 'data_dir'):  # an early run kept its meta.json in its data_dir only
        own = load_meta(checkpoint_data_dir(ckpt, path, f"pass {key}")).get('tokenizer')
    name = name or own
    if not name:
        raise ValueError(f"{path or 'the checkpoint'} does not name its tokenizer (no meta.json in it or its data): pass {key}")
    encode, decode, eot, vocab = get_tokenizer(name)
    if vocab > ckpt['model_args']['vocab_size']:  # its ids would index past the model's embedding table
        raise ValueError(f"tokenizer {name!r} has {vocab:,} tokens, more than the model's vocab_size "
                         f"{ckpt['model_args']['vocab_size']}: use the tokenizer it was trained with")
    if own and name != own:  # another tokenizer's ids would mean other text to the model: silent nonsense
        raise ValueError(f"{path or 'the checkpoint'} was trained on tokenizer {own!r}, not {name!r}: leave out {key} "
                         "(it names the tokenizer of a checkpoint whose data had no meta.json)")
    return encode, decode, eot


def trained_with(ckpt, key, default=None):
    """A train.py setting of the run (its config), or `default` for a checkpoint from before that setting existed."""
    return ckpt['config'].get(key, default)


def task_settings(config):
    """A run's synthetic task from its train.py config: task, task_frac and every task knob. A run from before `task`
    existed recorded passkey_frac (a passkey mix) or addition_digits (addition rows only) instead."""
    s = {'task': '', 'task_frac': 1.0, **TASK_KNOBS}
    if 'task' in config:
        return {k: config.get(k, default) for k, default in s.items()}
    if config.get('passkey_frac'):
        s.update(task='passkey', task_frac=config['passkey_frac'])
    elif config.get('addition_digits'):
        s.update(task='addition', addition_digits=config['addition_digits'])
    return s


# -----------------------------------------------------------------------------
# a training run: its checks, what it starts from, its out_dir, one optimizer step

def check_train_settings(s):
    """train.py's own settings (the model's are model.check_config's), before anything is read or written."""
    for k in ('batch_size', 'gradient_accumulation_steps', 'eval_interval', 'log_interval', 'eval_iters'):
        if s[k] < 1:
            die(f"{k}={s[k]} must be at least 1")
    for k in ('max_iters', 'warmup_iters', 'lr_decay_iters', 'seed'):
        if s[k] < 0:
            die(f"{k}={s[k]} must be >= 0")
    if not (math.isfinite(s['learning_rate']) and s['learning_rate'] > 0):
        die(f"learning_rate={s['learning_rate']} must be a finite number > 0")
    for k in ('min_lr', 'weight_decay', 'grad_clip'):  # 0 = lr/10, no decay, no clipping
        if not (math.isfinite(s[k]) and s[k] >= 0):
            die(f"{k}={s[k]} must be a finite number >= 0")
    if not (0 <= s['beta1'] < 1 and 0 <= s['beta2'] < 1):
        die(f"beta1={s['beta1']}, beta2={s['beta2']}: Adam's betas are from 0 to below 1")
    init_from = s['init_from']
    if init_from not in ('scratch', 'resume') and not init_from.startswith('hf:') and not os.path.exists(init_from):
        die(f"init_from='{init_from}': use 'scratch', 'resume', a run to start from (its out_dir or ckpt.pt; none there) "
            "or hf:<a Hugging Face GPT-2 or Llama>")
    if s['overwrite'] and init_from == 'resume':
        die("overwrite=True only applies to a new run (init_from='scratch' or a run to start from): a resume continues "
            "the checkpoint in out_dir")
    if s['trainable'] and set(s['trainable'].split(',')) - set(PARAM_GROUPS):
        die(f"trainable='{s['trainable']}': use a comma-separated list of {', '.join(PARAM_GROUPS)} ('' = all)")
    if scale_problem(s['pos_scale'], 'pos_scale='):  # the model's knob, set here for training too
        die(scale_problem(s['pos_scale'], 'pos_scale='))
    if s['dtype'] not in ('', *DTYPES):
        die(f"dtype='{s['dtype']}': use float32, bfloat16 or float16")
    out_dir = s['out_dir']
    if not out_dir or (os.path.exists(out_dir) and not os.path.isdir(out_dir)):
        die(f"out_dir='{out_dir}' is not a folder: name a folder for the checkpoint and log")
    if s['device'] and device_problem(s['device']):
        die(device_problem(s['device']))


def hf_started_settings(out_dir):
    """The model settings of the checkpoint in out_dir where its run started from a Hugging Face model (they came from
    its config.json, not from the command line, so a resume needs them again), else {}. Memory-mapped: nothing big is read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            ckpt = torch.load(os.path.join(out_dir, 'ckpt.pt'), map_location='cpu', weights_only=True, mmap=True)
        started = str(ckpt['parent']['path']) if isinstance(ckpt.get('parent'), dict) else ''
        return dict(ckpt['model_args']) if started.startswith('hf:') else {}
    except Exception:  # none there, or not readable: start_of_run says what is wrong
        return {}


def batches_identity(batches, processes):
    """What decides a run's batches besides its config (the checkpoint's `batches`): the data, as a fingerprint of its
    meta.json and each shard's name and size (a folder rebuilt with other options differs), and the process count."""
    shards = {split: [(os.path.basename(p), len(t)) for p, t in zip(batches.files[split], batches.shards[split])]
              for split in ('train', 'val')}
    data = hashlib.sha256(json.dumps([batches.meta, shards], sort_keys=True, default=str).encode()).hexdigest()[:16]
    return {'data': data, 'processes': processes}


BATCH_SETTINGS = ('data_dir', 'task', 'task_frac', *TASK_KNOBS, 'batch_size',
                  'gradient_accumulation_steps')  # with the data and the process count: what a batch is


def start_of_run(s, model_args, device, identity=None):
    """What a training run with settings s starts from, checked: (checkpoint to resume or None, parent checkpoint
    or None, parent: the record of the run it started from, kept in every checkpoint, what a resume changed in its
    batches: [] unless resume_other_batches allowed it). Exits with one line where it cannot start: nothing to resume,
    a resume with other settings or on other batches (identity: batches_identity), a new run over an existing checkpoint."""
    init_from, out_dir = s['init_from'], s['out_dir']
    ckpt_path = os.path.join(out_dir, 'ckpt.pt')
    if init_from == 'resume':
        if not os.path.exists(ckpt_path):
            die(f"init_from='resume' but there is no checkpoint at {ckpt_path}: check out_dir or start with init_from='scratch'")
        try:
            resume, _ = read_checkpoint(ckpt_path, device)
        except ValueError as e:
            die(e)
        missing = [k for k in ('optimizer', 'scaler', 'iter_num', 'best_val_loss', 'rng_cpu') if k not in resume]
        if missing:
            die(f"{ckpt_path} holds weights but not the training state to resume ({', '.join(missing)}): "
                "evaluate it, or start a new run in another out_dir")
        differ = {k: (v, model_args.get(k)) for k, v in resume['model_args'].items() if model_args.get(k) != v}
        old = {**resume['config'], **task_settings(resume['config'])}  # a run from before `task` in today's terms
        for k, default in (('seed', s['seed']), ('trainable', '')):  # another trainable: another optimizer
            if old.get(k, default) != s[k]:
                differ[k] = (old.get(k, default), s[k])
        if differ:
            k, (was, now) = next(iter(differ.items()))
            die(f"{ckpt_path} was trained with {k}={was!r} but this config says {k}={now!r} ({len(differ)} setting(s) differ): "
                "resume with the same config file and overrides, or use another out_dir")
        was = resume.get('batches') or {}  # absent in checkpoints from before it was recorded
        other = [f"{k}={old[k]!r}, now {s[k]!r}" for k in BATCH_SETTINGS if k in old and old[k] != s[k]
                 and not (k == 'data_dir' and (os.path.realpath(old[k]) == os.path.realpath(s[k]) or  # moved, same data
                                               was.get('data') == (identity or {}).get('data')))]
        if was.get('data') and identity and was['data'] != identity['data']:
            other.append(f"the data in {s['data_dir']} (its meta.json or shards changed since)")
        if was.get('processes') and identity and was['processes'] != identity['processes']:
            other.append(f"{was['processes']} processes, now {identity['processes']}")
        if other and not s.get('resume_other_batches'):
            die(f"{ckpt_path} cannot resume exactly: its batches would differ ({'; '.join(other)}): resume with the data, "
                "settings and process count it was trained with, or pass --resume_other_batches=True to go on anyway (logged)")
        return resume, None, resume.get('parent'), other
    if not s['overwrite'] and os.path.exists(ckpt_path):
        die(f"{out_dir} already holds a checkpoint ({ckpt_path}): continue it with --init_from=resume, "
            "use another out_dir, or pass --overwrite=True to replace it")
    if init_from == 'scratch':
        return None, None, None, []
    try:  # a new run on another run's weights; optimizer and iteration start afresh
        ckpt, path = read_checkpoint(init_from, device)
    except (FileNotFoundError, ValueError) as e:
        die(f"init_from: {e}")
    if os.path.realpath(path) == os.path.realpath(ckpt_path):
        die(f"init_from={init_from} is this run's own checkpoint: continue it with init_from='resume', or use another out_dir")
    return None, ckpt, {'path': path if path.startswith('hf:') else os.path.abspath(path), 'iter_num': ckpt.get('iter_num'),
                        'model_args': ckpt['model_args'], 'config': ckpt['config'], 'parent': ckpt.get('parent')}, []


def restore_training_state(model, optimizer, scaler, ckpt, path, device_type):
    """Weights, optimizer, scaler and RNG of a checkpoint being resumed: it goes on as if never stopped."""
    try:
        model.load_state_dict(ckpt['model'])
        optimizer.load_state_dict(ckpt['optimizer'])
        scaler.load_state_dict(ckpt['scaler'])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        die(f"{path}: its weights or optimizer state do not fit its model settings ({type(e).__name__}): it comes "
            "from another version of the code; evaluate it, or start a new run in another out_dir")
    torch.set_rng_state(ckpt['rng_cpu'].cpu())  # dropout continues as if never stopped
    if device_type == 'cuda' and ckpt.get('rng_cuda') is not None:
        torch.cuda.set_rng_state(ckpt['rng_cuda'].cpu())


class RunDir:
    """A training run's out_dir: its checkpoint, its log.jsonl, its lock, and what stays there when a run
    ends early (kept())."""

    def __init__(self, out_dir, saved_iter=None):
        self.out_dir, self.saved_iter = out_dir, saved_iter  # saved_iter: the iteration in ckpt.pt, if any
        self.ckpt_path, self.log_path = os.path.join(out_dir, 'ckpt.pt'), os.path.join(out_dir, 'log.jsonl')
        self.wandb = None  # a wandb run (start_wandb) that gets every log record too

    def kept(self):
        """What is in out_dir now, for the one line that ends a run early."""
        if self.saved_iter is None:
            return "no checkpoint was written yet"
        return f"the last checkpoint {self.ckpt_path} (iter {self.saved_iter}) is intact; continue it with --init_from=resume"

    def lock(self):
        """Create out_dir and hold its lock while this process lives (the OS drops it when we die): one run per
        out_dir. Exits with one line if another run holds it or the folder cannot be written."""
        try:
            os.makedirs(self.out_dir, exist_ok=True)
            self.lock_file = open(os.path.join(self.out_dir, 'train.lock'), 'a+')
        except OSError as e:
            die(f"cannot write to out_dir {self.out_dir} ({e.strerror}): choose a folder you can write to")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock_file.seek(0)
            die(f"{self.out_dir} is in use by another training run (pid {self.lock_file.read().strip() or '?'}): "
                "wait for it to end, or use another out_dir")
        self.lock_file.seek(0)
        self.lock_file.truncate()
        self.lock_file.write(f"{os.getpid()}\n")
        self.lock_file.flush()

    def start_log(self, resume_iter, evaluates_again):
        """A new run (resume_iter None) starts afresh: an earlier checkpoint and log go (a log without a
        checkpoint is of a run that can no longer resume). A resume keeps each iteration once: it drops what a
        killed run logged past its checkpoint (and that checkpoint's evaluation, if it comes again)."""
        if resume_iter is None:
            for path in (self.ckpt_path, self.log_path):
                if os.path.exists(path):
                    os.remove(path)
                    print(f"removed the earlier {path}" + (" (overwrite=True)" if path == self.ckpt_path else ''))
            return
        if not os.path.exists(self.log_path):
            return
        keep = []
        for line in open(self.log_path):
            try:
                r = json.loads(line)
            except ValueError:  # a line torn by the kill
                continue
            it = r.get('iter', -1) if isinstance(r, dict) else -1
            if it < resume_iter or (it == resume_iter and not ('val_loss' in r and evaluates_again)):
                keep.append(line if line.endswith('\n') else line + '\n')
        try:
            with open(self.log_path + '.tmp', 'w') as f:
                f.writelines(keep)
            os.replace(self.log_path + '.tmp', self.log_path)
        except OSError as e:  # a full disk: the old log and the checkpoint stay as they were
            if os.path.exists(self.log_path + '.tmp'):
                os.remove(self.log_path + '.tmp')
            self.cannot_write(self.log_path, e)

    def cannot_write(self, path, e):
        die(f"could not write {path} ({write_reason(e, self.out_dir)}): {self.kept()}")

    def log(self, record):
        try:
            with open(self.log_path, 'a') as f:
                f.write(json.dumps(record) + '\n')
        except OSError as e:  # a full disk, a vanished out_dir
            self.cannot_write(self.log_path, e)
        if self.wandb:
            try:
                self.wandb.log(record, step=record['iter'])
            except Exception as e:  # a tracking service never stops training
                print(f"warning: wandb logging stopped ({type(e).__name__}: {str(e)[:100]}); log.jsonl goes on")
                self.wandb = None

    def save(self, model, ckpt):
        """Save ckpt (the format above) atomically, never over good work with a non-finite weight."""
        for name, p in model.named_parameters():  # cheap next to the write
            if not torch.isfinite(p).all():
                die(f"weight {name} is not finite at iter {ckpt['iter_num']}: not saved; {self.kept()}")
        try:
            save_checkpoint(ckpt, self.ckpt_path)
        except (OSError, RuntimeError) as e:  # a full disk: torch reports it as a RuntimeError
            self.cannot_write(self.ckpt_path, e)
        self.saved_iter = ckpt['iter_num']


def start_wandb(project, name, config, out_dir):
    """A wandb run (its files under out_dir/wandb), or None with one warning where wandb is missing or cannot start:
    experiment tracking never stops a training run."""
    try:
        import wandb
        return wandb.init(project=project, name=name, config=config, dir=out_dir)
    except Exception as e:  # not installed, no API key, service unreachable, ...
        print(f"warning: wandb logging is off ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}); "
              "log.jsonl has every record")
        return None


def write_reason(e, folder):
    """Why a write failed, for one line: the OS's reason and the free space left."""
    os_error = e if isinstance(e, OSError) else e.__context__  # torch's writer raises a RuntimeError over the OSError
    reason = os_error.strerror if isinstance(os_error, OSError) and os_error.strerror else type(e).__name__
    try:
        return f"{reason}, {shutil.disk_usage(folder).free / 2**20:,.0f} MiB free there"
    except OSError:
        return reason


def out_folder(out):
    """Create an evaluation's --out folder and check now, not after the evaluation, that files can be written
    there (a read-only mount, a file in the way, no permission). Exits with one line if not."""
    probe = os.path.join(out, f".write-test-{os.getpid()}")
    try:
        os.makedirs(out, exist_ok=True)
        with open(probe, 'w'):
            pass
        os.remove(probe)
    except OSError as e:
        die(f"cannot write --out {out} ({e.strerror}): choose a folder you can write to")


def replace_file(path, write):
    """Write path whole or not at all: write(tmp) fills a temporary file beside it (with path's extension, so
    matplotlib knows the format), which then replaces path. Raises OSError; nothing half-written stays."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp-{os.getpid()}{ext}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_results(files, out, kept):
    """Write the files [(path, write(tmp_path))] of a finished evaluation (write: e.g. partial(write_text, text)),
    each through replace_file, AFTER its results were printed: a write error (a full disk, a read-only mount)
    is one line naming the file and saying what is `kept` (the results printed above)."""
    for path, write in files:
        try:
            replace_file(path, write)
        except OSError as e:
            die(f"could not write {path} ({write_reason(e, out)}): {kept}; free some space or pass another --out "
                "to have the files")


def write_text(text, path):
    with open(path, 'w', encoding='utf-8') as f:  # tables hold '·', tokenizer files any character
        f.write(text)


def train_step(model, optimizer, scaler, micro_batches, ctx, grad_clip):
    """One optimizer step over the micro-batches [(x, y, pos)], gradients accumulated (under DDP synced on
    the last only). Returns the mean loss as a device tensor: no host sync, so the GPU never waits on us."""
    n = len(micro_batches)
    loss_sum = 0.0
    for i, (x, y, pos) in enumerate(micro_batches):
        if hasattr(model, 'require_backward_grad_sync'):  # DDP: all-reduce the gradients once, at the end
            model.require_backward_grad_sync = (i == n - 1)
        with ctx:
            _, loss = model(x, y, pos=pos)
            loss = loss / n
        loss_sum += loss.detach()
        scaler.scale(loss).backward()
    if grad_clip != 0.0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum


def learning_rate_at(it, learning_rate, warmup_iters, decay_iters, min_lr):
    """Linear warmup, then cosine down to min_lr at decay_iters, then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / max(1, decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def signal_name(signum):
    return 'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name
