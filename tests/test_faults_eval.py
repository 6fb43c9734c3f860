"""Faults a real run meets, on the evaluation side (issue 24): a run evaluated from another folder, a late
write error, an absurd --scale, a device out of memory, a converted checkpoint, a device this machine
lacks, duplicate or unknown settings, a checkpoint scored on another tokenizer's data. Each ends in a
result or in ONE 'error:' line naming the problem and the fix (test_bad_input's contract), never in a
traceback, a lost result or a silent wrong answer.

The scripts run as real processes through test_bad_input's forkserver (torch imported once)."""
import json
import multiprocessing
import os
import re
import subprocess
import sys

import pytest
import torch

import core
import test_bad_input as tb
from data import write_shard
from model import GPT, PES, GPTConfig
from test_bad_input import LINUX, ROOT, TINY, byte_corpus, finish, one_line_error, run

NAME = f'data/faults_eval_byte_corpus_{os.getpid()}'  # relative, as old runs recorded it; a name no data/ of the repo has


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    assert not (ROOT / NAME).exists()  # the search must not find the repository's own data/
    root = tmp_path_factory.mktemp('faults')
    proj = root / 'proj'  # a checkout elsewhere: its data/ and out/, train.py run from its root
    e = {'root': root, 'proj': proj, 'data': byte_corpus(proj / NAME), 'run': proj / 'out' / 'run'}
    r = run(['train.py', *TINY, f'--data_dir={NAME}', '--out_dir=out/run', '--max_iters=4', '--eval_interval=4'], proj)
    assert r.returncode == 0, r.stderr
    ck = torch.load(e['run'] / 'ckpt.pt', weights_only=True)
    assert ck['config']['data_dir'] == str(proj / NAME)  # train.py records it absolute now
    ck['config']['data_dir'] = NAME  # as runs from before recorded it: relative to the folder train.py ran in
    torch.save(ck, e['run'] / 'ckpt.pt')
    torch.manual_seed(0)
    bpe = GPTConfig(block_size=32, vocab_size=50304, n_layer=1, n_head=2, n_embd=32)  # GPT-2's BPE fits
    for name, saved in (('metaless', {**ck, 'meta': {}}),  # an early run: its tokenizer only in its data's meta.json
                        ('converted', {'version': 2, 'model': ck['model'], 'model_args': ck['model_args']}),
                        ('badtype', {**ck, 'model_args': {**ck['model_args'], 'n_layer': '2'}}),
                        ('bpe', {'version': 2, 'model': GPT(bpe).state_dict(), 'model_args': vars(bpe).copy(), 'config': {},
                                 'meta': {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}})):
        e[name] = proj / 'out' / name  # beside the run: its relative data_dir is found from the run's parents
        e[name].mkdir()
        torch.save(saved, e[name] / 'ckpt.pt')
    return e


def EVAL(ckpt, out):
    return ['eval.py', '--ckpt', ckpt, '--ev', '1', '--windows', '1', '--out', out, '--device', 'cpu']


def TASKS(ckpt, out):
    return ['eval_tasks.py', '--ckpt', ckpt, '--ev', '1', '4', '--keys', '1', '--depths', '0', '--out', out, '--device', 'cpu']


def SAMPLE(ckpt):
    return ['sample.py', '--ckpt', ckpt, '--start', 'the', '--max_new_tokens', '4', '--num_samples', '1', '--device', 'cpu']


BENCH = ['bench.py', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--vocab_size=64', '--batch_size=2',
         '--warmup=1', '--repeats=1', '--device=cpu']


def late_error(r, *words):
    """A write error after the evaluation: its progress lines, then ONE 'error:' line last; exit != 0, no traceback."""
    assert r.returncode not in (0, None) and 'Traceback' not in r.stderr, r.stderr
    errors = [line for line in r.stderr.replace('\r', '\n').splitlines() if line.startswith('error')]
    assert errors == [r.stderr.strip().splitlines()[-1]], r.stderr
    assert all(w in errors[0] for w in words), errors[0]


def table_rows(r):
    return [line.split(' | ') for line in r.stdout.splitlines() if line.startswith('| ') and '---' not in line]


# -----------------------------------------------------------------------------
# 1. a run evaluated from another folder: its relative data_dir is found where the run meant it

