"""Bad input and faults, made as a careless or hostile user makes them (issue 11). Every case of
test_bad_input: ONE line on stderr naming the problem, exit != 0, no traceback, and no file changed
outside the run's own output. Then the behaviours behind them: a NaN stops training and keeps the
last good checkpoint, init_from='scratch' does not overwrite, one run per out_dir (a killed run's
lock is not stuck), Ctrl-C and a full disk keep the checkpoint, a malicious checkpoint runs nothing,
prepare.py only ever replaces its own folder.

The scripts run as real processes, forked from a server that imported torch once (multiprocessing's
forkserver): ~0.2 s a case instead of ~2 s for a fresh interpreter, so ~100 cases stay cheap."""
import fcntl
import json
import math
import multiprocessing
import os
import resource
import runpy
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import core
import data
from data import write_shard
from test_prepare import prepare_main

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=8', '--compile=False',
        '--device=cpu', '--eval_iters=2', '--warmup_iters=2', '--learning_rate=3e-3']


# -----------------------------------------------------------------------------
# running a script: a forked process with its own stdout/stderr files, exit status and cwd

def _child(script, args, cwd, out, err, fsize):
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.chdir(cwd)
    torch.set_num_threads(1)
    if fsize:  # no file may grow past fsize bytes: a full disk, as the writer sees it
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    sys.argv = [script, *args]
    runpy.run_path(script, run_name='__main__')  # SystemExit('error: ...') -> that line on stderr, exit 1


_server = None


def start(argv, cwd, fsize=0):
    """Start `script args...` (a path relative to the repo) in cwd; returns the running process."""
    global _server
    if _server is None:
        _server = multiprocessing.get_context('forkserver')
        _server.set_forkserver_preload(['torch', 'torch._dynamo', 'numpy', 'model', 'configurator', 'core', 'data', 'evaluation',
                                        'datasets', 'tqdm', _child.__module__])
    cwd = Path(cwd)
    cwd.mkdir(parents=True, exist_ok=True)
    out, err = cwd.parent / f'{cwd.name}.stdout', cwd.parent / f'{cwd.name}.stderr'
    p = _server.Process(target=_child, args=(str(ROOT / argv[0]), [str(a) for a in argv[1:]], str(cwd), str(out),
                                             str(err), fsize))
    p.start()
    p.out_path, p.err_path = out, err
    return p


class Result:
    def __init__(self, p):
        self.returncode = p.exitcode
        self.stdout, self.stderr = p.out_path.read_text(), p.err_path.read_text()


def finish(p, timeout=120):
    p.join(timeout)
    if p.exitcode is None:
        p.kill()
        p.join()
        raise AssertionError(f"timed out:\n{p.err_path.read_text()[-2000:]}")
    return Result(p)


def run(argv, cwd, fsize=0):
    return finish(start(argv, cwd, fsize))


def one_line_error(r, *words):
    """A user error: exit != 0, no traceback, stderr is one 'error:' line naming the problem."""
    assert r.returncode not in (0, None), r.stderr
    assert 'Traceback' not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    for w in words:
        assert w in lines[0], f"{w!r} not in: {lines[0]}"
    assert 're-train' not in lines[0]  # never advise throwing away a file that may be fine
    return lines[0]


def snapshot(*roots):
    """path -> (size, mtime, mode) of every file and folder under roots (their contents, not the folders' times)."""
    out = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                p = os.path.join(folder, name)
                st = os.lstat(p)
                out[p] = ('dir', st.st_mode) if name in dirs else (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def changed(before, after, allowed=()):
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p)
                  and not any(p == a or p.startswith(a + os.sep) for a in map(str, allowed)))


# -----------------------------------------------------------------------------
# shared, read-only inputs: a byte corpus, a trained checkpoint, broken copies of both

def byte_corpus(d, val_first=(), train_extra=()):
    rng = np.random.default_rng(0)
    words = [w.encode() for w in 'the king is dead long live queen my lord speak no more of this'.split()]
    def doc(n):
        return [256] + list(b' '.join(words[i] for i in rng.integers(0, len(words), n)))
    d.mkdir(parents=True, exist_ok=True)
    write_shard(str(d / 'val_000000.bin'), list(val_first) + [t for _ in range(6) for t in doc(100)], 320)
    write_shard(str(d / 'train_000001.bin'), [t for _ in range(20) for t in doc(100)] + list(train_extra), 320)
    (d / 'meta.json').write_text(json.dumps({'tokenizer': 'byte', 'vocab_size': 257, 'eot': 256}))
    return d


