"""Faults past the up-front checks on the training side (issue 24): pe knobs that passed the checks and crashed at
the first forward, a resume on other batches (the data, the training mix, the number of processes), a full disk
during a resume's log repair, and what the DDP ranks say. Each case: one line, exit != 0, nothing lost."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import core
from model import GPT, GPTConfig
from test_bad_input import TINY, byte_corpus, one_line_error, run

ROOT = Path(__file__).resolve().parents[1]

KNOB_CASES = [  # settings that passed the checks and then crashed (or gave NaN) in the first forward
    (dict(pe='rope', n_embd=8, n_head=4, rope_scaling='ntk', rope_factor=2.0), ['rope_scaling=ntk', 'head size 2']),
    (dict(pe='rope', rope_scaling='ntk', rope_factor=1e300), ['rope_factor=1e+300']),
    (dict(pe='xpos', xpos_gamma=math.inf), ['xpos_gamma=inf']),
    (dict(pe='xpos', xpos_scale_base=0.001), ['xpos_scale_base=0.001', 'block_size']),
    (dict(pe='randpe', randpe_max=10 ** 19), ['randpe_max=10000000000000000000', '2^24']),
]
FINITE_CASES = [  # extreme but meaningful: accepted, and the forward is finite
    dict(pe='rope', rope_scaling='yarn', rope_factor=4.0, rope_original=16, yarn_alpha=1e-308),
    dict(pe='rope', rope_scaling='yarn', rope_factor=4.0, rope_original=16, yarn_beta=1e308),
    dict(pe='rope', rope_scaling='yarn', rope_factor=1e30, rope_original=16),
    dict(pe='xpos', xpos_gamma=1e20),
    dict(pe='randpe', randpe_max=2 ** 24),
]


def cfg(**kw):
    return GPTConfig(**{**dict(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16), **kw})


@pytest.mark.parametrize('kw, words', KNOB_CASES)
def test_a_knob_the_model_cannot_compute_is_refused_when_the_model_is_built(kw, words):
    with pytest.raises(ValueError) as e:
        GPT(cfg(**kw))
    assert '\n' not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize('kw', FINITE_CASES)
def test_an_extreme_knob_that_is_accepted_gives_a_finite_forward(kw):
    torch.manual_seed(0)
    m = GPT(cfg(**kw))
    m.train()  # randpe draws its training positions in train mode
    x = torch.randint(64, (2, 16))
    logits, loss = m(x, x)
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    m.eval()
    with torch.no_grad():
        assert torch.isfinite(m(torch.randint(64, (1, 64)))[0]).all()  # and past the training length


@pytest.mark.parametrize('kw, words', KNOB_CASES[:2] + KNOB_CASES[3:4])
def test_train_and_eval_set_refuse_them_in_one_line(kw, words, tmp_path):
    data = byte_corpus(tmp_path / 'data')
    args = [f'--{k}={v}' for k, v in kw.items() if k not in ('n_embd', 'n_head')]
    size = [f'--n_embd={kw.get("n_embd", 32)}', f'--n_head={kw.get("n_head", 2)}']
    r = run(['train.py', *TINY, *size, f'--data_dir={data}', f'--out_dir={tmp_path / "x"}', '--max_iters=2', *args],
            tmp_path / 'w')
    one_line_error(r, *words)
    assert not (tmp_path / 'x').exists()


# -----------------------------------------------------------------------------
# a resume must see the uninterrupted run's batches

TRAIN = ['train.py', *TINY, '--max_iters=4', '--eval_interval=4']


def trained(tmp_path, data, *extra):
    r = run([*TRAIN, f'--data_dir={data}', f'--out_dir={tmp_path / "run"}', *extra], tmp_path / 'w')
    assert r.returncode == 0, r.stderr
    return tmp_path / 'run'


def resume(tmp_path, data, *extra):
    return run([*TRAIN, f'--data_dir={data}', f'--out_dir={tmp_path / "run"}', '--init_from=resume', '--max_iters=8', *extra],
               tmp_path / 'w')


def test_a_resume_on_data_rebuilt_in_the_same_folder_is_refused_unless_asked_and_then_logged(tmp_path):
    data = byte_corpus(tmp_path / 'data')
    out = trained(tmp_path, data)
    byte_corpus(tmp_path / 'data', train_extra=[65] * 500)  # prepare.py run again with other options: the same folder
    one_line_error(resume(tmp_path, data), 'cannot resume exactly', 'meta.json or shards changed', '--resume_other_batches=True')
    assert json.loads((out / 'log.jsonl').read_text().splitlines()[-1])['iter'] == 4  # nothing written
    r = resume(tmp_path, data, '--resume_other_batches=True')
    assert r.returncode == 0, r.stderr
    assert 'warning: resumed on other batches' in r.stdout
    logged = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]
    assert [x for x in logged if 'resumed_with_other_batches' in x][0]['iter'] == 4


@pytest.mark.parametrize('changed, words', [
    (['--task=passkey', '--task_frac=0.5'], ["task='', now 'passkey'", 'task_frac=1.0, now 0.5']),
    (['--batch_size=4'], ['batch_size=8, now 4']),
    (['--gradient_accumulation_steps=2'], ['gradient_accumulation_steps=1, now 2']),
])
def test_a_resume_with_another_training_mix_or_batch_is_refused(changed, words, tmp_path):
    data = byte_corpus(tmp_path / 'data')
    trained(tmp_path, data, '--block_size=128')  # long enough for a passkey example
    one_line_error(resume(tmp_path, data, '--block_size=128', *changed), 'cannot resume exactly', *words)


def test_the_same_data_moved_elsewhere_resumes_exactly(tmp_path):
    data = byte_corpus(tmp_path / 'data')
    trained(tmp_path, data)
    moved = tmp_path / 'moved'
    data.rename(moved)
    r = resume(tmp_path, moved)
    assert r.returncode == 0, r.stderr
    assert 'warning' not in r.stdout
    ckpt, _ = core.read_checkpoint(str(tmp_path / 'run'))
    assert ckpt['config']['data_dir'] == str(moved) and os.path.isabs(ckpt['config']['out_dir'])  # absolute, from any folder
    assert ckpt['batches'] == {'data': ckpt['batches']['data'], 'processes': 1} and len(ckpt['batches']['data']) == 16


def test_a_resume_on_a_full_disk_keeps_the_log_and_the_checkpoint(tmp_path):
    data = byte_corpus(tmp_path / 'data')
    out = trained(tmp_path, data, '--log_interval=1')
    log = out / 'log.jsonl'
    lines = log.read_text().splitlines()
    log.write_text('\n'.join([lines[0]] * 400 + lines) + '\n')  # a long log: rewriting it needs more than the disk has
    before, ckpt = log.read_bytes(), (out / 'ckpt.pt').read_bytes()
    r = run([*TRAIN, f'--data_dir={data}', f'--out_dir={out}', '--init_from=resume', '--max_iters=8'], tmp_path / 'w',
            fsize=len(before) // 2)
    one_line_error(r, 'could not write', 'log.jsonl', 'intact')
    assert log.read_bytes() == before and (out / 'ckpt.pt').read_bytes() == ckpt
    assert not (out / 'log.jsonl.tmp').exists()


def test_eval_set_refuses_a_knob_the_model_cannot_compute(tmp_path):
    data = byte_corpus(tmp_path / 'data')
    out = run(['train.py', *TINY, '--pe=rope', '--max_iters=2', f'--data_dir={data}', f'--out_dir={tmp_path / "rope"}'],
              tmp_path / 'w')
    assert out.returncode == 0, out.stderr
    r = run(['eval.py', '--ckpt', tmp_path / 'rope', '--ev', '1', '--windows', '1', '--device', 'cpu', '--out', tmp_path / 'ev',
             '--set', 'rope_scaling=ntk', 'rope_factor=1e300'], tmp_path / 'w')
    one_line_error(r, 'rope_factor=1e+300')


# -----------------------------------------------------------------------------
# DDP (torchrun, gloo on the CPU): the ranks agree

DDP = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(ROOT / 'train.py'), *TINY,
       '--gradient_accumulation_steps=2', '--log_interval=1']


def workers_errors(stderr):
    """The workers' own lines (torchrun adds its log and its ChildFailedError report around them)."""
    return [line for line in stderr.splitlines() if line.startswith('error:')]


