"""The addition task: synthetic.py's problems, train.py's addition rows (answer-only loss, exact
resume) and eval_tasks.py's grid of operand lengths."""
import ast
import json
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core import load_checkpoint
from data import TASKS, Batches, PromptTooLong, addition_example, addition_len, addition_operand, addition_text, get_tokenizer
from evaluation import ADDITION_GROUPS, addition_by_pe, addition_group, addition_problems, run_addition
from test_scripts import ROOT, log_of, one_line_error, run

encode, decode, EOT, _ = get_tokenizer('byte')


def addition_row(encode, eot, length, N, rng):
    """A training row of train.py's task=addition (data.Addition), as lists x, y (y = -1 off the answer)."""
    x, y = Batches.xy(*TASKS['addition']({'addition_digits': N}, encode, eot).row(rng, length))
    return x.tolist(), y.tolist()
TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--batch_size=8', '--compile=False', '--device=cpu',
        '--eval_iters=2', '--warmup_iters=2', '--learning_rate=3e-3', '--task=addition', '--addition_digits=3', '--block_size=13']


def unreverse(s):
    return int(s[::-1])


# -----------------------------------------------------------------------------
# the problems

def test_addition_example_is_reversed_and_right():
    assert addition_text(1234, 987) == ('4321+789=', '1222')  # 1234 + 987 = 2221, least significant digit first
    ids, n = addition_example(encode, EOT, 1234, 987)
    assert ids[0] == EOT and ids[-1] == EOT and EOT not in ids[1:-1]
    assert decode(ids) == '4321+789=1222' and n == 5  # 4 digits and the closing EOT
    assert ids[-n:] == encode('1222') + [EOT]
    rng = np.random.default_rng(0)
    for digits in (1, 2, 19, 40):  # past int64 too
        a, b = addition_operand(rng, digits), addition_operand(rng, 41 - digits)
        ids, n = addition_example(encode, EOT, a, b)
        prompt, answer = decode(ids).split('=')
        x, y = prompt.split('+')
        assert (len(x), len(y)) == (digits, 41 - digits)
        assert unreverse(x) == a and unreverse(y) == b and unreverse(answer) == a + b
        assert len(ids) - 1 <= addition_len(digits, 41 - digits)
    assert len(addition_example(encode, EOT, 99, 1)[0]) - 1 == addition_len(2, 1)  # 99 + 1 = 100: the longest 2 x 1


