"""The synthetic tasks of data.TASKS wired through train.py (task=<name>: rows from the batch's seeded RNG, the
loss on the answers only, resume exact) and eval_tasks.py (--tasks <name>: the task's grid, the same rows for every
checkpoint, in- and out-of-distribution groups, a heat map, n/a where a pe cannot run, one-line errors); and the
grid's scoring itself against an oracle and a model that repeats its input."""
import json

import pytest
import torch
import torch.nn.functional as F

from data import TASK_KNOBS, TASKS, Batches, get_tokenizer
from evaluation import answer_runs, answers_right, run_grid
from test_pes import byte_data  # noqa: F401  (a fixture: the small byte corpus of test_pes.py)
from test_scripts import log_of, one_line_error, run

encode, decode, EOT, _ = get_tokenizer('byte')
GRID_TASKS = [t for t, c in TASKS.items() if c.grid]  # passkey and addition have grids of their own
SMALL = {'flipflop_p': 0.8, 'mqar_pairs': 3, 'mqar_queries': 2, 'copy_n': 4, 'needle_keys': 2, 'vartrack_chains': 1,
         'vartrack_hops': 1}
T = 64  # holds a training row of every task at SMALL


def task(name):
    return TASKS[name]({k: SMALL[k] for k in TASKS[name].knobs}, encode, EOT)


class Oracle(torch.nn.Module):
    """A 'model' whose logits say, at every position, the true next token (or, with repeat, the current token)."""
    def __init__(self, block_size, repeat=False, max_len=None):
        super().__init__()
        self.config = type('Config', (), {'block_size': block_size, 'pe': 'oracle'})()
        self.repeat, self.max_len, self.scalable, self.ids = repeat, max_len, False, None

    def forward(self, idx):
        nxt = idx if self.repeat else torch.cat((self.ids[:, 1:], self.ids[:, -1:]), 1)[:, :idx.size(1)]
        return F.one_hot(nxt, 257).float(), None


def grid_of(model, t, evs=(1, 2), problems=5):
    orig = answers_right

    def with_truth(m, examples, eot, *a):  # hand the oracle the padded rows it is scored on
        width = max(len(e) for e, _ in examples)
        m.ids = torch.tensor([e + [eot] * (width - len(e)) for e, _ in examples])
        return orig(m, examples, eot, 10 ** 9, *a[1:])
    import evaluation
    evaluation.answers_right = with_truth
    try:
        return run_grid(model, t, list(evs), problems, 1337, 10 ** 9, 'cpu', torch.no_grad())
    finally:
        evaluation.answers_right = orig


def test_answer_runs():
    assert answer_runs([False, True, True, False, True, False, True]) == [(1, 3), (4, 5), (6, 7)]
    assert answer_runs([False, False]) == []


@pytest.mark.parametrize('name', GRID_TASKS)
def test_an_oracle_scores_every_cell_and_a_repeater_none(name):
    t = task(name)
    perfect = grid_of(Oracle(T), t)
    cells = [c for row in perfect['grid'].values() for c in row.values()]
    assert cells and all(c['acc'] == 1.0 and c['rows'] == 5 and c['answers'] >= 5 for c in cells)
    assert [c['id'] for c in cells].count(True) == 1  # the trained condition at the trained length
    repeat = grid_of(Oracle(T, repeat=True), t)
    # every answer's first token differs from the token before it (a read bit follows 'r', a value its key, a copy '|')
    assert all(c['acc'] == 0.0 for row in repeat['grid'].values() for c in row.values())


@pytest.mark.parametrize('name', GRID_TASKS)
def test_the_grid_gives_every_checkpoint_the_same_rows(name):
    """Each cell's rows come from an RNG seeded by (seed, condition, column): the same for every checkpoint, and a
    column asked alone gets the rows it gets beside others."""
    t = task(name)
    orig = t.example

    def rows_by_cell(evs):
        seen = {}
        t.example = lambda rng, length, **k: seen.setdefault((length, tuple(sorted(k.items()))), []).append(
            orig(rng, length, **k)) or seen[(length, tuple(sorted(k.items())))][-1]
        grid_of(Oracle(T), t, evs=evs)
        return seen
    both, alone, again = rows_by_cell((1, 2)), rows_by_cell((2,)), rows_by_cell((1, 2))
    assert both == again and alone and all(both[cell] == rows for cell, rows in alone.items())
    assert len({str(rows) for rows in both.values()}) == len(both)  # and every cell its own rows


