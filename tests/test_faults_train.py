"""Faults past the up-front checks on the training side (issue 24): pe knobs that passed the checks and crashed at
the first forward, a resume on other batches (the data, the training mix, the number of processes), a full disk
during a resume's log repair, and what the DDP ranks say. Each case: one line, exit != 0, nothing lost."""
import json
import math
import os

import pytest
import torch

import core
from model import GPT, GPTConfig
from test_bad_input import TINY, byte_corpus, one_line_error, run

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
