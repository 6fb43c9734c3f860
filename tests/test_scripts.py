"""End-to-end tests of train.py, eval.py and sample.py on a tiny synthetic byte-level corpus."""
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from data import write_shard

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=32', '--batch_size=8', '--compile=False',
        '--device=cpu', '--eval_iters=4', '--warmup_iters=5', '--learning_rate=3e-3']


def run(script, *args, check=True, cwd=None, env=None):
    """A script as a process, by default in a scratch folder: the repository's own out/ and data/ are never used."""
    env = dict(env or os.environ, OMP_NUM_THREADS='1')
    cwd = cwd or tempfile.mkdtemp(prefix='cwd-')
    p = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p


def one_line_error(p, *words):
    """A user error: non-zero exit, no traceback, one 'error:' line naming the problem."""
    assert p.returncode != 0
    assert 'Traceback' not in p.stderr
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error:'), p.stderr
    for w in words:
        assert w in err[0], err[0]
    return err[0]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    """A learnable byte corpus: sentences from a small vocabulary, EOT before each document."""
    d = tmp_path_factory.mktemp('data')
    rng = random.Random(0)
    words = 'the king is dead long live queen my lord speak no more of this'.split()

    def doc(n):
        return [256] + list(' '.join(rng.choice(words) for _ in range(n)).encode())
    train = [t for _ in range(60) for t in doc(200)]
    val = [t for _ in range(12) for t in doc(200)]
    write_shard(str(d / 'val_000000.bin'), val, 257)
    write_shard(str(d / 'train_000001.bin'), train, 257)
    (d / 'meta.json').write_text(json.dumps({'tokenizer': 'byte', 'vocab_size': 257, 'eot': 256}))
    return d


def log_of(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / 'log.jsonl').read_text().splitlines()]


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
    """Two tiny checkpoints (expe, learned) shared by the eval/sample tests."""
    out = tmp_path_factory.mktemp('out')
    for pe in ('expe', 'learned'):
        run('train.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={out / pe}', f'--pe={pe}',
            '--max_iters=40', '--eval_interval=20', '--log_interval=10')
    return out


def test_training_lowers_loss(trained):
    evals = [r for r in log_of(trained / 'expe') if 'val_loss' in r]
    assert [r['iter'] for r in evals] == [0, 20, 40]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 1.5  # from ~ln(257)=5.5 to well below
    steps = [r for r in log_of(trained / 'expe') if 'loss' in r]
    assert all(r['tok_per_s'] > 0 and r['ms_per_iter'] > 0 and r['mfu'] is None for r in steps)  # no peak on CPU
    ckpt = torch.load(trained / 'expe' / 'ckpt.pt', weights_only=True)
    assert ckpt['iter_num'] == 40 and ckpt['model_args']['pe'] == 'expe'
    assert ckpt['model_args']['vocab_size'] == 320  # 257 rounded up to a multiple of 64
    assert not (trained / 'expe' / 'ckpt.pt.tmp').exists()


def test_resume_gives_the_same_losses(data_dir, tmp_path):
    common = [*TINY, f'--data_dir={data_dir}', '--dropout=0.1', '--lr_decay_iters=16', '--eval_interval=8',
              '--log_interval=1']
    run('train.py', *common, f'--out_dir={tmp_path / "a"}', '--max_iters=16')
    run('train.py', *common, f'--out_dir={tmp_path / "b"}', '--max_iters=8')
    run('train.py', *common, f'--out_dir={tmp_path / "b"}', '--max_iters=16', '--init_from=resume')
    a = [r['loss'] for r in log_of(tmp_path / 'a') if 'loss' in r]
    b = [r['loss'] for r in log_of(tmp_path / 'b') if 'loss' in r]
    assert len(a) == len(b) == 16
    assert a == b  # bit-identical: same batches, same dropout masks, same optimizer state
    va = [r['val_loss'] for r in log_of(tmp_path / 'a') if 'val_loss' in r]
    vb = [r['val_loss'] for r in log_of(tmp_path / 'b') if 'val_loss' in r]
    assert va[-1] == vb[-1]


