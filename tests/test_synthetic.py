"""The synthetic tasks of data.py (flip-flop, MQAR, copy, reverse, needle, variable tracking): every row
checked against a brute-force solver of the task's rule that sees the row with its answers masked, the
row's shape and loss mask, seeding, exact match of an oracle and of a model that repeats its input,
min_len and the errors of bad settings, and flip-flop's instruction statistics."""
import re

import numpy as np
import pytest

import data
from data import PromptTooLong, get_tokenizer

encode, decode, EOT, VOCAB = get_tokenizer('byte')
MASK = ord('_')  # no task writes '_': the solvers read the rows with every answer token replaced by it
ROWS = 200

# task -> sizes [(length, settings)] tested, the first at the defaults
SIZES = {
    'flipflop': [(64, {}), (129, {'p_ignore': 0.98}), (40, {'p_ignore': 0.1}), (4, {'p_ignore': 0.5})],
    'mqar': [(64, {}), (200, {'pairs': 16, 'queries': 16, 'gap': 40}), (9, {'pairs': 1, 'queries': 1})],
    'copy': [(40, {}), (30, {'n': 5}), (4, {'n': 1})],
    'reverse': [(40, {}), (30, {'n': 5}), (4, {'n': 1})],
    'needle': [(80, {}), (300, {'keys': 1}), (500, {'keys': 10})],
    'vartrack': [(200, {}), (400, {'chains': 1, 'hops': 0}), (600, {'chains': 4, 'hops': 2})],
}
TASKS = list(SIZES)
CLOSES = {'copy', 'reverse', 'vartrack'}  # their answer ends with an EOT (so running on is wrong)
FILLS = {'flipflop', 'needle', 'vartrack'}  # their content fills the row: no padding (but flip-flop's odd length)
# what the first answer token follows, and what it is drawn from: a model repeating its input is never right there
FIRST_ANSWER = {'flipflop': ('r', '01'), 'mqar': (data.LOWER, data.DIGITS), 'copy': ('|', data.LOWER),
                'reverse': ('|', data.LOWER), 'needle': ('=', data.DIGITS), 'vartrack': ('\n', data.UPPER)}


def example(task, seed, length, **settings):
    return getattr(data, f'{task}_example')(encode, EOT, np.random.default_rng(seed), length, **settings)


def min_len(task, **settings):
    return getattr(data, f'{task}_min_len')(**settings)