def test_a_relative_data_dir_is_found_from_any_folder(env, tmp_path, monkeypatch):
    r = run(EVAL(env['run'], tmp_path / 'ev'), tmp_path / 'elsewhere')
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / 'ev' / 'eval.json').read_text())['rows'][0]['data_dir'] == str(env['data'])
    # a checkpoint whose tokenizer is only in its data's meta.json: sample.py, eval_tasks.py and harness.py find it too
    r = run(SAMPLE(env['metaless']), tmp_path / 'elsewhere')
    assert r.returncode == 0 and r.stdout.startswith('the'), r.stderr
    r = run(TASKS(env['metaless'], tmp_path / 'tasks'), tmp_path / 'elsewhere')
    assert r.returncode == 0, r.stderr
    from harness import ExpeGPT
    monkeypatch.chdir(tmp_path / 'elsewhere')
    assert ExpeGPT(str(env['metaless']), device='cpu').eot == 256


def test_a_data_dir_found_nowhere_names_every_place_tried(env, tmp_path):
    (tmp_path / 'lone').mkdir()  # a copy of the run away from its data
    (tmp_path / 'lone' / 'ckpt.pt').write_bytes((env['run'] / 'ckpt.pt').read_bytes())
    r = run(EVAL(tmp_path / 'lone', tmp_path / 'ev'), tmp_path / 'work')
    one_line_error(r, f"data_dir='{NAME}'", str(tmp_path / 'work' / NAME), str(ROOT / NAME), str(tmp_path / 'lone' / NAME),
                   str(tmp_path / NAME), '--data_dir')


# -----------------------------------------------------------------------------
# 2. a late write error: the results are printed first, each file is replaced whole or not at all

def test_a_full_disk_after_the_evaluation_keeps_the_table_and_the_earlier_files_whole(env, tmp_path):
    out = tmp_path / 'ev'
    assert run(EVAL(env['run'], out), tmp_path / 'a').returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # files may not grow past half the plot: the table and the text files fit, the new plot does not
    r = run([*EVAL(env['run'], out), '--overwrite'], tmp_path / 'b', fsize=len(before['per_position.png']) // 2)
    late_error(r, f"could not write {out / 'per_position.png'}", 'File too large', 'printed above is the result')
    assert float(table_rows(r)[1][3].strip(' |')) > 0  # the result, on stdout
    assert (out / 'per_position.png').read_bytes() == before['per_position.png']  # the earlier plot, not half a new one
    assert sorted(os.listdir(out)) == sorted(before)  # no temporary file left behind
    assert json.loads((out / 'eval.json').read_text())['rows'][0]['cells']['1']['loss'] > 0


def test_eval_tasks_full_disk_keeps_the_tables(env, tmp_path):
    out = tmp_path / 't'
    r = run(TASKS(env['run'], out), tmp_path / 'w', fsize=8000)  # tasks.md and tasks.json fit, a heat map does not
    late_error(r, f"could not write {out / 'passkey_0_expe.png'}", 'File too large', 'printed above are the result')
    assert '| checkpoint | pe | scale | passkey mix | 1x | 4x |' in r.stdout
    assert sorted(os.listdir(out)) == ['tasks.json', 'tasks.md']  # no half-written heat map
    assert json.loads((out / 'tasks.json').read_text())['rows'][0]['pe'] == 'expe'


@pytest.mark.skipif(not LINUX, reason='/sys is read-only on Linux only')
@pytest.mark.parametrize('script', ['eval.py', 'eval_tasks.py'])
def test_an_out_that_cannot_be_written_is_refused_before_the_evaluation(env, tmp_path, script):
    argv = (EVAL if script == 'eval.py' else TASKS)(env['run'], '/sys/kernel')  # exists, takes no file (even from root)
    r = run(argv, tmp_path / 'w')
    one_line_error(r, 'cannot write --out /sys/kernel')
    assert r.stdout == ''  # refused before anything was evaluated


# -----------------------------------------------------------------------------
# 3. --scale: finite, > 0 and within core.SCALE_RANGE in every script

@pytest.mark.parametrize('argv', [
    ['eval.py', '--scale', '1e30'], ['eval.py', '--scale', '1e-300'], ['eval.py', '--set', 'pos_scale=17'],
    ['eval_tasks.py', '--scale', '1e300'], ['eval_tasks.py', '--set', 'pos_scale=inf'],
    ['sample.py', '--scale', '1e300'], ['sample.py', '--scale', '16.5']], ids=' '.join)
def test_an_absurd_scale_is_refused_up_front(env, tmp_path, argv):
    base = {'eval.py': EVAL(env['run'], tmp_path / 'o'), 'eval_tasks.py': TASKS(env['run'], tmp_path / 'o'),
            'sample.py': SAMPLE(env['run'])}[argv[0]]
    r = run([*base, *argv[1:]], tmp_path / 'w')
    one_line_error(r, str(float(argv[-1].split('=')[-1])), 'pos_scale must be a finite number > 0 from 1/1024 to 16')
    assert r.stdout == '' and not (tmp_path / 'o').exists()


def test_harness_refuses_an_absurd_scale(env):
    from harness import ExpeGPT
    for scale in ('nan', '-1', '0', '1e300', '17'):
        with pytest.raises(SystemExit, match=rf"^error: --model_args scale={re.escape(str(float(scale)))}: .*from 1/1024 to 16"):
            ExpeGPT(str(env['run']), device='cpu', scale=scale)
    assert ExpeGPT(str(env['run']), device='cpu', scale='16').model.config.pos_scale == 16


@pytest.mark.parametrize('pe', [name for name, p in PES.items() if p.scalable])
def test_the_extreme_accepted_scales_give_finite_losses(pe):
    """Every scalable pe, at either end of SCALE_RANGE, at 16x its training length (or the longest it takes)."""
    for scale in core.SCALE_RANGE:
        torch.manual_seed(0)
        model = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=2, n_head=2, n_embd=32, pe=pe, pos_scale=scale)).eval()
        T = min(16 * 16, model.max_len or 16 * 16)
        x = torch.randint(0, 64, (2, T + 1))
        with torch.no_grad():
            logits, loss = model(x[:, :-1], x[:, 1:])
        assert torch.isfinite(logits).all() and torch.isfinite(loss), (pe, scale)