def test_ddp_two_processes_stay_in_sync(data_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        str(ROOT / 'train.py'), *TINY, f'--data_dir={data_dir}', f'--out_dir={tmp_path}',
                        '--max_iters=30', '--eval_interval=30', '--log_interval=10', '--gradient_accumulation_steps=2'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'all 2 processes hold identical weights' in p.stdout
    assert '2 process(es) x 1 accumulation' in p.stdout
    evals = [r for r in log_of(tmp_path) if 'val_loss' in r]
    assert evals[-1]['val_loss'] < evals[0]['val_loss'] - 1.0


def test_eval_table(trained, data_dir, tmp_path):
    out = tmp_path / 'ev'
    p = run('eval.py', '--ckpt', trained / 'expe', trained / 'learned', '--ev', 1, 2, 4, '--windows', 2,
            '--out', out, '--device', 'cpu')
    table = [line for line in p.stdout.splitlines() if line.startswith('|')]
    assert table[0] == '| checkpoint | pe | scale | 1x | 2x | 4x |'
    assert len(table) == 4  # header, rule, one row per checkpoint
    expe_row, learned_row = table[2].split(' | '), table[3].split(' | ')
    assert expe_row[1] == 'expe' and all(0 < float(c.strip(' |')) < 6 for c in expe_row[3:])
    assert learned_row[3].startswith('2.') or float(learned_row[3]) < 6
    assert 'n/a (pe=learned accepts at most 32 positions)' in learned_row[4]
    assert 'same 1,024 target tokens' in p.stdout  # 2 windows x 16 x 32, at every length
    result = json.loads((out / 'eval.json').read_text())
    cells = result['rows'][0]['cells']
    assert [cells[k]['windows'] for k in ('1', '2', '4')] == [32, 16, 8]
    assert {cells[k]['tokens'] for k in ('1', '2', '4')} == {1024}
    # --ev 4 alone averages the same tokens as the table's 4x cell, so it gives the same number
    alone = run('eval.py', '--ckpt', trained / 'expe', '--ev', 4, '--windows', 2, '--out', tmp_path / 'ev4', '--device', 'cpu')
    assert 'same 1,024 target tokens' in alone.stdout
    assert json.loads((tmp_path / 'ev4' / 'eval.json').read_text())['rows'][0]['cells']['4'] == cells['4']
    csv_lines = (out / 'per_position.csv').read_text().splitlines()
    assert len(csv_lines) == 1 + 4 * 32 and csv_lines[0].startswith('position,')
    assert (out / 'per_position.png').stat().st_size > 1000



def test_sliding_losses_score_each_target_once_with_enough_context():
    """Brute force: target t is scored in the window that ends at the first multiple of the stride at or after it,
    as the token at its place there; so it has at least length - stride tokens before it."""
    from evaluation import sliding_losses, window_losses
    from model import GPT, GPTConfig
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16, pe='rope')).eval()
    tokens = torch.randint(50, (200,)).numpy()
    L, S, start, N = 32, 8, 40, 48
    got = sliding_losses(m, tokens, L, S, start, N, 10 ** 6, 'cpu', torch.no_grad())
    want = []
    for t in range(start + 1, start + N + 1):  # the index of each scored target in the stream
        end = start + -(-(t - start) // S) * S  # the window's last target
        x = torch.from_numpy(tokens[end - L:end])[None]
        with torch.no_grad():
            logits, _ = m(x)
        i = t - (end - L) - 1  # the place in the window whose next token is t
        assert i >= L - S
        want.append(torch.nn.functional.cross_entropy(logits[0, i], torch.tensor(int(tokens[t]))).item())
    assert got.shape == (N,) and torch.allclose(got, torch.tensor(want), atol=1e-5)
    # a stride of the whole window is the non-overlapping protocol on the same targets
    same = sliding_losses(m, tokens, L, L, L, 4 * L, 7, 'cpu', torch.no_grad())
    assert torch.allclose(same, window_losses(m, tokens[L:5 * L + 1], L, 10 ** 6, 'cpu', torch.no_grad()).reshape(-1), atol=1e-6)


def test_eval_sliding_protocol(trained, tmp_path):
    out = tmp_path / 'ev'
    p = run('eval.py', '--ckpt', trained / 'expe', '--ev', 1, 2, '--windows', 1, '--stride', 8, '--out', out,
            '--device', 'cpu')
    assert 'advanced by 8, each scoring its last 8' in p.stdout and 'same 512 target tokens' in p.stdout
    result = json.loads((out / 'eval.json').read_text())
    cells = result['rows'][0]['cells']
    assert result['stride'] == 8 and [cells[k]['context'] for k in ('1', '2')] == [24, 56]
    assert [cells[k]['windows'] for k in ('1', '2')] == [64, 64] and {cells[k]['tokens'] for k in ('1', '2')} == {512}
    plain = run('eval.py', '--ckpt', trained / 'expe', '--ev', 1, 2, '--windows', 1, '--out', tmp_path / 'plain',
                '--device', 'cpu')
    other = json.loads((tmp_path / 'plain' / 'eval.json').read_text())['rows'][0]['cells']
    assert cells['1']['loss'] != other['1']['loss']  # another protocol: other context for the same number of tokens
    one_line_error(run('eval.py', '--ckpt', trained / 'expe', '--ev', 1, 2, '--stride', 64, '--out', tmp_path / 'x',
                       '--device', 'cpu', check=False), '--stride 64', 'at most the shortest window', '1x = 32')
    one_line_error(run('eval.py', '--ckpt', trained / 'expe', '--stride', -1, '--out', tmp_path / 'y', '--device', 'cpu',
                       check=False), '--stride -1')


def test_eval_scale(trained, tmp_path):
    p = run('eval.py', '--ckpt', trained / 'expe', trained / 'learned', '--ev', 2, '--scale', 0.5, '--windows', 1,
            '--out', tmp_path, '--device', 'cpu')
    rows = [line for line in p.stdout.splitlines() if line.startswith('| ')][1:]
    assert rows[0].split(' | ')[2] == '0.5'
    assert 'n/a (pos_scale means nothing for pe=learned)' in rows[1]
    scaled = json.loads((tmp_path / 'eval.json').read_text())['rows'][0]['cells']['2']['loss']
    again = ['eval.py', '--ckpt', trained / 'expe', '--ev', 2, '--windows', 1, '--out', tmp_path, '--device', 'cpu']
    before = (tmp_path / 'eval.json').read_bytes()
    one_line_error(run(*again, check=False), str(tmp_path), '--overwrite')  # an earlier eval is never replaced silently
    assert (tmp_path / 'eval.json').read_bytes() == before
    run(*again, '--overwrite')
    plain = json.loads((tmp_path / 'eval.json').read_text())['rows'][0]['cells']['2']['loss']
    assert abs(scaled - plain) > 1e-6  # the scale reached the model


def test_sample(trained, tmp_path):
    prompt = tmp_path / 'prompt.txt'
    prompt.write_text('the king')
    for pe in ('expe', 'learned'):  # 100 new tokens run past block_size=32 for both
        p = run('sample.py', '--ckpt', trained / pe, '--start', f'FILE:{prompt}', '--num_samples', 2,
                '--max_new_tokens', 100, '--device', 'cpu')
        samples = p.stdout.split('---------------\n')
        assert len(samples) == 3 and samples[0].startswith('the king') and len(samples[0]) > 50
    a = run('sample.py', '--ckpt', trained / 'expe', '--seed', 1, '--max_new_tokens', 30, '--device', 'cpu').stdout
    b = run('sample.py', '--ckpt', trained / 'expe', '--seed', 1, '--max_new_tokens', 30, '--device', 'cpu').stdout
    assert a == b


def test_bad_input(data_dir, trained, tmp_path):
    base = [*TINY, f'--data_dir={data_dir}', f'--out_dir={tmp_path / "x"}', '--max_iters=1']
    one_line_error(run('train.py', *base, '--pe=bogus', check=False), "unknown pe 'bogus'", 'expe')
    one_line_error(run('train.py', *base, '--n_layr=3', check=False), "unknown config key 'n_layr'")
    one_line_error(run('train.py', *base, '--n_layer=two', check=False), 'n_layer must be of type int')
    one_line_error(run('train.py', *base, tmp_path / 'nope.py', check=False), 'config file', 'not found')
    one_line_error(run('train.py', *base, f'--data_dir={tmp_path / "missing"}', check=False), 'prepare.py')
    one_line_error(run('train.py', *base, '--init_from=resume', check=False), 'no checkpoint')
    # resuming a checkpoint with another model config
    one_line_error(run('train.py', *TINY, f'--data_dir={data_dir}', f'--out_dir={trained / "expe"}',
                       '--init_from=resume', '--pe=rope', '--max_iters=41', check=False),
                   "trained with pe='expe'", "pe='rope'")
    # a truncated shard
    bad = tmp_path / 'bad'
    bad.mkdir()
    for f in ('val_000000.bin', 'train_000001.bin', 'meta.json'):
        (bad / f).write_bytes((data_dir / f).read_bytes())
    (bad / 'train_000001.bin').write_bytes((data_dir / 'train_000001.bin').read_bytes()[:-10])
    one_line_error(run('train.py', *base, f'--data_dir={bad}', check=False), 'corrupt shard', 're-run prepare.py')
    # eval / sample on a missing or foreign checkpoint
    one_line_error(run('eval.py', '--ckpt', tmp_path / 'none', check=False), 'no checkpoint', 'train.py')
    one_line_error(run('sample.py', '--ckpt', tmp_path / 'none', check=False), 'no checkpoint')
    foreign = tmp_path / 'foreign'
    foreign.mkdir()
    torch.save({'weights': {}}, foreign / 'ckpt.pt')
    one_line_error(run('eval.py', '--ckpt', foreign, check=False), 'not a checkpoint of this project')
    ck = torch.load(trained / 'expe' / 'ckpt.pt', weights_only=True)
    ck['model_args']['n_embd'] = 64  # weights no longer fit the settings
    torch.save(ck, foreign / 'ckpt.pt')
    one_line_error(run('eval.py', '--ckpt', foreign, check=False), 'does not match')