class Evil:
    """Unpickling this creates a file: what a hostile checkpoint would do with os.system."""
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, 'w')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp('inputs')
    e = {'root': root, 'data': byte_corpus(root / 'data')}
    # one real checkpoint (4 iterations), then broken copies of it
    e['ckpt'] = root / 'run'
    finish(start(['train.py', *TINY, f"--data_dir={e['data']}", f"--out_dir={e['ckpt']}", '--max_iters=4',
                  '--eval_interval=4'], root / 'work'))
    good = e['ckpt'] / 'ckpt.pt'
    ck = torch.load(good, weights_only=True)
    assert ck['iter_num'] == 4
    for name, make in (('truncated', lambda p: p.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])),
                       ('foreign', lambda p: p.write_bytes(b'\x00\x01 not a checkpoint at all' * 40)),
                       ('no_model_args', lambda p: torch.save({'weights': {'w': torch.zeros(2)}}, p)),
                       ('weights_only', lambda p: torch.save({'model': ck['model'], 'model_args': ck['model_args']}, p)),
                       ('nan', lambda p: torch.save({**ck, 'model': {k: v * float('nan') if v.is_floating_point() else v
                                                                      for k, v in ck['model'].items()}}, p)),
                       ('reshaped', lambda p: torch.save({**ck, 'model_args': {**ck['model_args'], 'n_embd': 64}}, p)),
                       ('renamed', lambda p: torch.save({**ck, 'model': {k.replace('c_attn', 'qkv'): v
                                                                         for k, v in ck['model'].items()}}, p)),
                       ('evil', lambda p: torch.save({**ck, 'model_args': Evil(root / 'PWNED')}, p)),
                       ('extra_weight', lambda p: torch.save({**ck, 'model': {**ck['model'], 'extra.weight': torch.zeros(2)}}, p)),
                       ('missing_weight', lambda p: torch.save({**ck, 'model': {k: v for k, v in ck['model'].items()
                                                                                if k != 'transformer.h.0.mlp.c_fc.weight'}}, p))):
        (root / name).mkdir()
        make(root / name / 'ckpt.pt')
    for pe in ('rope', 'learned'):  # parents of other pes, for init_from
        e[pe] = root / pe
        finish(start(['train.py', *TINY, f"--data_dir={e['data']}", f"--out_dir={e[pe]}", f'--pe={pe}', '--max_iters=2',
                      '--eval_interval=2'], root / 'work'))
        assert (e[pe] / 'ckpt.pt').exists()
    e['other_data'] = byte_corpus(root / 'other_data', train_extra=[65] * 200)  # other text: a copy would resume exactly
    e['bad_val'] = byte_corpus(root / 'bad_val', val_first=[300] * 100)  # ids >= the data's 257, where eval reads
    e['bad_train_padded'] = byte_corpus(root / 'bad_train_padded', train_extra=[300] * 20000)
    e['bad_train_big'] = byte_corpus(root / 'bad_train_big', train_extra=[319] * 20000)
    (root / 'bad_train_big' / 'meta.json').write_text(json.dumps({'tokenizer': 'byte'}))  # no vocab_size: ids vs the model's
    (root / 'binary.txt').write_bytes(b'\xff\xfe\x00bad utf-8')
    (root / 'a_file').write_text('not a folder')
    return e


# -----------------------------------------------------------------------------
# the cases: (id, argv with {placeholders}, words the error must contain, setup(ctx) or None, outputs it may write)

def meta_json(text):
    def setup(c):
        d = byte_corpus(c['tmp'] / 'data')
        (d / 'meta.json').write_text(text)
    return setup


def config_file(text):
    def setup(c):
        (c['tmp'] / 'conf.py').write_text(text)
    return setup


def copy_run(c):
    (c['tmp'] / 'out').mkdir()
    (c['tmp'] / 'out' / 'ckpt.pt').write_bytes((c['ckpt'] / 'ckpt.pt').read_bytes())


def copy_ckpt(name):
    def setup(c):
        (c['tmp'] / 'out').mkdir()
        (c['tmp'] / 'out' / 'ckpt.pt').write_bytes((c['root'] / name / 'ckpt.pt').read_bytes())
    return setup


def hold_lock(c):
    """Another live process holds out_dir's lock (this test process: a pid that is certainly alive)."""
    copy_run(c)
    f = open(c['tmp'] / 'out' / 'train.lock', 'a+')
    f.write(f"{os.getpid()}\n")
    f.flush()
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return f


def unreadable(c):
    copy_run(c)
    os.chmod(c['tmp'] / 'out' / 'ckpt.pt', 0)


def jsonl(rows):
    def setup(c):
        (c['tmp'] / 'ds').mkdir()
        (c['tmp'] / 'ds' / 'docs.jsonl').write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in rows))
    return setup


def user_folder(c):
    (c['tmp'] / 'work' / 'important').mkdir(parents=True, exist_ok=True)
    (c['tmp'] / 'work' / 'important' / 'thesis.txt').write_text('years of work')
    jsonl([{'text': 'hello world'}] * 20)(c)


def prepared_output(extra):
    def setup(c):
        jsonl([{'text': 'hello world'}] * 20)(c)
        out = c['tmp'] / 'work' / 'o'
        out.mkdir(parents=True)
        meta = {**{k: None for k in data.SETTINGS}, 'tokenizer': 'byte'}
        meta['splits'] = {'val': {'documents': 1, 'tokens': 3, 'shards': ['val_000000.bin']}}
        (out / 'meta.json').write_text(json.dumps(meta))
        write_shard(str(out / 'val_000000.bin'), [1, 2, 3], 257)
        extra(out)
    return setup


def link_out(kind):
    def setup(c):
        jsonl([{'text': 'hello world'}] * 20)(c)
        target = c['root'] / 'binary.txt' if kind == 'file' else c['root'] / 'data'
        (c['tmp'] / 'ds' / ('host.txt' if kind == 'file' else 'elsewhere')).symlink_to(target)
    return setup


def live_tmp(c):
    """A prepare.py with a live pid (this test process) is writing the same out_dir."""
    jsonl([{'text': 'hello world'}] * 20)(c)
    (c['tmp'] / 'work' / f'o.tmp-{os.getpid()}').mkdir(parents=True)


TRAIN = ['train.py', *TINY, '--data_dir={data}', '--out_dir={tmp}/out', '--max_iters=2']
RESUME = [*TRAIN, '--init_from=resume', '--max_iters=6']
EVAL = ['eval.py', '--ckpt', '{ckpt}', '--ev', '1', '--windows', '1', '--out', '{tmp}/ev', '--device', 'cpu']
SAMPLE = ['sample.py', '--ckpt', '{ckpt}', '--max_new_tokens', '4', '--num_samples', '1', '--device', 'cpu']
TASKS = ['eval_tasks.py', '--ckpt', '{ckpt}', '--ev', '1', '--keys', '1', '--depths', '0', '--out', '{tmp}/t', '--device', 'cpu']
BENCH = ['bench.py', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--vocab_size=64', '--batch_size=2',
         '--warmup=1', '--repeats=1', '--device=cpu', '--pes=rope']