def test_addition_operands_have_exactly_the_digits():
    rng = np.random.default_rng(1)
    ones = {addition_operand(rng, 1) for _ in range(300)}
    assert ones == set(range(1, 10))  # no leading zero: 1..9
    fours = [addition_operand(rng, 4) for _ in range(300)]
    assert all(1000 <= v <= 9999 for v in fours) and len({v // 1000 for v in fours}) == 9
    assert len(str(addition_operand(rng, 60))) == 60


def test_addition_rows_mask_all_but_the_answer():
    rng = np.random.default_rng(2)
    lengths = set()
    for _ in range(200):
        x, y = addition_row(encode, EOT, 20, 5, rng)
        assert len(x) == len(y) == 20 and x[0] == EOT
        text = decode(x)
        prompt, answer = text.split('=')
        a, b = prompt.split('+')
        lengths |= {len(a), len(b)}
        assert unreverse(answer) == unreverse(a) + unreverse(b)
        end = 1 + len(prompt) + 1 + len(answer)  # EOT prompt = answer, then EOT padding
        assert x[end:] == [EOT] * (20 - end)
        # targets: exactly the answer's digits and the EOT that closes it, each at the position before it
        kept = [i for i, t in enumerate(y) if t != -1]
        assert kept == list(range(end - 1 - len(answer), end))
        assert [y[i] for i in kept] == encode(answer) + [EOT]
        assert all(x[i + 1] == y[i] for i in kept[:-1])
    assert lengths == {1, 2, 3, 4, 5}
    again = np.random.default_rng((7, 3))
    assert addition_row(encode, EOT, 20, 5, again) == addition_row(encode, EOT, 20, 5, np.random.default_rng((7, 3)))
    with pytest.raises(PromptTooLong, match='5-digit operands needs 19 tokens, more than 18'):
        for _ in range(200):
            addition_row(encode, EOT, 18, 5, rng)


def test_train_never_imports_an_eval_script():
    tree = ast.parse((ROOT / 'train.py').read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert 'data' in imported and not imported & {'eval', 'eval_tasks'}


# -----------------------------------------------------------------------------
# scoring, with models that add

class Adder(torch.nn.Module):
    """A causal stand-in model: after '=' it predicts the next character of the reversed sum, then
    EOT, when both operands have at most `up_to` digits; else (or when `run_on`) a wrong token."""
    def __init__(self, up_to=10 ** 6, run_on=False, max_len=None):
        super().__init__()
        self.up_to, self.run_on, self.max_len = up_to, run_on, max_len
        self.config = SimpleNamespace(pe='adder', block_size=64)

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, 257)
        for r, row in enumerate(idx.tolist()):
            text = decode(row)
            if '=' not in text:
                continue
            prompt = text[:text.index('=')]
            a, b = prompt.split('+')
            gold = encode(str(unreverse(a) + unreverse(b))[::-1]) + [EOT]
            if self.run_on:
                gold[-1] = ord('0')  # the digits are right, but the answer does not stop
            eq = row.index(ord('='))
            for k, t in enumerate(gold):
                if eq + k < len(row):
                    right = max(len(a), len(b)) <= self.up_to
                    logits[r, eq + k, t if right else ord('7') if t != ord('7') else ord('8')] = 50.0
        return logits, None


def grid_args(**kw):
    return {'digits': 0, 'problems': 6, 'seed': 0, 'batch_tokens': 512, 'device': 'cpu', 'ctx': nullcontext(), 'desc': 'test', **kw}


def test_an_adder_scores_100_and_a_wrong_one_0():
    right = run_addition(Adder(), encode, EOT, 2, **grid_args(problems=12))
    cells = [c for row in right['grid'].values() for c in row.values()]
    assert all(c == {'acc': 1.0, 'n': 12} for c in cells)
    assert all(addition_group(right, g) == '100.0%' for g in ADDITION_GROUPS)
    assert set(right['by_answer_len']) == set(range(1, 10)) and all(c['acc'] == 1.0 for c in right['by_answer_len'].values())
    run_on = run_addition(Adder(run_on=True), encode, EOT, 2, **grid_args())  # a longer answer is wrong
    assert all(c['acc'] == 0.0 for row in run_on['grid'].values() for c in row.values())


def test_the_grid_shape_and_its_groups():
    result = run_addition(Adder(up_to=3), encode, EOT, 3, **grid_args())  # right up to N = 3 digits only
    assert result['N'] == 3 and result['digits'] == 12
    assert list(result['grid']) == list(range(1, 13)) and all(list(row) == list(range(1, 13)) for row in result['grid'].values())
    acc = np.array([[result['grid'][a][b]['acc'] for b in range(1, 13)] for a in range(1, 13)])
    assert (acc[:3, :3] == 1).all() and acc.sum() == 9
    got = {g: addition_group(result, g) for g in ADDITION_GROUPS}
    assert got == {'ID': '100.0%', 'OOD': '0.0%', 'OOD N+1..2N': '0.0%', 'OOD 2N+1..': '0.0%', '2N x 2N': '25.0%'}
    small = run_addition(Adder(), encode, EOT, 3, **grid_args(digits=5))
    assert list(small['grid']) == [1, 2, 3, 4, 5] and addition_group(small, 'OOD') == '100.0%'
    assert addition_group(small, 'OOD N+1..2N') == addition_group(small, '2N x 2N') == 'n/a (needs --digits >= 6)'
    # the same seed draws the same problems in a cell, whatever the grid
    assert addition_problems(0, 4, 2, 6) == addition_problems(0, 4, 2, 6) != addition_problems(1, 4, 2, 6)
    assert all(len(str(a)) == 4 and len(str(b)) == 2 for a, b in addition_problems(0, 4, 2, 6))


def test_checkpoints_of_one_pe_are_pooled():
    right = run_addition(Adder(), encode, EOT, 2, **grid_args())
    one_digit = run_addition(Adder(up_to=1), encode, EOT, 2, **grid_args())  # 1 of the 4 ID cells, 1 of 16 up to 2N
    rows = [{'pe': 'adder', 'scale': 1.0, 'seed': seed, 'addition': res} for seed, res in ((1, right), (2, one_digit))]
    assert '| adder | 1 | 2 | 1 2 | 100.0 / 25.0 | 62.5 ± 37.5% | 50.0 ± 50.0% | 53.1 ± 46.9% |' in addition_by_pe(rows)
    assert addition_by_pe(rows[:1]) == []  # one checkpoint per pe: nothing to pool


def test_cells_past_the_longest_input_are_na():
    limited = run_addition(Adder(max_len=addition_len(3, 3)), encode, EOT, 3, **grid_args())
    assert limited['grid'][3][3] == {'acc': 1.0, 'n': 6}
    assert limited['grid'][4][1] == {'acc': 1.0, 'n': 6}  # 1 + 4 + 1 + 1 + 1 + 5 = 13 input tokens at most: fits
    assert limited['grid'][4][3]['na'] == 'pe=adder accepts at most 13 positions'
    assert addition_group(limited, 'ID') == '100.0%'
    assert addition_group(limited, 'OOD 2N+1..') == 'n/a (pe=adder accepts at most 13 positions)'


# -----------------------------------------------------------------------------
# train.py and eval_tasks.py end to end

@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny model trained 6 steps on 1..3-digit addition (no data_dir: the problems need no shards)."""
    out = tmp_path_factory.mktemp('add') / 'a'
    run('train.py', *TINY, f'--data_dir={out}/none', f'--out_dir={out}', '--pe=rope', '--max_iters=6', '--eval_interval=3',
        '--log_interval=1')
    return out


def test_the_loss_covers_the_answer_only(trained):
    logged = [r for r in log_of(trained) if 'val_loss' in r][-1]
    assert logged['iter'] == 6
    model, ckpt = load_checkpoint(trained)
    model.eval()
    for split in ('train', 'val'):  # the batches train.py drew: batch k of rank 0 seeds (seed, 0, val?, fixed, k)
        rngs = [np.random.default_rng((1337, 0, split == 'val', True, k)) for k in range(2)]
        rows = [addition_row(encode, EOT, 13, 3, rng) for rng in rngs for _ in range(8)]
        x, y = map(torch.tensor, zip(*rows))
        with torch.no_grad():
            logits, _ = model(x)
        per_token = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-1, reduction='none')
        answer = np.mean([per_token[8 * k:8 * k + 8][y[8 * k:8 * k + 8] != -1].mean().item() for k in range(2)])
        everything = F.cross_entropy(logits.transpose(1, 2), x.roll(-1, 1)).item()  # had the loss covered the whole row
        assert logged[f'{split}_loss'] == pytest.approx(answer, abs=1e-5)
        assert abs(logged[f'{split}_loss'] - everything) > 1e-3
    assert ckpt['meta']['tokenizer'] == 'byte' and ckpt['config']['task'] == 'addition' and ckpt['config']['addition_digits'] == 3


def test_resume_is_exact_with_the_addition_task(tmp_path):
    common = [*TINY, '--dropout=0.1', '--lr_decay_iters=10', '--eval_interval=5', '--log_interval=1']
    run('train.py', *common, f'--out_dir={tmp_path / "a"}', '--max_iters=10')
    run('train.py', *common, f'--out_dir={tmp_path / "b"}', '--max_iters=5')
    run('train.py', *common, f'--out_dir={tmp_path / "b"}', '--max_iters=10', '--init_from=resume')
    a = [r['loss'] for r in log_of(tmp_path / 'a') if 'loss' in r]
    b = [r['loss'] for r in log_of(tmp_path / 'b') if 'loss' in r]
    assert len(a) == 10 and a == b
    assert [r['val_loss'] for r in log_of(tmp_path / 'a') if 'val_loss' in r][-1] == \
           [r['val_loss'] for r in log_of(tmp_path / 'b') if 'val_loss' in r][-1]


def test_eval_tasks_addition_end_to_end(trained, tmp_path):
    p = run('eval_tasks.py', '--ckpt', trained, '--tasks', 'addition', '--problems', 4, '--digits', 7, '--out', tmp_path)
    result = json.loads((tmp_path / 'tasks.json').read_text())
    add = result['rows'][0]['addition']
    assert add['N'] == 3 and add['digits'] == 7 and result['rows'][0]['seed'] == 1337
    assert sorted(map(int, add['grid'])) == list(range(1, 8)) and all(len(row) == 7 for row in add['grid'].values())
    assert all(c['n'] == 4 and 0 <= c['acc'] <= 1 for row in add['grid'].values() for c in row.values())
    assert sorted(map(int, add['by_answer_len'])) == list(range(1, 9))
    assert (tmp_path / 'addition_0_rope.png').stat().st_size > 1000
    md = (tmp_path / 'tasks.md').read_text()
    assert md == p.stdout
    assert '| checkpoint | pe | seed | scale | N | grid | ID | OOD | OOD N+1..2N | OOD 2N+1.. | 2N x 2N |' in md
    assert f'| {trained} | rope | 1337 | 1 | 3 | 1..7 |' in md and '| answer digits |' in md


def test_overwrite_removes_the_earlier_heat_maps_it_does_not_redraw(trained, tmp_path):
    args = ['--tasks', 'addition', '--problems', 2, '--digits', 4, '--out', tmp_path]
    run('eval_tasks.py', '--ckpt', trained, trained, *args)
    assert '| rope | 1 | 3 | 1337 1337 |' in (tmp_path / 'tasks.md').read_text()  # two checkpoints of one pe: pooled
    (tmp_path / 'addition_9_mine.png').write_bytes(b'not ours')  # not listed in tasks.json: stays
    assert {p.name for p in tmp_path.glob('*.png')} == {'addition_0_rope.png', 'addition_1_rope.png', 'addition_9_mine.png'}
    run('eval_tasks.py', '--ckpt', trained, *args, '--overwrite')
    assert {p.name for p in tmp_path.glob('*.png')} == {'addition_0_rope.png', 'addition_9_mine.png'}
    assert [r['addition_png'] for r in json.loads((tmp_path / 'tasks.json').read_text())['rows']] == [f'{tmp_path}/addition_0_rope.png']


def test_addition_bad_input(trained, tmp_path):
    base = [*TINY, f'--out_dir={tmp_path}']
    one_line_error(run('train.py', *base, '--addition_digits=-2', check=False), 'addition_digits=-2')
    one_line_error(run('train.py', *[a for a in base if a != '--task=addition'], check=False), 'addition_digits=3',
                   'only applies to task=addition')  # a knob of a task not chosen
    one_line_error(run('train.py', *base, '--block_size=12', check=False), 'block_size >= 13', 'not 12')
    one_line_error(run('train.py', *base, '--task=sudoku', check=False), "task='sudoku'", 'choose one of')
    one_line_error(run('train.py', *base, '--task_frac=0', check=False), 'task_frac=0')
    one_line_error(run('eval_tasks.py', '--ckpt', trained, '--tasks', 'addition', '--problems', 0, check=False), '--problems')
    one_line_error(run('eval_tasks.py', '--ckpt', trained, '--tasks', 'addition', '--digits', -1, check=False), '--digits')
    text = tmp_path / 'text'  # a checkpoint trained on text has no N
    ck = torch.load(trained / 'ckpt.pt', weights_only=False)
    ck['config']['task'] = ''
    text.mkdir()
    torch.save(ck, text / 'ckpt.pt')
    one_line_error(run('eval_tasks.py', '--ckpt', text, '--tasks', 'addition', check=False), 'not trained on addition')