def test_eval_at_the_largest_accepted_scale_is_a_table_of_numbers(env, tmp_path):
    r = run([*EVAL(env['run'], tmp_path / 'ev'), '--ev', '1', '16', '--scale', str(core.SCALE_RANGE[1])], tmp_path / 'w')
    assert r.returncode == 0, r.stderr
    cells = json.loads((tmp_path / 'ev' / 'eval.json').read_text())['rows'][0]['cells']
    assert all(0 < cells[k]['loss'] < 20 for k in ('1', '16'))


# -----------------------------------------------------------------------------
# 4. out of memory, on any device: that cell is n/a with one line saying what to lower, the others stay

OOMS = {  # what each allocator raises
    'cpu': lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you "
                                "tried to allocate 68719476736 bytes. Error code 12 (Cannot allocate memory)"),
    'cuda': lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB"),
    'python': lambda: MemoryError(),
}


def _oom_child(kind, length, pe, script, args, cwd, out, err):
    """test_bad_input's child, with GPT.forward running out of memory at inputs of `length` tokens (or, in
    training, for pe `pe`): a device that holds the shorter inputs but not that one."""
    import model
    forward = model.GPT.forward

    def forward_oom(self, idx, *a, **k):
        if idx.size(1) == length or (self.config.pe == pe and self.training):
            raise OOMS[kind]()
        return forward(self, idx, *a, **k)
    model.GPT.forward = forward_oom
    tb._child(script, args, cwd, out, err, 0)


def run_oom(kind, argv, cwd, length=0, pe=''):
    """run(argv, cwd) with the forward pass out of memory where _oom_child says."""
    server = multiprocessing.get_context('forkserver')  # test_bad_input's: the same modules preloaded
    server.set_forkserver_preload(['torch', 'torch._dynamo', 'numpy', 'model', 'configurator', 'core', 'data', 'evaluation',
                                   'datasets', 'tqdm', 'test_bad_input', __name__])  # ignored once it runs
    cwd.mkdir(parents=True, exist_ok=True)
    out, err = cwd.parent / f'{cwd.name}.stdout', cwd.parent / f'{cwd.name}.stderr'
    p = server.Process(target=_oom_child, args=(kind, length, pe, str(ROOT / argv[0]), [str(a) for a in argv[1:]], str(cwd),
                                                str(out), str(err)))
    p.start()
    p.out_path, p.err_path = out, err
    return finish(p)


@pytest.mark.parametrize('kind,batch_tokens,lower', [('cpu', 32768, 'lower --batch_tokens (now 32768)'),
                                                     ('cuda', 32768, 'lower --batch_tokens'),
                                                     ('python', 64, 'one window of 64 tokens does not fit on cpu; lower --ev')])