PREP = ['prepare.py', '--dataset', '{tmp}/ds', '--tokenizer', 'byte', '--num_proc', '1', '--out_dir', 'o']
ROOT_USER = os.geteuid() == 0
LINUX = sys.platform.startswith('linux')

CASES = [
    # train.py: every setting checked before anything is read or written
    ('train batch_size=0', [*TRAIN, '--batch_size=0'], ['batch_size=0', 'at least 1']),
    ('train batch_size<0', [*TRAIN, '--batch_size=-4'], ['batch_size=-4']),
    ('train block_size=0', [*TRAIN, '--block_size=0'], ['block_size=0']),
    ('train n_head=0', [*TRAIN, '--n_head=0'], ['n_head=0']),
    ('train n_layer=0', [*TRAIN, '--n_layer=0'], ['n_layer=0']),
    ('train n_embd<0', [*TRAIN, '--n_embd=-32'], ['n_embd=-32']),
    ('train n_embd%n_head', [*TRAIN, '--n_embd=30', '--n_head=4'], ['n_embd=30', 'n_head=4']),
    ('train vocab_size<0', [*TRAIN, '--vocab_size=-5'], ['vocab_size=-5']),
    ('train dropout=1', [*TRAIN, '--dropout=1.0'], ['dropout=1.0']),
    ('train pos_scale=0', [*TRAIN, '--pos_scale=0.0'], ['pos_scale=0.0']),
    ('train eval_interval=0', [*TRAIN, '--eval_interval=0'], ['eval_interval=0']),
    ('train log_interval=0', [*TRAIN, '--log_interval=0'], ['log_interval=0']),
    ('train gradient_accumulation_steps=0', [*TRAIN, '--gradient_accumulation_steps=0'], ['gradient_accumulation_steps=0']),
    ('train eval_iters=0', [*TRAIN, '--eval_iters=0'], ['eval_iters=0']),
    ('train max_iters<0', [*TRAIN, '--max_iters=-5'], ['max_iters=-5']),
    ('train warmup_iters<0', [*TRAIN, '--warmup_iters=-1'], ['warmup_iters=-1']),
    ('train seed<0', [*TRAIN, '--seed=-1'], ['seed=-1']),
    ('train learning_rate<0', [*TRAIN, '--learning_rate=-1'], ['learning_rate=-1']),
    ('train learning_rate=0', [*TRAIN, '--learning_rate=0'], ['learning_rate=0']),
    ('train learning_rate=inf', [*TRAIN, '{tmp}/conf.py'], ['learning_rate=inf'], config_file("learning_rate = float('inf')\n")),
    ('train grad_clip=nan', [*TRAIN, '{tmp}/conf.py'], ['grad_clip=nan'], config_file("grad_clip = float('nan')\n")),
    ('train min_lr<0', [*TRAIN, '--min_lr=-1e-4'], ['min_lr=-0.0001']),
    ('train weight_decay<0', [*TRAIN, '--weight_decay=-0.1'], ['weight_decay=-0.1']),
    ('train beta2>1', [*TRAIN, '--beta2=1.5'], ['beta2=1.5']),
    ('train dtype', [*TRAIN, '--dtype=float64'], ["dtype='float64'"]),
    ('train init_from', [*TRAIN, '--init_from=bogus'], ["init_from='bogus'"]),
    ('train overwrite with resume', [*RESUME, '--overwrite=True'], ['overwrite=True', "init_from='scratch'"], copy_run),
    ('train unknown key', [*TRAIN, '--n_layr=3'], ["unknown config key 'n_layr'"]),
    ('train wrong type', [*TRAIN, '--n_layer=two'], ['n_layer must be of type int']),
    ('train key without value', [*TRAIN, '--batch_size'], ['--batch_size', 'needs a value']),
    ('train device=cuda without CUDA', [*TRAIN, '--device=cuda'], ["device='cuda'", '--device=cpu']),
    ('train device unknown', [*TRAIN, '--device=gpu'], ["device='gpu'"]),
    # config files
    ('train config missing', [*TRAIN, '{tmp}/nope.py'], ['config file', 'not found']),
    ('train config syntax error', [*TRAIN, '{tmp}/conf.py'], ['conf.py, line 2', 'config file'],
     config_file("batch_size = 4\nn_layer = = 2\n")),
    ('train config runtime error', [*TRAIN, '{tmp}/conf.py'], ['conf.py, line 1', 'NameError'], config_file("n_layer = two\n")),
    # data
    ('train data missing', [*TRAIN, '--data_dir={tmp}/missing'], ['prepare.py']),
    ('train meta.json not JSON', [*TRAIN, '--data_dir={tmp}/data'], ['meta.json', 'not valid JSON'], meta_json('{"vocab_size": 257,')),
    ('train meta.json a list', [*TRAIN, '--data_dir={tmp}/data'], ['meta.json', 'JSON object'], meta_json('[257]')),
    ('train meta.json vocab_size', [*TRAIN, '--data_dir={tmp}/data'], ['vocab_size', "'many'"], meta_json('{"vocab_size": "many"}')),
    ('train shard truncated', [*TRAIN, '--data_dir={tmp}/data'], ['corrupt shard', 're-run prepare.py'],
     lambda c: (byte_corpus(c['tmp'] / 'data'), os.truncate(c['tmp'] / 'data' / 'train_000001.bin', 3000))),
    ('train token id >= data vocab (fits the padded one)', [*TRAIN, '--data_dir={bad_train_padded}'],
     ['token id 300', 'vocabulary of 257'], None, ['{tmp}/out']),
    ('train token id >= model vocab', [*TRAIN, '--data_dir={bad_train_big}', '--vocab_size=64'], ['token id', 'outside the vocabulary of 64'],
     None, ['{tmp}/out']),
    # out_dir
    ('train out_dir is a file', [*TRAIN, '--out_dir={root}/a_file'], ['a_file', 'not a folder']),
    pytest.param(('train out_dir unwritable', [*TRAIN, '--out_dir=/sys/expe_gpt_test_out'], ['cannot write to out_dir']),
                 marks=pytest.mark.skipif(not LINUX, reason='/sys is read-only on Linux only')),
    ('train out_dir in use', [*RESUME], ['in use by another training run', f'pid {os.getpid()}'], hold_lock),
    ('train scratch over a checkpoint', [*TRAIN], ['already holds a checkpoint', '--overwrite=True', '--init_from=resume'], copy_run),
    # resume
    ('train resume without checkpoint', [*RESUME], ['no checkpoint']),
    ('train resume truncated', [*RESUME], ['truncated', 'copy it again'], copy_ckpt('truncated')),
    ('train resume foreign file', [*RESUME], ['not a PyTorch checkpoint'], copy_ckpt('foreign')),
    ('train resume foreign torch file', [*RESUME], ['not a checkpoint of this project'], copy_ckpt('no_model_args')),
    ('train resume weights only', [*RESUME], ['not the training state', 'optimizer'], copy_ckpt('weights_only')),
    ('train resume other seed', [*RESUME, '--seed=7'], ['seed=1337', 'seed=7'], copy_run),
    ('train resume other data_dir', [*RESUME, '--data_dir={other_data}'], ['data_dir=', 'other_data'], copy_run),
    ('train resume other model', [*RESUME, '--pe=rope'], ["pe='expe'", "pe='rope'"], copy_run),
    ('train resume other weights', [*RESUME], ['do not fit', 'another version'], copy_ckpt('renamed')),
    ('train resume other trainable', [*RESUME, '--trainable=wte'], ["trainable=''", "trainable='wte'"], copy_run),
    # init_from=<run> (a new run on another run's weights) and trainable
    ('train init_from missing', [*TRAIN, '--init_from={tmp}/nowhere'], ["init_from='", 'nowhere', "'scratch', 'resume'"]),
    ('train init_from folder without checkpoint', [*TRAIN, '--init_from={root}/work'], ['init_from', 'no checkpoint at']),
    ('train init_from foreign file', [*TRAIN, '--init_from={root}/foreign'], ['init_from', 'not a PyTorch checkpoint']),
    ('train init_from NaN weights', [*TRAIN, '--init_from={root}/nan'], ['non-finite weights']),
    ('train init_from other n_embd', [*TRAIN, '--init_from={ckpt}', '--n_embd=64'], ['n_embd=64', 'n_embd=32']),
    ('train init_from other n_layer', [*TRAIN, '--init_from={ckpt}', '--n_layer=3'], ['n_layer=3', 'n_layer=2']),
    ('train init_from other vocab_size', [*TRAIN, '--init_from={ckpt}', '--vocab_size=384'], ['vocab_size=384', 'vocab_size=320']),
    ('train init_from expe -> rope', [*TRAIN, '--init_from={ckpt}', '--pe=rope'], ['pe=rope cannot start from', 'pe=expe']),
    ('train init_from rope -> expe', [*TRAIN, '--init_from={rope}', '--pe=expe'], ['pe=expe cannot start from', 'pe=rope', 'tape']),
    ('train init_from learned made longer', [*TRAIN, '--init_from={learned}', '--pe=learned', '--block_size=64'],
     ['pe=learned', 'keep block_size=32']),
    ('train init_from expe longer, step from block_size', [*TRAIN, '--init_from={ckpt}', '--block_size=64'],
     ['set expe_theta=0.015625', 'derives it from block_size']),
    ('train init_from unexpected weight', [*TRAIN, '--init_from={root}/extra_weight'], ['extra.weight is not in this model']),
    ('train init_from missing weight', [*TRAIN, '--init_from={root}/missing_weight'], ['transformer.h.0.mlp.c_fc.weight is missing']),
    ('train init_from its own out_dir', [*TRAIN, '--init_from={tmp}/out', '--overwrite=True'], ["own checkpoint", "init_from='resume'"],
     copy_run),
    ('train init_from over a checkpoint', [*TRAIN, '--init_from={ckpt}'], ['already holds a checkpoint', '--overwrite=True'], copy_run),
    ('train trainable unknown', [*TRAIN, '--trainable=pe,bogus'], ["trainable='pe,bogus'", 'wte', 'norm']),
    ('train trainable selects nothing', [*TRAIN, '--pe=rope', '--trainable=pe'], ['selects no parameter', 'pe=rope']),
    ('train rope_base<1 (a check of the pe itself)', [*TRAIN, '--pe=rope', '--rope_base=0.5'], ['rope_base=0.5']),
    ('train rope_scaling unknown', [*TRAIN, '--pe=rope', '--rope_scaling=linear'], ["rope_scaling='linear'", 'pos_scale']),
    ('train rope_scaling=yarn without rope_original', [*TRAIN, '--pe=rope', '--rope_scaling=yarn', '--rope_factor=2'],
     ['needs rope_original']),
    ('train rope_factor without rope_scaling', [*TRAIN, '--pe=rope', '--rope_factor=2'], ['rope_factor=2.0', 'does nothing']),
    ('train rope_scaling on expe', [*TRAIN, '--rope_scaling=ntk'], ["rope_scaling='ntk' only applies to pe=rope"]),
    # eval.py
    ('eval scale=0', [*EVAL, '--scale', '0'], ['--scale 0.0', '> 0']),
    ('eval scale<0', [*EVAL, '--scale', '-1'], ['--scale -1.0']),
    ('eval scale=nan', [*EVAL, '--scale', 'nan'], ['--scale nan']),
    ('eval scale=inf', [*EVAL, '--scale', 'inf'], ['--scale inf']),
    ('eval batch-tokens=0', [*EVAL, '--batch_tokens', '0'], ['--batch_tokens 0']),
    ('eval ev=0', [*EVAL, '--ev', '0'], ['--ev']),
    ('eval device=cuda without CUDA', [*EVAL, '--device', 'cuda'], ["'cuda'", '--device=cpu', 'may be fine']),
    ('eval device unknown', [*EVAL, '--device', 'gpu'], ["'gpu'"]),
    ('eval out is a file', [*EVAL, '--out', '{root}/a_file'], ['cannot write --out']),
    ('eval no checkpoint', [*EVAL, '--ckpt', '{tmp}/none'], ['no checkpoint']),
    ('eval truncated checkpoint', [*EVAL, '--ckpt', '{root}/truncated'], ['truncated', 'copy it again']),
    ('eval foreign file', [*EVAL, '--ckpt', '{root}/foreign'], ['not a PyTorch checkpoint']),
    ('eval foreign torch file', [*EVAL, '--ckpt', '{root}/no_model_args'], ['not a checkpoint of this project']),
    ('eval NaN checkpoint', [*EVAL, '--ckpt', '{root}/nan'], ['non-finite weights', 'earlier checkpoint']),
    ('eval reshaped checkpoint', [*EVAL, '--ckpt', '{root}/reshaped'], ['does not match']),
    pytest.param(('eval unreadable checkpoint', [*EVAL, '--ckpt', '{tmp}/out'], ['Permission denied', 'may be fine'], unreadable),
                 marks=pytest.mark.skipif(ROOT_USER, reason='root reads any file (test_unreadable_checkpoint_says_why covers it)')),
    ('eval token id >= vocab in val', [*EVAL, '--data_dir', '{bad_val}'], ['token id 300', 'vocabulary of 257'], None, ['{tmp}/ev']),
    ('eval set unknown key', [*EVAL, '--set', 'n_layr=3'], ['--set n_layr=3', 'GPTConfig']),
    ('eval set without value', [*EVAL, '--set', 'block_size'], ['--set block_size', 'KEY=VALUE']),
    ('eval set wrong type', [*EVAL, '--set', 'block_size=long'], ['--set block_size=long', 'int']),
    ('eval set a shape', [*EVAL, '--set', 'n_embd=64'], ['n_embd=64', 'n_embd=32']),
    ('eval set another pe', [*EVAL, '--set', 'pe=rope'], ['pe=rope cannot start from']),
    ('eval set block_size of expe', [*EVAL, '--set', 'block_size=64'], ['set expe_theta=0.015625']),
    ('eval set a bad value', [*EVAL, '--set', 'pos_scale=-1'], ['pos_scale=-1']),
    ('eval set and scale', [*EVAL, '--set', 'pos_scale=0.5', '--scale', '0.5'], ['--scale and --set pos_scale']),
    # sample.py
    ('sample temperature<0', [*SAMPLE, '--temperature', '-1'], ['--temperature -1.0']),
    ('sample temperature=nan', [*SAMPLE, '--temperature', 'nan'], ['--temperature nan']),
    ('sample top-k<0', [*SAMPLE, '--top_k', '-5'], ['--top_k -5']),
    ('sample scale=0', [*SAMPLE, '--scale', '0'], ['--scale 0.0']),
    ('sample num-samples=0', [*SAMPLE, '--num_samples', '0'], ['--num_samples']),
    ('sample device=cuda without CUDA', [*SAMPLE, '--device', 'cuda'], ["'cuda'", 'may be fine']),
    ('sample start file missing', [*SAMPLE, '--start', 'FILE:{tmp}/nope.txt'], ['nope.txt', 'No such file']),
    ('sample start file a folder', [*SAMPLE, '--start', 'FILE:{tmp}'], ['Is a directory']),
    ('sample start file not UTF-8', [*SAMPLE, '--start', 'FILE:{root}/binary.txt'], ['decode']),
    ('sample tokenizer bigger than the model', [*SAMPLE, '--tokenizer', 'gpt2'], ["tokenizer 'gpt2'", "vocab_size 320"]),
    ('sample NaN checkpoint', [*SAMPLE, '--ckpt', '{root}/nan'], ['non-finite weights']),
    # eval_tasks.py
    ('tasks key-digits=40', [*TASKS, '--key_digits', '40'], ['--key_digits 40']),
    ('tasks key-digits=0', [*TASKS, '--key_digits', '0'], ['--key_digits']),
    ('tasks scale=nan', [*TASKS, '--scale', 'nan'], ['--scale nan']),
    ('tasks batch-tokens=0', [*TASKS, '--batch_tokens', '0'], ['--batch_tokens']),
    ('tasks seed<0', [*TASKS, '--seed', '-1'], ['--seed']),
    ('tasks depths>1', [*TASKS, '--depths', '50'], ['--depths']),
    ('tasks device=cuda without CUDA', [*TASKS, '--device', 'cuda'], ["'cuda'", 'may be fine']),
    ('tasks NaN checkpoint', [*TASKS, '--ckpt', '{root}/nan'], ['non-finite weights']),
    ('tasks set unknown key', [*TASKS, '--set', 'bogus=1'], ['--set bogus=1']),
    ('tasks set a shape', [*TASKS, '--set', 'n_layer=3'], ['n_layer=3']),
    # bench.py
    ('bench archs=bert', [*BENCH, '--archs=bert'], ["unknown arch 'bert'"]),
    ('bench pes=bogus', [*BENCH, '--pes=bogus'], ["unknown pe 'bogus'"]),
    ('bench repeats=0', [*BENCH, '--repeats=0'], ['repeats=0']),
    ('bench warmup<0', [*BENCH, '--warmup=-1'], ['warmup=-1']),
    ('bench batch_size=0', [*BENCH, '--batch_size=0'], ['batch_size=0']),
    ('bench evs=0', [*BENCH, '--mode=eval', '--evs=0'], ["evs='0'"]),
    ('bench evs=x', [*BENCH, '--mode=eval', '--evs=1,x'], ["evs='1,x'"]),
    ('bench mode', [*BENCH, '--mode=fast'], ["mode='fast'"]),
    ('bench n_head=0', [*BENCH, '--n_head=0'], ['n_head=0']),
    ('bench dtype', [*BENCH, '--dtype=float64'], ["dtype='float64'"]),
    ('bench device=cuda without CUDA', [*BENCH, '--device=cuda'], ["device='cuda'"]),
    ('bench key without value', [*BENCH, '--repeats'], ['needs a value']),
    ('bench config syntax error', [*BENCH, '{tmp}/conf.py'], ['conf.py, line 1'], config_file("repeats = (\n")),
    # prepare.py: never replaces what it did not make, never follows a link out of the dataset
    ('prepare out-dir a user folder', [*PREP[:-1], 'important'], ['important', "not prepare.py's output"], user_folder),
    ('prepare out-dir .', [*PREP[:-1], '.'], ["--out_dir . exists", "not prepare.py's output"], user_folder),
    ('prepare out-dir a file', [*PREP[:-1], '{root}/a_file'], ['a_file', 'a file, not a folder'], jsonl([{'text': 'x'}])),
    ('prepare out-dir inside the dataset', [*PREP[:-1], '{tmp}/ds/tokens'], ['inside the dataset folder'], jsonl([{'text': 'x'}])),
    ('prepare out-dir holds other files', PREP, ['notes.txt', 'did not write'],
     prepared_output(lambda out: (out / 'notes.txt').write_text('mine'))),
    ('prepare out-dir meta.json not JSON', PREP, ["not prepare.py's output"],
     prepared_output(lambda out: (out / 'meta.json').write_text('{oops'))),
    ('prepare out-dir being written', PREP, ['another prepare.py', f'pid {os.getpid()}'], live_tmp),
    ('prepare file link out of the dataset', PREP, ['host.txt', 'outside the dataset folder'], link_out('file')),
    ('prepare folder link out of the dataset', PREP, ['elsewhere', 'outside the dataset folder'], link_out('folder')),
    ('prepare text not a string', PREP, ["'text' that is int", 'not a string'], jsonl([{'text': 'hi'}, {'text': 5}])),
    ('prepare text null', PREP, ["'text' that is NoneType"], jsonl([{'text': None}])),
    ('prepare jsonl not JSON', PREP, ['JSON parse error'], jsonl([{'text': 'ok'}, '{not json'])),
    ('prepare jsonl without text', PREP, ["need a 'text' field", "'txt'"], jsonl([{'txt': 'ok'}])),
    ('prepare dataset missing', [*PREP[:2], '{tmp}/nope'], ['not found']),
    ('prepare tokenizer unknown', [*PREP[:4], 'bogus', *PREP[5:]], ["unknown tokenizer 'bogus'"], jsonl([{'text': 'x'}])),
    ('prepare shard-tokens=0', [*PREP, '--shard_tokens', '0'], ['--shard_tokens'], jsonl([{'text': 'x'}])),
]