def runs(answer):
    """(start, end) of every maximal run of answer tokens."""
    edges = np.diff(np.concatenate([[0], np.asarray(answer, dtype=int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)))


def solved(task, ids, answer):
    """The solver's answers from the row's text, the answer tokens masked: as token lists, closing EOT included."""
    text = decode([MASK if a else t for t, a in zip(ids, answer)])
    return [[t for ch in a for t in encode(ch)] + [EOT] * (task in CLOSES) for a in getattr(data, f'{task}_solve')(text)]


def exact_match(ids, answer, predict):
    """Whether every answer token is predicted: predict(ids)[i] is the prediction of ids[i] from ids[:i]."""
    pred = predict(ids)
    return all(pred[i] == ids[i] for i, a in enumerate(answer) if a)


def match_rate(rows, make_predict):
    return np.mean([exact_match(ids, answer, make_predict(answer)) for ids, answer in rows])


def oracle(task):
    """Predicts every answer token from the solver; nothing elsewhere (those tokens are not scored)."""
    def make(answer):
        def predict(ids):
            pred = [None] * len(ids)
            at = [i for i, a in enumerate(answer) if a]
            for i, t in zip(at, [t for a in solved(task, ids, answer) for t in a]):
                pred[i] = t
            return pred
        return predict
    return make


def repeat(answer):
    return lambda ids: [None] + list(ids[:-1])  # token t+1 = token t


def rows(task, length, settings, n=ROWS, seed=0):
    return [example(task, seed * 10 ** 6 + i, length, **settings) for i in range(n)]


# -----------------------------------------------------------------------------
# the solvers on hand-written rows (the formats, and solvers that are right on their own)

def test_solvers_on_hand_written_rows():
    assert data.flipflop_solve('w1i0r_i1w0i1r_r_') == ['1', '0', '0']
    assert data.mqar_solve('ab12 cd34 ef56QZX|ef__ ab__') == ['56', '12']
    assert data.copy_solve('qhdt|_____') == ['qhdt'] and data.reverse_solve('qhdt|_____') == ['tdhq']
    assert data.needle_solve('xq k\nwxyz=48213\nt bz\nabcd=11111\n\nefgh=22222\nzz\n?abcd=_____') == ['11111']
    text = ('a b\nQZX = 48213\nhs\nAB = 77777\n\nWERT = QZX\nk\nCDE = AB\n\nYUIOP = WERT\nq\n? = 48213\n'
            '_______________')
    assert data.vartrack_solve(text) == ['QZX WERT YUIOP']


# -----------------------------------------------------------------------------
# every row: shape, loss mask, and the answers the solver derives

@pytest.mark.parametrize('task', TASKS)
def test_rows_are_what_the_solver_derives(task):
    for length, settings in SIZES[task]:
        for ids, answer in rows(task, length, settings):
            assert len(ids) == len(answer) == length + 1
            assert ids[0] == EOT and not answer[0]
            assert all(0 <= t < VOCAB for t in ids) and all(type(a) is bool for a in answer)
            # the answer tokens are exactly the solver's answers, each one run of consecutive tokens
            assert [ids[s:e] for s, e in runs(answer)] == solved(task, ids, answer), decode(ids)
            last = max(i for i, a in enumerate(answer) if a)
            assert all(t == EOT for t in ids[last + 1:]) and not any(answer[last + 1:])  # padding: EOT, not scored
            assert EOT not in ids[1:last]  # the only EOTs: the first, a closing one, the padding
            if task in FILLS:
                assert last == length - (task == 'flipflop' and length % 2)


def test_rows_have_the_settings_sizes():
    ids, _ = example('mqar', 1, 200, pairs=16, queries=5, gap=40)
    context, queries = decode(ids).split('|')
    assert len(re.findall(r'[a-z]{2}\d{2}', context)) == 16 and len(re.findall(r'[A-Z]', context)) == 40
    keys = re.findall(r'[a-z]{2}', queries)
    assert len(keys) == 5 == len(set(keys)) and len(set(re.findall(r'[a-z]{2}', context))) == 16
    text = decode(example('needle', 2, 500, keys=10)[0])
    assert len(set(re.findall(r'\n([a-z]{4})=\d{5}\n', text))) == 10
    text = decode(example('vartrack', 3, 600, chains=4, hops=2)[0])
    names = re.findall(r'\n([A-Z]{3,5}) = ', text)
    assert len(names) == 12 == len(set(names)) and len(set(re.findall(r' = (\d{5})\n', text))) == 4
    assert len(decode(example('copy', 4, 30, n=5)[0])) == 11  # 'abcde|abcde': the EOTs are not text
    shuffled, lengths = 0, set()
    for seed in range(30):
        context, queries = decode(example('mqar', seed, 200, pairs=16, queries=16)[0]).split('|')
        keys, asked = re.findall(r'([a-z]{2})\d{2}', context), re.findall(r'([a-z]{2})\d{2}', queries)
        assert sorted(asked) == sorted(keys)  # distinct queries: all 16 keys once
        shuffled += asked != keys
        lengths |= {len(n) for n in re.findall(r'\n([A-Z]+) = ', decode(example('vartrack', seed, 200)[0]))}
    assert shuffled == 30 and lengths == {3, 4, 5}  # queries in random order; names of 3 to 5 letters


def test_needles_and_assignments_are_scattered():
    depths, asked = [], set()
    for ids, _ in rows('needle', 300, {'keys': 3}, n=100):
        text = decode(ids)
        key = re.findall(r'\?([a-z]{4})=', text)[0]
        at = text.index(f'\n{key}=')
        depths.append(at / len(text))
        asked.add(re.findall(r'\n([a-z]{4})=\d', text).index(key))
    assert min(depths) < 0.1 and max(depths) > 0.8 and asked == {0, 1, 2}  # any depth, any of the needles
    interleaved = 0
    for ids, _ in rows('vartrack', 300, {'chains': 2, 'hops': 2}, n=50):
        text = decode(ids)
        chain = data.vartrack_solve(text)[0].split(' ')
        order = re.findall(r'\n([A-Z]{3,5}) = ', text)
        assert [n for n in order if n in chain] == chain  # a chain's assignments come in order
        interleaved += order[:3] != chain and order[3:] != chain
    assert interleaved > 10  # the two chains' assignments mix


@pytest.mark.parametrize('task', TASKS)
def test_rows_are_seeded(task):
    length, settings = SIZES[task][0]
    assert example(task, 7, length, **settings) == example(task, 7, length, **settings)
    assert example(task, 7, length, **settings)[0] != example(task, 8, length, **settings)[0]
    rng = np.random.default_rng(7)  # one generator: the next row is another one
    f = getattr(data, f'{task}_example')
    assert f(encode, EOT, rng, length, **settings)[0] != f(encode, EOT, rng, length, **settings)[0]


# -----------------------------------------------------------------------------
# exact match of reference models

@pytest.mark.parametrize('task', TASKS)
def test_oracle_scores_all_and_repeating_the_input_none(task):
    before, drawn = FIRST_ANSWER[task]
    for length, settings in SIZES[task]:
        some = rows(task, length, settings, n=50, seed=1)
        assert match_rate(some, oracle(task)) == 1.0
        # the argument: the first answer token follows a token it can never be (a read bit follows 'r', an
        # MQAR value a key letter, copy's and reverse's letters the '|', the needle's value '=', the names
        # '\n'), so a model that predicts token t+1 = token t misses it in every row: 0%, for every n >= 1
        for ids, answer in some:
            first = answer.index(True)
            assert chr(ids[first - 1]) in before and chr(ids[first]) in drawn
        assert match_rate(some, repeat) == 0.0


def test_copying_that_runs_on_scores_nothing():
    n = 16
    some = rows('copy', 40, {'n': n}, n=50)
    copier = lambda answer: lambda ids: [None] * (n + 1) + list(ids[:-n - 1])  # token t = token t - n - 1
    letters = lambda answer: [a and i < 2 * n + 2 for i, a in enumerate(answer)]  # the copied letters alone
    assert np.mean([exact_match(ids, letters(answer), copier(answer)) for ids, answer in some]) == 1.0
    assert match_rate(some, copier) == 0.0  # it predicts '|' where the closing EOT is due


def test_flipflop_without_ignores_is_the_previous_bit():
    """With p_ignore = 0 every instruction before a read writes or reads the stored bit: predicting the
    previous instruction's bit is exact on every row; with ignores between it is not."""
    previous_bit = lambda answer: lambda ids: [None, None] + list(ids[:-2])
    assert match_rate(rows('flipflop', 64, {'p_ignore': 0.0}), previous_bit) == 1.0
    assert match_rate(rows('flipflop', 64, {'p_ignore': 0.8}), previous_bit) < 0.9


# -----------------------------------------------------------------------------
# min_len and errors

@pytest.mark.parametrize('task', TASKS)
def test_min_len_fits_and_one_less_is_too_long(task):
    for _, settings in SIZES[task]:
        need = min_len(task, **settings)
        for seed in range(20):  # vartrack's min_len is its longest row (5-letter names): every draw fits
            ids, answer = example(task, seed, need, **settings)
            assert len(ids) == need + 1
            if task != 'vartrack':  # exact: no noise, no padding
                assert answer[-1]
        for short in (need - 1, 0, -3):
            with pytest.raises(PromptTooLong) as e:
                example(task, 0, short, **settings)
            msg = str(e.value)
            assert '\n' not in msg and f'needs {need} tokens, more than {short}' in msg and task in msg
    assert [min_len(t) for t in TASKS] == [4, 59, 34, 34, 60, 191]  # the defaults


BAD = [('flipflop', {'p_ignore': 1.5}, 'p_ignore'), ('flipflop', {'p_ignore': -0.1}, 'p_ignore'),
       ('flipflop', {'p_ignore': float('nan')}, 'p_ignore'), ('flipflop', {'p_ignore': '0.8'}, 'p_ignore'),
       ('mqar', {'pairs': 0}, 'pairs'), ('mqar', {'pairs': 677}, 'pairs'), ('mqar', {'queries': 0}, 'queries'),
       ('mqar', {'pairs': 3, 'queries': 4}, 'queries'), ('mqar', {'gap': -1}, 'gap'),
       ('copy', {'n': 0}, 'n'), ('copy', {'n': -2}, 'n'), ('copy', {'n': 2.5}, 'n'), ('reverse', {'n': True}, 'n'),
       ('needle', {'keys': 0}, 'keys'), ('needle', {'keys': -1}, 'keys'),
       ('vartrack', {'chains': 0}, 'chains'), ('vartrack', {'hops': -1}, 'hops'), ('vartrack', {'chains': 1.0}, 'chains')]


@pytest.mark.parametrize('task,settings,name', BAD)
def test_bad_settings_are_one_line_errors_naming_them(task, settings, name):
    for make in (lambda: min_len(task, **settings), lambda: example(task, 0, 10 ** 4, **settings)):
        with pytest.raises(ValueError) as e:
            make()
        assert type(e.value) is ValueError  # a bad setting, not a prompt too long
        msg = str(e.value)
        assert '\n' not in msg and msg.startswith(f'{task}: {name} must be')


@pytest.mark.parametrize('task', TASKS)
def test_rows_are_character_level_under_gpt2(task):
    enc, dec, eot, _ = get_tokenizer('gpt2')
    length, settings = SIZES[task][0]
    for seed in range(5):
        ids, answer = example(task, seed, length, **settings)
        ids2, answer2 = getattr(data, f'{task}_example')(enc, eot, np.random.default_rng(seed), length, **settings)
        assert answer2 == answer and ids2[0] == eot and len(ids2) == length + 1
        assert dec([t for t in ids2 if t != eot]) == decode(ids)  # the same row, one GPT-2 token a character


def test_a_tokenizer_that_splits_a_character_is_an_error():
    with pytest.raises(ValueError, match="encodes '.' as 2 tokens, not one"):
        data.copy_example(lambda s: [1, 2], EOT, np.random.default_rng(0), 40)


def test_a_bad_length_is_an_error():
    with pytest.raises(ValueError, match='copy: length must be an integer'):
        example('copy', 0, 40.0)


# -----------------------------------------------------------------------------
# flip-flop's distribution

def instructions(rows):
    return [decode(ids)[0::2] for ids, _ in rows]


def test_flipflop_statistics():
    streams = instructions(rows('flipflop', 512, {'p_ignore': 0.8}))
    assert all(s[0] == 'w' and s[-1] == 'r' and len(s) == 256 for s in streams)  # as Liu et al.: write first, read last
    ops = ''.join(streams)
    assert abs(ops.count('i') / len(ops) - 0.8) < 0.02
    middle = ''.join(s[1:-1] for s in streams)  # the i.i.d. instructions
    assert abs(middle.count('i') / len(middle) - 0.8) < 0.01
    assert abs(middle.count('w') / (middle.count('w') + middle.count('r')) - 0.5) < 0.02
    bits = ''.join(decode(ids)[1::2][j] for ids, _ in rows('flipflop', 512, {}, n=20) for j, op in
                   enumerate(decode(ids)[0::2]) if op != 'r')
    assert abs(bits.count('1') / len(bits) - 0.5) < 0.02  # write and ignore bits are uniform
    for p in (0.98, 0.1, 0.0, 1.0):  # the paper's sparse and dense test sets, and the edges
        middle = ''.join(s[1:-1] for s in instructions(rows('flipflop', 512, {'p_ignore': p}, n=40)))
        assert abs(middle.count('i') / len(middle) - p) < 0.02