def test_eval_out_of_memory_at_one_length_is_na_and_keeps_the_other_cells(env, tmp_path, kind, batch_tokens, lower):
    out = tmp_path / 'ev'
    r = run_oom(kind, [*EVAL(env['run'], out), '--ev', '1', '2', '4', '--batch_tokens', batch_tokens], tmp_path / 'w', length=64)
    assert r.returncode == 0, r.stderr
    row = table_rows(r)[1]
    assert float(row[3]) > 0 and row[4] == 'n/a (out of memory)' and float(row[5].strip(' |')) > 0
    notes = [line for line in r.stderr.splitlines() if 'out of memory' in line]
    assert len(notes) == 1 and ' 2x: n/a (out of memory' in notes[0] and '64 tokens' in notes[0] and lower in notes[0], notes
    cells = json.loads((out / 'eval.json').read_text())['rows'][0]['cells']
    assert 'loss' in cells['1'] and cells['2'] == {'length': 64, 'na': 'out of memory'} and 'loss' in cells['4']


def test_bench_out_of_memory_is_na_and_keeps_the_other_cells(tmp_path):
    r = run_oom('cpu', [*BENCH, '--mode=eval', '--evs=1,2,4', '--pes=rope,alibi'], tmp_path / 'e', length=32)
    assert r.returncode == 0, r.stderr
    for row in table_rows(r)[1:]:
        assert row[3] == 'n/a (out of memory)' and row[2][0].isdigit() and row[4][0].isdigit(), row
    notes = r.stderr.strip().splitlines()
    assert len(notes) == 2 and all('2x = 32 tokens ran out of memory on cpu' in n and 'lower --evs' in n for n in notes), notes
    r = run_oom('python', [*BENCH, '--pes=rope,alibi,expe'], tmp_path / 't', pe='alibi')  # train mode: one row
    assert r.returncode == 0, r.stderr
    rows = {row[1]: row for row in table_rows(r)[1:]}
    assert rows['alibi'][2] == 'n/a (out of memory)' and float(rows['rope'][2]) > 0 and float(rows['expe'][2]) > 0
    assert rows['expe'][7].strip(' |') != 'n/a'  # still against RoPE
    assert [n for n in r.stderr.splitlines() if 'out of memory' in n] == [
        'gpt2 alibi: a step of 2 x 16 tokens ran out of memory on cpu: n/a in the table; lower --batch_size (now 2) or --block_size']


# -----------------------------------------------------------------------------
# 5. a converted checkpoint ({model, model_args}): it works, or each script says what it needs

def test_a_converted_checkpoint_works_or_says_what_it_needs(env, tmp_path):
    conv = env['converted']
    one_line_error(run(EVAL(conv, tmp_path / 'e1'), tmp_path / 'w'), 'does not record the data', '--data_dir')
    one_line_error(run(SAMPLE(conv), tmp_path / 'w'), 'does not name its tokenizer', '--tokenizer')
    one_line_error(run(TASKS(conv, tmp_path / 't1'), tmp_path / 'w'), 'does not name its tokenizer', '--tokenizer')
    for argv in ([*EVAL(conv, tmp_path / 'e2'), '--data_dir', env['data']], [*SAMPLE(conv), '--tokenizer', 'byte'],
                 [*TASKS(conv, tmp_path / 't2'), '--tokenizer', 'byte']):
        r = run(argv, tmp_path / 'w')
        assert r.returncode == 0, r.stderr
    from harness import ExpeGPT
    with pytest.raises(SystemExit, match=r'^error: .* does not name its tokenizer .*pass tokenizer= in --model_args'):
        ExpeGPT(str(conv), device='cpu')
    assert ExpeGPT(str(conv), device='cpu', tokenizer='byte').eot == 256