CASES = [c if hasattr(c, 'values') else pytest.param(c) for c in CASES]
CASES = [pytest.param(*c.values, marks=c.marks, id=c.values[0][0]) for c in CASES]


@pytest.mark.parametrize('case', CASES)
def test_bad_input(case, env, tmp_path):
    name, argv, words = case[:3]
    setup, may_write = case[3] if len(case) > 3 else None, case[4] if len(case) > 4 else ()
    ctx = {**env, 'tmp': tmp_path}
    held = setup(ctx) if setup else None
    fill = lambda s: s.format(**ctx)
    (tmp_path / 'work').mkdir(exist_ok=True)
    before = snapshot(tmp_path, env['root'])
    r = run([fill(a) for a in argv], tmp_path / 'work')
    # the work folder is the cwd; its .stdout/.stderr are ours
    assert changed(before, snapshot(tmp_path, env['root']),
                   [tmp_path / 'work.stdout', tmp_path / 'work.stderr', *map(fill, may_write)]) == []
    one_line_error(r, *map(fill, words))
    if hasattr(held, 'close'):
        held.close()


# -----------------------------------------------------------------------------
# --help

def test_help_lists_every_setting(tmp_path):
    r = run(['train.py', '--help'], tmp_path)
    assert r.returncode == 0 and r.stderr == ''
    assert '--batch_size=16' in r.stdout and 'micro-batch per process' in r.stdout  # default and comment
    assert '--overwrite=False' in r.stdout and '--pe=' in r.stdout and 'a name in PES' in r.stdout  # model.py's fields too
    r = run(['bench.py', '-h'], tmp_path)
    assert r.returncode == 0 and "--archs='gpt2'" in r.stdout and 'timed steps' in r.stdout
    for script in ('eval.py', 'sample.py', 'eval_tasks.py', 'prepare.py'):
        r = run([script, '--help'], tmp_path)
        assert r.returncode == 0 and '--' in r.stdout, script