def test_the_grid_is_na_where_the_pe_cannot_run():
    res = grid_of(Oracle(T, max_len=T), task('needle'), evs=(1, 2))
    assert 'acc' in res['grid']['trained']['1x'] and res['grid']['trained']['2x']['na'] == 'pe=oracle accepts at most 64 positions'


def test_copy_columns_are_string_lengths():
    cols = task('copy').columns(T, [1, 2, 4])
    assert [(label, length, s) for label, length, s, _ in cols] == [('n=4', 10, {'n': 4}), ('n=8', 18, {'n': 8}),
                                                                   ('n=16', 34, {'n': 16})]


@pytest.mark.parametrize('name', GRID_TASKS)
def test_training_rows_mask_all_but_the_answers(name):
    b = Batches('', T, 6, 1337, task=name, task_settings={k: SMALL[k] for k in TASKS[name].knobs})
    x, y, _ = b.get('train', 0)
    x2, y2, _ = b.get('train', 0)
    assert torch.equal(x, x2) and torch.equal(y, y2)  # batch k is the same batch every time: resume is exact
    for row_x, row_y in zip(x, y):
        kept = (row_y != -1).nonzero().flatten().tolist()
        assert kept and all(row_y[i] == row_x[i + 1] for i in kept if i + 1 < T)  # y is x shifted, where kept
    assert (y != -1).float().mean() < 0.6  # the loss sees the answers, not the whole row


def test_task_train_and_eval_from_the_command_line(tmp_path):
    base = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--batch_size=8', '--compile=False', '--device=cpu',
            '--eval_iters=2', '--warmup_iters=2', '--learning_rate=3e-3', '--block_size=32', '--task=copy', '--copy_n=4',
            '--max_iters=6', '--eval_interval=3', '--log_interval=3']
    out = tmp_path / 'copy'
    run('train.py', *base, f'--out_dir={out}')
    ck = torch.load(out / 'ckpt.pt', weights_only=False)
    assert ck['config']['task'] == 'copy' and ck['meta']['tokenizer'] == 'byte'
    # resumed from step 3, the same losses as the run that went straight to 6
    run('train.py', *base, '--max_iters=3', f'--out_dir={tmp_path / "r"}')
    run('train.py', *base, f'--out_dir={tmp_path / "r"}', '--init_from=resume')
    losses = lambda d: [r['loss'] for r in log_of(d) if 'loss' in r]
    assert losses(out) == losses(tmp_path / 'r')
    ev = tmp_path / 'ev'
    p = run('eval_tasks.py', '--ckpt', out, '--tasks', 'copy', '--ev', 1, 2, '--problems', 4, '--out', ev, '--device', 'cpu')
    assert '| checkpoint | pe | seed | scale | ID | OOD | n=4 | n=8 |' in p.stdout
    row = json.loads((ev / 'tasks.json').read_text())['rows'][0]
    assert row['copy']['columns'] == ['n=4', 'n=8'] and (ev / 'copy_0_expe.png').stat().st_size > 1000
    one_line_error(run('eval_tasks.py', '--ckpt', out, '--tasks', 'flipflop', '--out', tmp_path / 'x', '--device', 'cpu',
                       check=False), 'not trained on flipflop', "task='copy'")
    one_line_error(run('train.py', *base, '--block_size=8', f'--out_dir={tmp_path / "y"}', check=False),
                   'copy_n=4', 'needs 10 tokens, more than 8')
    one_line_error(run('train.py', *base, '--flipflop_p=0.5', f'--out_dir={tmp_path / "z"}', check=False),
                   'flipflop_p=0.5 only applies to task=flipflop')


def test_task_knobs_have_one_default_each():
    for name, t in TASKS.items():
        for k, v in t.knobs.items():
            assert TASK_KNOBS[k] == v, (name, k)  # copy and reverse share copy_n: one default


def test_passkey_and_addition_batches_are_those_from_before_the_task_mechanism(byte_data):  # noqa: F811
    """The batches of task=addition and of task=passkey with task_frac=0.5 hash to what the code before `task` gave
    (its addition_digits=4 and passkey_frac=0.5, computed at c6bf777): the committed passkey and addition runs are
    reproduced by the same settings."""
    import hashlib

    def digest(b):
        m = hashlib.sha256()
        for split in ('train', 'val'):
            for k in range(3):
                x, y, _ = b.get(split, k)
                m.update(x.numpy().tobytes())
                m.update(y.numpy().tobytes())
        return m.hexdigest()[:16]
    assert digest(Batches('', 16, 128, 1337, task='addition', task_settings={'addition_digits': 4})) == 'a402786a9166c38c'
    assert digest(Batches(str(byte_data), 128, 16, 1337, task='passkey', task_frac=0.5)) == '7609f348a05990c8'