def test_model_args_of_the_wrong_type_name_the_field_and_the_file(env, tmp_path):
    path = env['badtype'] / 'ckpt.pt'
    one_line_error(run(EVAL(env['badtype'], tmp_path / 'e'), tmp_path / 'w'), str(path), "n_layer='2'", 'int')
    ck = torch.load(env['run'] / 'ckpt.pt', weights_only=True)
    for key, value in (('n_layer', 2.0), ('pe', 3), ('bias', 'no'), ('pos_scale', '1'), ('n_head', True)):
        torch.save({**ck, 'model_args': {**ck['model_args'], key: value}}, tmp_path / 'ckpt.pt')
        with pytest.raises(ValueError, match=rf"ckpt.pt: model_args {key}={value!r} is of type"):
            core.load_checkpoint(str(tmp_path))
    torch.save({**ck, 'model_args': {**ck['model_args'], 'pos_scale': 1}}, tmp_path / 'ckpt.pt')  # an int for a float: fine
    assert core.load_checkpoint(str(tmp_path))[0].config.pos_scale == 1.0


# -----------------------------------------------------------------------------
# 6. a device torch knows but this machine lacks

LACKS_XPU = not (hasattr(torch, 'xpu') and torch.xpu.is_available())


@pytest.mark.skipif(not LACKS_XPU, reason='this machine has an xpu')
@pytest.mark.parametrize('script', ['train.py', 'eval.py', 'sample.py', 'eval_tasks.py', 'bench.py'])
def test_a_device_this_machine_lacks_is_named_with_the_ones_it_has(env, tmp_path, script):
    argv = {'train.py': ['train.py', *TINY, f"--data_dir={env['data']}", f"--out_dir={tmp_path / 'o'}", '--max_iters=2'],
            'eval.py': EVAL(env['run'], tmp_path / 'o'), 'sample.py': SAMPLE(env['run']),
            'eval_tasks.py': TASKS(env['run'], tmp_path / 'o'), 'bench.py': BENCH}[script]
    line = one_line_error(run([*argv, '--device=xpu'], tmp_path / 'w'), "device='xpu' is not available on this machine",
                          'which has cpu', '--device=cpu')
    assert 'damaged' not in line and 'copy it again' not in line
    assert not (tmp_path / 'o').exists()


@pytest.mark.skipif(not LACKS_XPU, reason='this machine has an xpu')
def test_harness_names_a_device_this_machine_lacks(env):
    from harness import ExpeGPT
    with pytest.raises(SystemExit, match=r"^error: cannot load .*device='xpu' is not available on this machine, which has cpu"):
        ExpeGPT(str(env['run']), device='xpu')
    assert core.device_problem('meta') and core.device_problem('cuda:999') and not core.device_problem('cpu')


# -----------------------------------------------------------------------------
# 7. settings torch, numpy or lm-eval would reject with a traceback, or that print nonsense

def test_bench_negative_seed_and_repeated_lengths(tmp_path):
    one_line_error(run([*BENCH, '--seed=-1'], tmp_path / 'a'), 'seed=-1', '>= 0')
    one_line_error(run([*BENCH, '--mode=eval', '--evs=2,2'], tmp_path / 'b'), "evs='2,2'", 'more than once')


@pytest.mark.parametrize('script', ['eval.py', 'eval_tasks.py'])
def test_a_repeated_ev_is_refused(env, tmp_path, script):
    argv = (EVAL if script == 'eval.py' else TASKS)(env['run'], tmp_path / 'o')
    one_line_error(run([*argv, '--ev', '2', '2'], tmp_path / 'w'), '--ev 2 2', 'more than once')


def test_harness_unknown_task_is_one_line(env, tmp_path):
    hf = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, str(ROOT / 'harness.py'), 'run', '--model', 'expe-gpt', '--model_args',
                        f"ckpt={env['run']}", '--device', 'cpu', '--tasks', 'no_such_task'], cwd=tmp_path, env=hf,
                       capture_output=True, text=True, timeout=300)
    one_line_error(p, '--tasks', 'no_such_task', '`python harness.py ls tasks` lists')


# -----------------------------------------------------------------------------
# 8. a checkpoint scored on data of another tokenizer

def test_a_bpe_checkpoint_on_byte_data_is_refused(env, tmp_path):
    one_line_error(run([*EVAL(env['bpe'], tmp_path / 'e'), '--data_dir', env['data']], tmp_path / 'w'),
                   str(env['data']), "tokenizer 'byte'", "trained on 'gpt2'", '--tokenizer gpt2')
    for argv in (TASKS(env['bpe'], tmp_path / 't'), SAMPLE(env['bpe'])):
        one_line_error(run([*argv, '--tokenizer', 'byte'], tmp_path / 'w'), "trained on tokenizer 'gpt2', not 'byte'",
                       'leave out --tokenizer')
    assert not (tmp_path / 'e').exists() and not (tmp_path / 't').exists()