# -----------------------------------------------------------------------------
# training faults

def train(data, out, *args, cwd=None, fsize=0):
    return run(['train.py', *TINY, f'--data_dir={data}', f'--out_dir={out}', *args], cwd or Path(out).parent / 'work',
               fsize=fsize)


def log_of(out):
    """The complete records of log.jsonl (a running writer may be half-way through the last line)."""
    return [json.loads(line) for line in (Path(out) / 'log.jsonl').read_text().split('\n')[:-1]]


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(env, tmp_path):
    out = tmp_path / 'out'
    assert train(env['data'], out, '--max_iters=4', '--eval_interval=4').returncode == 0
    good = (out / 'ckpt.pt').read_bytes()
    # a diverging learning rate, resumed from the good checkpoint: it would save NaN weights at iter 8
    r = train(env['data'], out, '--init_from=resume', '--max_iters=8', '--eval_interval=4', '--log_interval=1',
              '--learning_rate=1e9', '--grad_clip=0')
    line = one_line_error(r, 'not finite at iter', 'iter 4) is intact')
    bad = int(line.split('not finite at iter ')[1].split(':')[0])
    assert 4 < bad <= 8
    assert (out / 'ckpt.pt').read_bytes() == good and not (out / 'ckpt.pt.tmp').exists()
    records = log_of(out)
    assert all(math.isfinite(v) for r in records for v in r.values() if isinstance(v, float))
    assert max(r['iter'] for r in records) < bad
    # from scratch: nothing is saved at all
    r = train(env['data'], tmp_path / 'fresh', '--max_iters=8', '--eval_interval=4', '--learning_rate=1e9', '--grad_clip=0',
              '--warmup_iters=0', '--log_interval=1')
    one_line_error(r, 'not finite', 'no checkpoint was written yet')
    assert not (tmp_path / 'fresh' / 'ckpt.pt').exists()