def test_ddp_sigterm_gives_one_message_and_keeps_the_checkpoint(tmp_path):
    data = byte_corpus(tmp_path / 'data')
    p = subprocess.Popen([*DDP, f'--data_dir={data}', f'--out_dir={tmp_path / "run"}', '--max_iters=100000',
                          '--eval_interval=5'], cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS='1'),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for _ in range(600):
        if (tmp_path / 'run' / 'ckpt.pt').exists() or p.poll() is not None:
            break
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(p.pid, signal.SIGTERM)  # what a scheduler does: every process of the job gets it
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0
    errors = workers_errors(err)
    assert len(errors) == 1 and 'interrupted (SIGTERM)' in errors[0] and 'is intact' in errors[0], err[-3000:]
    assert 'no checkpoint was written yet' not in err
    core.read_checkpoint(str(tmp_path / 'run'))  # readable


def test_ddp_divergence_stops_every_rank_with_one_message(tmp_path):
    data = byte_corpus(tmp_path / 'data')
    r = subprocess.run([*DDP, f'--data_dir={data}', f'--out_dir={tmp_path / "run"}', '--max_iters=200', '--eval_interval=100',
                        '--learning_rate=1e6', '--warmup_iters=0', '--grad_clip=0'],
                       cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    errors = workers_errors(r.stderr)
    assert len(errors) == 1 and 'not finite' in errors[0], r.stderr[-3000:]
    assert 'gloo' not in r.stderr.lower() and 'DistBackendError' not in r.stderr


def test_a_two_process_run_resumed_by_one_process_is_refused(tmp_path):
    data = byte_corpus(tmp_path / 'data')
    r = subprocess.run([*DDP, f'--data_dir={data}', f'--out_dir={tmp_path / "run"}', '--max_iters=4', '--eval_interval=4'],
                       cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    one = run(['train.py', *TINY, '--gradient_accumulation_steps=2', f'--data_dir={data}', f'--out_dir={tmp_path / "run"}',
               '--init_from=resume', '--max_iters=8', '--eval_interval=4', '--log_interval=1'], tmp_path / 'w')
    one_line_error(one, 'cannot resume exactly', '2 processes, now 1')


# -----------------------------------------------------------------------------
# found by probing other values of the same kinds (beyond the list)

@pytest.mark.parametrize('kw, words', [
    (dict(pe='fire', fire_c=1e300), ['fire_c=1e+300', 'at most 1e30']),
    (dict(pe='fire', fire_L=math.inf), ['fire_L=inf']),
    (dict(pe='expe', expe_theta=1e30), ['values reach', 'overflows fp32']),
    (dict(pe='expe', expe_start=-1e30), ['expe_start=-1e+30']),
    (dict(pe='exqpe', exqpe_step=1e30), ['values reach']),
])
def test_other_knobs_past_what_fp32_computes_are_refused(kw, words):
    with pytest.raises(ValueError) as e:
        GPT(cfg(**kw))
    assert all(w in str(e.value) for w in words), str(e.value)


@pytest.mark.parametrize('kw', [dict(pe='fire', fire_c=1e30, fire_L=2.0 ** 24),
                                dict(pe='expe', expe_theta=900.0), dict(pe='exqpe', exqpe_step=900.0)])
def test_the_largest_accepted_other_knobs_give_a_finite_forward(kw):
    test_an_extreme_knob_that_is_accepted_gives_a_finite_forward(kw)


def test_train_refuses_an_absurd_pos_scale_and_says_out_of_memory_in_one_line(tmp_path):
    data = byte_corpus(tmp_path / 'data')
    base = ['train.py', *TINY, f'--data_dir={data}', f'--out_dir={tmp_path / "x"}', '--max_iters=2']
    one_line_error(run([*base, '--pe=rope', '--pos_scale=1e30'], tmp_path / 'w'), 'pos_scale=1e+30')
    one_line_error(run([*base, '--pe=fire', '--fire_width=10000000'], tmp_path / 'w'), 'out of memory')
    assert not (tmp_path / 'x' / 'ckpt.pt').exists()


def test_only_train_py_under_ddp_keeps_a_non_zero_rank_quiet(tmp_path):
    """RANK in the environment (a cluster may export it) silences no other script's error line."""
    env = dict(os.environ, RANK='1', OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, str(ROOT / 'eval.py'), '--ckpt', str(tmp_path / 'none'), '--device', 'cpu'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith('error: no checkpoint at'), r.stderr