def test_scratch_refuses_to_overwrite_a_checkpoint(env, tmp_path):
    out = tmp_path / 'out'
    assert train(env['data'], out, '--max_iters=6', '--eval_interval=3').returncode == 0
    before = snapshot(out)
    one_line_error(train(env['data'], out, '--max_iters=2', '--eval_interval=2'), 'already holds a checkpoint', '--overwrite=True')
    assert snapshot(out) == before
    r = train(env['data'], out, '--max_iters=2', '--eval_interval=2', '--overwrite=True')
    assert r.returncode == 0, r.stderr
    assert torch.load(out / 'ckpt.pt', weights_only=True)['iter_num'] == 2
    assert [r['iter'] for r in log_of(out) if 'val_loss' in r] == [0, 2]  # the old run's log went with its checkpoint
    # a log with no checkpoint (a run killed before its first save) is started afresh, not appended to
    (out / 'ckpt.pt').unlink()
    r = train(env['data'], out, '--max_iters=2', '--eval_interval=2')
    assert r.returncode == 0 and 'removed the earlier' in r.stdout
    assert [r['iter'] for r in log_of(out) if 'val_loss' in r] == [0, 2]


def test_one_run_per_out_dir_and_a_killed_run_leaves_no_stuck_lock(env, tmp_path):
    out = tmp_path / 'out'
    a = start(['train.py', *TINY, f"--data_dir={env['data']}", f'--out_dir={out}', '--max_iters=100000',
               '--eval_interval=5', '--log_interval=1'], tmp_path / 'a')
    deadline = time.time() + 60
    while not ((out / 'log.jsonl').exists() and any(r.get('iter', 0) > 11 for r in log_of(out))):
        assert time.time() < deadline and a.is_alive(), a.err_path.read_text()
        time.sleep(0.05)
    # a second run on the same out_dir, resume or scratch, is refused while the first one runs
    for extra in (['--init_from=resume'], ['--overwrite=True']):
        r = train(env['data'], out, '--max_iters=100', *extra, cwd=tmp_path / 'b')
        one_line_error(r, 'in use by another training run', f'pid {a.pid}')
    os.kill(a.pid, signal.SIGKILL)
    a.join()
    assert (out / 'train.lock').exists()  # left behind by the killed run: it must not block the next one
    saved = torch.load(out / 'ckpt.pt', weights_only=True)['iter_num']
    with open(out / 'log.jsonl', 'a') as f:  # what a run killed past its checkpoint leaves, torn last line included
        f.write(''.join(json.dumps({'iter': saved + i, 'loss': 123.0}) + '\n' for i in (1, 2, 3)) + '{"iter": ')
    r = train(env['data'], out, '--init_from=resume', f'--max_iters={saved + 7}', '--eval_interval=5', '--log_interval=1',
              cwd=tmp_path / 'c')
    assert r.returncode == 0, r.stderr
    # log.jsonl holds each iteration once: the killed run's records past its checkpoint are gone
    steps = [r['iter'] for r in log_of(out) if 'loss' in r]
    evals = [r['iter'] for r in log_of(out) if 'val_loss' in r]
    assert steps == list(range(1, saved + 8))
    assert evals == list(range(0, saved + 6, 5)) + [saved + 7]
    assert all(r.get('loss') != 123.0 for r in log_of(out))


@pytest.mark.parametrize('sig,name', [(signal.SIGINT, 'Ctrl-C'), (signal.SIGTERM, 'SIGTERM')])
def test_ctrl_c_stops_with_one_line_and_an_intact_checkpoint(env, tmp_path, sig, name):
    out = tmp_path / 'out'
    p = start(['train.py', *TINY, f"--data_dir={env['data']}", f'--out_dir={out}', '--max_iters=100000',
               '--eval_interval=5', '--log_interval=1'], tmp_path / 'a')
    deadline = time.time() + 60
    while not ((out / 'ckpt.pt').exists() and any(r.get('iter', 0) > 6 for r in log_of(out))):
        assert time.time() < deadline and p.is_alive(), p.err_path.read_text()
        time.sleep(0.05)
    os.kill(p.pid, sig)  # SIGTERM: what a cluster scheduler sends before it kills a job
    r = finish(p)
    one_line_error(r, f'interrupted ({name})', 'is intact', '--init_from=resume')
    model, ckpt = core.load_checkpoint(str(out))
    assert ckpt['iter_num'] % 5 == 0 and ckpt['iter_num'] >= 5 and not (out / 'ckpt.pt.tmp').exists()


def test_full_disk_keeps_the_last_checkpoint(env, tmp_path):
    out = tmp_path / 'out'
    assert train(env['data'], out, '--max_iters=4', '--eval_interval=4').returncode == 0
    good = (out / 'ckpt.pt').read_bytes()
    # files may not grow past a third of a checkpoint: the next save fails half-way, like on a full disk
    r = train(env['data'], out, '--init_from=resume', '--max_iters=8', '--eval_interval=4', fsize=len(good) // 3)
    one_line_error(r, f"could not write {out / 'ckpt.pt'}", 'File too large', 'iter 4) is intact')
    assert (out / 'ckpt.pt').read_bytes() == good and not (out / 'ckpt.pt.tmp').exists()


# -----------------------------------------------------------------------------
# a checkpoint that would run code when unpickled

def test_malicious_checkpoint_is_refused_and_runs_nothing(env, tmp_path):
    marker = tmp_path / 'PWNED'
    evil = tmp_path / 'evil'
    evil.mkdir()
    torch.save({'model': {}, 'model_args': Evil(marker)}, evil / 'ckpt.pt')
    torch.load(evil / 'ckpt.pt', weights_only=False)  # the payload is live: the old loader ran it
    assert marker.exists()
    marker.unlink()
    out = tmp_path / 'out'  # train.py resume
    out.mkdir()
    (out / 'ckpt.pt').write_bytes((evil / 'ckpt.pt').read_bytes())
    for argv in (['eval.py', '--ckpt', evil, '--device', 'cpu', '--out', tmp_path / 'ev'],
                 ['sample.py', '--ckpt', evil, '--device', 'cpu'],
                 ['eval_tasks.py', '--ckpt', evil, '--device', 'cpu', '--out', tmp_path / 'ev'],
                 ['train.py', *TINY, f"--data_dir={env['data']}", f'--out_dir={out}', '--init_from=resume']):
        one_line_error(run(argv, tmp_path / 'work'), 'refused to load', 'could run code', 'io.open')
        assert not marker.exists(), argv[0]
    with pytest.raises(ValueError, match='refused'):
        core.load_checkpoint(str(env['root'] / 'evil'))
    assert not (env['root'] / 'PWNED').exists()


def test_unreadable_checkpoint_says_why(env, monkeypatch):
    def no_permission(*args, **kwargs):
        raise PermissionError(13, 'Permission denied')
    monkeypatch.setattr(core, 'open', no_permission, raising=False)  # as if chmod 000 (root would read it anyway)
    with pytest.raises(ValueError, match='Permission denied.*may be fine') as e:
        core.load_checkpoint(str(env['ckpt']))
    assert 're-train' not in str(e.value)


# -----------------------------------------------------------------------------
# prepare.py: its output folder, its leftovers, its up-to-date check (in-process: no torch, fast)

def prep(out_dir, *args):
    """prepare.py in this process, as `python prepare.py ...` runs it: an error is SystemExit('error: ...')."""
    prepare_main(['--max_tokens', '500000', '--num_proc', '1', '--out_dir', out_dir, *args])


def test_prepare_replaces_only_its_own_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / 'mine'
    mine.mkdir()
    (mine / 'thesis.txt').write_text('years of work')
    (tmp_path / 'notes.txt').write_text('keep me')
    for target in (mine, '.', tmp_path):
        with pytest.raises(SystemExit, match="error: --out_dir .* not prepare.py's output"):
            prep(target)
    assert (mine / 'thesis.txt').read_text() == 'years of work' and (tmp_path / 'notes.txt').read_text() == 'keep me'
    # its own output is replaced when the settings change, kept when they do not
    out = tmp_path / 'tok'
    prep(out)
    prep(out)
    assert 'up to date' in capsys.readouterr().out
    prep(out, '--max_tokens', 600000)
    assert data.load_meta(str(out))['max_tokens'] == 600000
    # an empty folder holds nothing to lose
    (tmp_path / 'empty').mkdir()
    prep(tmp_path / 'empty')
    assert data.load_meta(str(tmp_path / 'empty'))['tokenizer'] == 'byte'


def test_prepare_rebuilds_a_damaged_output_and_removes_a_killed_runs_leftovers(tmp_path, capsys):
    out = tmp_path / 'tok'
    prep(out)
    val = out / 'val_000000.bin'
    good = val.read_bytes()
    val.write_bytes(good[:-100])  # truncated after the fact
    capsys.readouterr()
    prep(out)
    printed = capsys.readouterr().out
    assert 'up to date' not in printed and 'rebuilding' in printed and val.read_bytes() == good
    # a killed run's temporary folder (its pid is gone) is removed; one that is not prepare.py's is left alone
    dead = tmp_path / 'tok.tmp-999999999'
    dead.mkdir()
    (dead / 'train_000001.bin').write_bytes(b'half')
    (dead / data.TMP_MARK).write_text('999999999')  # what every prepare.py writes first into its temporary folder
    foreign = tmp_path / 'tok.tmp-999999998'
    foreign.mkdir()
    (foreign / 'photo.jpg').write_bytes(b'mine')
    prep(out)
    assert not dead.exists() and (foreign / 'photo.jpg').exists()
    assert 'removed' in capsys.readouterr().out
