"""Every pe is wired in (its logits differ from nope's), the four baselines of issue 13 against
independent references (HF transformers' T5 bucketing and bias, x-transformers' xPos, FIRE at
hand-computed points, RandPE's positions), and a toy pe added the way a user would, run through
train.py, eval.py, sample.py and bench.py unchanged."""
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model as M
from model import GPT, GPTConfig, PES, KVCache

ROOT = Path(__file__).resolve().parents[1]
V, T0, L, H, C = 64, 16, 2, 4, 32


def cfg(pe, **kw):
    args = dict(block_size=T0, vocab_size=V, n_layer=L, n_head=H, n_embd=C, pe=pe, dropout=0.0)
    return GPTConfig(**{**args, **kw})


def tokens(B, T, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------
# positions matter: a pe that is registered but not wired in behaves as nope, bit for bit

def logits_vs_nope(pe):
    """Max |logits - nope's logits| on random tokens, for a model of `pe` that shares every weight with
    a nope model (attention sharpened, so positions can move it) and whose own parameters are non-zero."""
    torch.manual_seed(0)
    nope = GPT(cfg('nope')).eval()
    with torch.no_grad():
        for blk in nope.transformer.h:
            blk.attn.c_attn.weight.mul_(10)
    m = GPT(cfg(pe)).eval()
    missing, unexpected = m.load_state_dict(nope.state_dict(), strict=False)
    assert not unexpected and all(k.startswith('pe.') for k in missing)
    with torch.no_grad():
        for p in m.pe.parameters():  # zero-initialised parts (TAPE's updates) and tiny ones (T5's table) act
            p.add_(0.5 * torch.randn_like(p))
        idx = tokens(2, T0)  # distinct random tokens: a repeated token gives relative PEs nothing to see
        return (m(idx)[0] - nope(idx)[0]).abs().max().item()


@pytest.mark.parametrize('pe', [pe for pe in PES if pe != 'nope'])
def test_positions_matter(pe):
    assert logits_vs_nope(pe) > 1e-3


def test_positions_matter_catches_an_unwired_pe(monkeypatch):
    """The check above goes red for a pe that is registered but contributes nothing."""
    monkeypatch.setitem(PES, 'unwired', type('Unwired', (M.PE,), {}))
    assert logits_vs_nope('unwired') == 0.0


# -----------------------------------------------------------------------------
# t5: HF transformers' T5 (the decoder's causal buckets, one table shared by all blocks)

@pytest.mark.parametrize('n_buckets, max_distance', [(32, 128), (16, 64), (8, 20)])
def test_t5_buckets_match_hf(n_buckets, max_distance):
    from transformers.models.t5.modeling_t5 import T5Attention
    q = torch.arange(600)[:, None]
    k = torch.arange(600)[None, :]
    want = T5Attention._relative_position_bucket(k - q, bidirectional=False, num_buckets=n_buckets,
                                                 max_distance=max_distance)
    got = M.t5_bucket((q - k).clamp(min=0).float(), n_buckets, max_distance)
    assert torch.equal(got, want)
    assert got.max() == n_buckets - 1 and got[:, 0].unique().numel() == n_buckets  # every bucket is used


@pytest.mark.parametrize('past', [0, 9])
def test_t5_bias_matches_hf(past):
    from transformers import T5Config
    from transformers.models.t5.modeling_t5 import T5Attention
    m = GPT(cfg('t5', n_layer=3))
    with torch.no_grad():
        m.pe.rel.weight.normal_()
    hf = T5Attention(T5Config(d_model=C, d_kv=C // H, num_heads=H, is_decoder=True), has_relative_attention_bias=True)
    with torch.no_grad():
        hf.relative_attention_bias.weight.copy_(m.pe.rel.weight)
    Tq, Tk = 7, past + 7
    want = hf.compute_bias(Tq, Tk, past_seen_tokens=past)[0]
    st = m.pe.setup(torch.arange(past, past + Tq))
    for layer in range(3):  # one table for every block, as T5 (it computes the bias in block 0 and reuses it)
        got = M.dense_bias(m.pe, m.pe.bias_tables(st, layer, None), H, past, Tq, Tk, 'cpu')
        causal = torch.isfinite(got)
        assert causal.sum() == H * (Tq * (past + 1) + Tq * (Tq - 1) // 2)
        assert torch.equal(got[causal], want[causal])
    assert [n for n, _ in m.pe.named_parameters()] == ['rel.weight'] and m.pe.rel.weight.shape == (32, H)


def test_t5_pos_scale_halves_distances():
    m = GPT(cfg('t5', pos_scale=0.5))
    with torch.no_grad():
        m.pe.rel.weight.normal_()
    bias = M.dense_bias(m.pe, None, H, 0, 40, 40, 'cpu')
    for q, k in [(10, 0), (39, 1), (30, 29)]:
        d = (q - k) // 2  # floor(0.5 * distance)
        assert torch.equal(bias[:, q, k], m.pe.rel.weight[M.t5_bucket(torch.tensor(float(d)), 32, 128)])


# -----------------------------------------------------------------------------
# fire: f(ψ(i - j) / ψ(max(L, i))), ψ(x) = log(c·x + 1)

def fire_model(**kw):
    """FIRE with width 2 and hand-set values: w1 = (1, -2), b1 = (0, 0.5), w2 = ((1, 1), (2, -1)),
    b2 = (0.1, -0.2), c = 0.5, threshold L = 10 (one block shared), 2 heads."""
    m = GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=2, n_head=2, n_embd=16, pe='fire', fire_width=2,
                      fire_L=10.0, fire_shared=True, **kw))
    b = m.pe.blocks[0]
    with torch.no_grad():
        b.w1.copy_(torch.tensor([1.0, -2.0]))
        b.b1.copy_(torch.tensor([0.0, 0.5]))
        b.w2.copy_(torch.tensor([[1.0, 1.0], [2.0, -1.0]]))
        b.b2.copy_(torch.tensor([0.1, -0.2]))
        b.c.fill_(0.5)
    return m


@pytest.mark.parametrize('scale', [1.0, 0.5])
def test_fire_at_hand_computed_points(scale):
    m = fire_model(pos_scale=scale)
    bias = M.dense_bias(m.pe, m.pe.bias_tables(m.pe.setup(torch.arange(41)), 0, None), 2, 0, 41, 41, 'cpu')
    s = round(1 / scale)
    # (i, j) = (3, 1): u = log(1 + 0.5·2) / log(1 + 0.5·max(10, 3)) = log 2 / log 6 = 0.3868528;
    # hidden relu(u) = 0.3868528, relu(-2u + 0.5) = 0; heads: u + 0.1 = 0.4868528, 2u - 0.2 = 0.5737056
    # (with pos_scale 0.5, the same numbers at (6, 2))
    assert bias[:, 3 * s, 1 * s].tolist() == pytest.approx([0.4868528, 0.5737056], abs=1e-6)
    # (2, 1): u = log 1.5 / log 6 = 0.2262944: hidden (0.2262944, 0.0474112): heads 0.3737056, 0.2051776
    assert bias[:, 2 * s, 1 * s].tolist() == pytest.approx([0.3737056, 0.2051776], abs=1e-6)
    # (20, 0): past the threshold, ψ(20) / (ψ(max(10, 20)) + 1e-6) = 1 - 1e-6/log(11) = 0.99999958;
    # hidden (0.99999958, 0): heads 1.09999958 and 1.79999917
    assert bias[:, 20 * s, 0].tolist() == pytest.approx([1.09999958, 1.79999917], abs=1e-6)
    # (7, 7): u = 0: hidden (0, 0.5): heads 0.6 and -0.7
    assert bias[:, 7, 7].tolist() == pytest.approx([0.6, -0.7], abs=1e-6)
    # (40, 30) with scale 1: u = log(6) / log(21) = 0.5885184: hidden (0.5885184, 0): 0.6885184, 0.9770368
    if scale == 1.0:
        assert bias[:, 40, 30].tolist() == pytest.approx([0.6885184, 0.9770368], abs=1e-6)


def fire_reference(m, layer, past, Tq, Tk):
    """FIRE's bias from the paper's formula and the MLP itself (no pieces), (H, Tq, Tk) for the causal part."""
    b = m.pe.blocks[0 if m.config.fire_shared else layer]
    s = m.config.pos_scale
    i = torch.arange(past, past + Tq)[:, None].double() * s
    j = torch.arange(Tk)[None, :].double() * s
    c, thr = b.c.double().abs(), (b.L.double() * m.config.fire_L).abs()
    u = torch.log(c * (i - j).clamp(min=0) + 1) / (torch.log(c * torch.maximum(i, thr) + 1) + 1e-6)
    hidden = F.relu(u[..., None] * b.w1.double() + b.b1.double())
    return (hidden @ b.w2.double().t() + b.b2.double()).permute(2, 0, 1)


@pytest.mark.parametrize('kw', [dict(), dict(fire_shared=True), dict(pos_scale=0.5), dict(fire_L=8.0), dict(fire_width=5)])
def test_fire_equals_its_mlp(kw):
    """The pieces (setup) and the binary search (score_bias) give the MLP's values, and its gradients."""
    torch.manual_seed(0)
    m = GPT(cfg('fire', **kw))
    with torch.no_grad():
        for b in m.pe.blocks:  # kinks inside the range of u, a unit that is constant, tied kinks
            b.w1.normal_()
            b.b1.copy_(-b.w1 * torch.rand_like(b.w1))
            b.w1[0], b.b1[0] = 0.0, 0.3
            b.w1[1], b.b1[1] = b.w1[2], b.b1[2]
            b.w2.normal_()
            b.L.fill_(0.5)
    past, Tq, Tk = 5, 30, 35
    st = m.pe.setup(torch.arange(past, past + Tq))
    for layer in range(L):
        got = M.dense_bias(m.pe, m.pe.bias_tables(st, layer, None), H, past, Tq, Tk, 'cpu')
        want = fire_reference(m, layer, past, Tq, Tk)
        causal = torch.isfinite(got)
        assert (got[causal].double() - want[causal]).abs().max() < 1e-5
        assert want[causal].std() > 0.1
        # gradients of every FIRE parameter agree with those of the MLP formula
        w = torch.randn(H, Tq, Tk, dtype=torch.float64) * causal
        blk = m.pe.blocks[0 if m.config.fire_shared else layer]
        params = list(blk.parameters())
        g_got = torch.autograd.grad((got.masked_fill(~causal, 0).double() * w).sum(), params, retain_graph=True)
        g_want = torch.autograd.grad((want * w).sum(), params)
        for p, a, b in zip(params, g_got, g_want):
            assert (a.double() - b).abs().max() < 1e-4 * (1 + b.abs().max()), p.shape


def test_fire_defaults_and_sharing():
    m = GPT(cfg('fire', n_layer=3))
    assert len(m.pe.blocks) == 3
    b = m.pe.blocks[0]
    assert b.w1.shape == (32,) and b.w2.shape == (H, 32) and b.c.item() == pytest.approx(0.1) and b.L.item() == 1.0
    st = m.pe.setup(torch.arange(T0))
    assert torch.allclose(st['fire'][0][2], 1 / (torch.log1p(0.1 * torch.full((T0,), 512.0)) + 1e-6))  # i < L
    assert m.pe.bias_tables(st, 1, None) is not m.pe.bias_tables(st, 2, None)
    s = GPT(cfg('fire', n_layer=3, fire_shared=True))
    assert len(s.pe.blocks) == 1
    st = s.pe.setup(torch.arange(T0))
    assert s.pe.bias_tables(st, 0, None) is s.pe.bias_tables(st, 2, None)


# -----------------------------------------------------------------------------
# randpe: training positions are a sorted random subset of [0, randpe_max); evaluation uses 0..n-1

def test_randpe_train_positions():
    pe = GPT(cfg('randpe')).pe
    assert pe.max_pos == 16 * T0  # default randpe_max = 16 x block_size
    pos = pe.train_positions(np.random.default_rng(7), 64, T0)
    assert pos.shape == (64, T0) and pos.dtype == torch.long
    assert (pos[:, 1:] > pos[:, :-1]).all()  # sorted and distinct
    assert pos.min() >= 0 and pos.max() < 16 * T0
    assert pos.max() >= 15 * T0 and 0.4 < pos.float().mean() / (16 * T0) < 0.6  # spread over the whole range
    assert len({tuple(r) for r in pos.tolist()}) == 64  # every row its own draw
    assert torch.equal(pos, pe.train_positions(np.random.default_rng(7), 64, T0))  # reproducible from the RNG
    assert not torch.equal(pos, pe.train_positions(np.random.default_rng(8), 64, T0))
    small = GPT(cfg('randpe', randpe_max=T0 + 2)).pe.train_positions(np.random.default_rng(0), 4, T0)
    assert small.max() <= T0 + 1 and (small[:, 1:] > small[:, :-1]).all()


def test_randpe_positions_reach_rope():
    """The positions passed in training rotate q and k as RoPE at those positions; without them
    (evaluation), randpe is RoPE at 0..n-1."""
    torch.manual_seed(0)
    rope = GPT(cfg('rope')).eval()
    randpe = GPT(cfg('randpe')).eval()
    randpe.load_state_dict(rope.state_dict())
    idx = tokens(3, T0)
    pos = randpe.pe.train_positions(np.random.default_rng(0), 3, T0)
    with torch.no_grad():
        assert torch.equal(randpe(idx)[0], rope(idx)[0])
        batched = randpe(idx, pos=pos)[0]
        assert (batched - rope(idx)[0]).abs().max() > 1e-3
        for r in range(3):  # row r used its own positions
            assert (batched[r] - randpe(idx[r:r + 1], pos=pos[r])[0][0]).abs().max() < 1e-5
            assert (batched[r] - rope(idx[r:r + 1], pos=pos[r])[0][0]).abs().max() < 1e-5


def test_only_randpe_draws_positions():
    for pe in PES:
        rng = np.random.default_rng(3)
        got = GPT(cfg(pe)).pe.train_positions(rng, 2, T0)
        assert (got is not None) == (pe == 'randpe')
        if got is None:
            assert rng.random() == np.random.default_rng(3).random()  # the batch RNG is left untouched


def test_randpe_max_below_block_size_is_refused():
    with pytest.raises(ValueError, match='randpe_max'):
        GPT(cfg('randpe', randpe_max=T0 - 1))


# -----------------------------------------------------------------------------
# xpos: RoPE with q scaled by ζ_i^(n/512) and k by ζ_i^(-n/512), ζ_i = (2i/D + 0.4) / 1.4

def test_xpos_zeta_is_the_papers():
    # D = 8: ζ = (0/4 + 0.4)/1.4, (1/4 + 0.4)/1.4, (2/4 + 0.4)/1.4, (3/4 + 0.4)/1.4
    zeta = torch.tensor([0.4, 0.65, 0.9, 1.15]) / 1.4
    got = M.xpos_scale(torch.tensor([0, 1, 512, 1000]), 8, 0.4, 512.0)
    assert torch.equal(got[0], torch.ones(8))
    assert torch.allclose(got[2], torch.cat((zeta, zeta)), rtol=1e-6)  # n = 512: ζ^1
    assert torch.allclose(got[3], torch.cat((zeta, zeta)) ** (1000 / 512), rtol=1e-5)


@pytest.mark.parametrize('D, base, T', [(8, 512.0, 64), (16, 16.0, 100)])
def test_xpos_matches_x_transformers(D, base, T):
    from x_transformers.x_transformers import RotaryEmbedding, apply_rotary_pos_emb
    m = GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=1, n_head=2, n_embd=2 * D, pe='xpos', xpos_scale_base=base))
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, T, D), torch.randn(1, 2, T, D)
    st = m.pe.setup(torch.arange(T))
    qo, ko, _ = m.pe.rotate(q, k, k, st, 0)
    ours = qo @ ko.transpose(-1, -2)
    # x-transformers pairs dims (2j, 2j+1), ours (j, j + D/2): the same rotation on permuted dims;
    # it centres positions on the middle of the input, which cancels in q·k
    perm = torch.stack((torch.arange(D // 2), torch.arange(D // 2) + D // 2), dim=-1).flatten()
    rot = RotaryEmbedding(D, use_xpos=True, scale_base=base)
    freqs, scale = rot(torch.arange(T))
    qx = apply_rotary_pos_emb(q[..., perm], freqs, scale)
    kx = apply_rotary_pos_emb(k[..., perm], freqs, scale ** -1)
    theirs = qx @ kx.transpose(-1, -2)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert torch.allclose(ours[..., causal], theirs[..., causal], rtol=1e-4, atol=1e-5)
    rope = (M.apply_rope(q, *M.rope_cos_sin(torch.arange(T), D, 10000.0))
            @ M.apply_rope(k, *M.rope_cos_sin(torch.arange(T), D, 10000.0)).transpose(-1, -2))
    assert (ours - rope)[..., causal].abs().max() > 1e-2  # and it is not plain RoPE


def test_xpos_refuses_inputs_past_its_range():
    m = GPT(cfg('xpos'))
    assert m.max_len == int(96 * 512 / math.log2(1.4 / 0.4)) == 27195
    big = m.pe.setup(torch.tensor([m.max_len - 1]))['xpos_k'][0]  # cos / ζ^(n/512) stays finite
    assert torch.isfinite(big).all() and big.abs().max() > 2.0 ** 90
    with pytest.raises(ValueError, match='at most 27195 positions'):
        m(torch.zeros(1, 27196, dtype=torch.long))
    m.config.pos_scale = 0.5  # half the positions: twice the input
    assert m.max_len == int(2 * 96 * 512 / math.log2(1.4 / 0.4))


# -----------------------------------------------------------------------------
# a toy pe added the way a user would: its class and its name in PES, nothing else

TOY = '''# -----------------------------------------------------------------------------
# toy: ALiBi with a learned slope per head

class Toy(PE):
    scalable = True  # multiplies the distances
    has_bias = True

    def __init__(self, config):
        super().__init__(config)
        self.slopes = nn.Parameter(torch.zeros(config.n_head))

    def score_bias(self, b, h, q_pos, k_pos, tables):
        return -self.slopes[h] * self.config.pos_scale * (q_pos - k_pos)


'''


def add_toy(src):
    """model.py with the toy pe: its section before PES, its name added at the end of PES (whatever is last there)."""
    marker = '# -----------------------------------------------------------------------------\n# Every pe, by the name'
    start = src.index('\nPES = {')
    end = src.index('\n}', start)  # the dict's closing brace
    assert src.count(marker) == 1
    src = src[:end] + "\n    'toy': Toy," + src[end:]
    return src.replace(marker, TOY + marker)


def test_toy_pe_runs_in_every_script(byte_data, tmp_path):
    repo = tmp_path / 'repo'
    repo.mkdir()
    for f in ROOT.glob('*.py'):
        shutil.copy(f, repo / f.name)
    (repo / 'model.py').write_text(add_toy((ROOT / 'model.py').read_text()))
    data = byte_data
    env = dict(os.environ, OMP_NUM_THREADS='1')

    def run(script, *args):
        p = subprocess.run([sys.executable, script, *map(str, args)], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 0, f"{script}: {p.stdout[-1500:]}\n{p.stderr[-2500:]}"
        return p.stdout

    out = tmp_path / 'out'
    run('train.py', '--pe=toy', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=4',
        '--compile=False', '--device=cpu', '--eval_iters=2', '--max_iters=6', '--eval_interval=6',
        '--log_interval=3', f'--data_dir={data}', f'--out_dir={out}')
    ckpt = torch.load(out / 'ckpt.pt', weights_only=False)
    assert ckpt['model_args']['pe'] == 'toy' and ckpt['model']['pe.slopes'].abs().sum() > 0  # it trained
    table = run('eval.py', '--ckpt', out, '--ev', 1, 4, '--windows', 1, '--scale', 0.5, '--out', tmp_path / 'ev',
                '--device', 'cpu')
    row = [line for line in table.splitlines() if line.startswith(f'| {out} |')][0].split(' | ')
    assert row[1] == 'toy' and row[2] == '0.5' and all(0 < float(c.strip(' |')) < 10 for c in row[3:])
    sample = run('sample.py', '--ckpt', out, '--start', 'the king', '--max_new_tokens', 40, '--num_samples', 1,
                 '--device', 'cpu')  # 40 new tokens: past block_size, through the KV cache
    assert sample.startswith('the king') and len(sample) > 40
    bench = run('bench.py', '--pes=rope,toy', '--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16',
                '--vocab_size=64', '--batch_size=2', '--warmup=1', '--repeats=1', '--device=cpu')
    assert re.search(r'^\| gpt2 \| toy \| [\d.]+ \|', bench, re.M)


# -----------------------------------------------------------------------------
# train.py hands randpe's positions to the model in training steps only, and resume stays exact

@pytest.fixture(scope='module')
def byte_data(tmp_path_factory):
    from data import write_shard
    d = tmp_path_factory.mktemp('data')
    rng = random.Random(0)
    words = 'the king is dead long live queen my lord'.split()
    text = [t for _ in range(40) for t in [256] + list(' '.join(rng.choice(words) for _ in range(60)).encode())]
    write_shard(str(d / 'val_000000.bin'), text[:4000], 257)
    write_shard(str(d / 'train_000001.bin'), text, 257)
    (d / 'meta.json').write_text(json.dumps({'tokenizer': 'byte', 'vocab_size': 257, 'eot': 256}))
    return d


def train(data, out, *args):
    common = ['--n_layer=1', '--n_head=2', '--n_embd=16', '--block_size=16', '--batch_size=4', '--compile=False',
              '--device=cpu', '--eval_iters=2', '--log_interval=1', '--dropout=0.1', f'--data_dir={data}']
    p = subprocess.run([sys.executable, str(ROOT / 'train.py'), *common, f'--out_dir={out}', *args], cwd=out.parent,
                       env=dict(os.environ, OMP_NUM_THREADS='1'), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2500:]
    return [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]


def test_train_py_gives_randpe_its_positions_and_resume_is_exact(byte_data, tmp_path):
    rope = train(byte_data, tmp_path / 'rope', '--pe=rope', '--max_iters=2', '--eval_interval=2')
    a = train(byte_data, tmp_path / 'a', '--pe=randpe', '--max_iters=6', '--eval_interval=3')
    # the same weights at step 0 (neither has parameters of its own): evaluation is RoPE at 0..n-1 ...
    assert rope[0]['val_loss'] == a[0]['val_loss'] and rope[0]['train_loss'] == a[0]['train_loss']
    # ... while the training step sees the random positions
    assert [r['loss'] for r in rope if 'loss' in r][0] != [r['loss'] for r in a if 'loss' in r][0]
    # they come from the batch's seeded RNG: an interrupted run resumes bit-exactly
    train(byte_data, tmp_path / 'b', '--pe=randpe', '--max_iters=3', '--eval_interval=3')
    b = train(byte_data, tmp_path / 'b', '--pe=randpe', '--max_iters=6', '--eval_interval=3', '--init_from=resume')
    assert [r['loss'] for r in a if 'loss' in r] == [r['loss'] for r in b if 'loss' in r]


def test_a_bias_undefined_for_future_keys_gives_finite_gradients(monkeypatch):
    """The dense bias path evaluates score_bias for every (query, key) before the causal mask: a pe whose bias is only
    defined for keys at or before the query (log of the distance, no abs) must still get finite gradients."""
    class LogDistance(M.PE):
        has_bias = True

        def __init__(self, config):
            super().__init__(config)
            self.slopes = torch.nn.Parameter(torch.ones(config.n_head))

        def score_bias(self, b, h, q_pos, k_pos, tables):
            return -self.slopes[h] * torch.log1p((q_pos - k_pos).float())  # NaN for a future key (distance < -1)
    monkeypatch.setitem(M.PES, 'logdistance', LogDistance)
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16, pe='logdistance'))
    x = torch.randint(64, (2, 16))
    _, loss = m(x, x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(m.pe.slopes.grad).all() and m.pe.slopes.grad.abs().sum() > 0


def test_a_rope_variant_changes_only_its_frequencies_through_the_hook(monkeypatch):
    """RoPE.frequencies is the one place a variant changes θ_i: here a p-RoPE-like variant keeping the highest
    frequencies (the lowest set to 0: those dims stop rotating), with setup, rotation and cache left to RoPE."""
    class HalfRoPE(M.RoPE):
        def frequencies(self, device):
            inv_freq, m = super().frequencies(device)
            keep = torch.arange(len(inv_freq), device=device) < len(inv_freq) // 2  # θ_i falls with i: keep the fast half
            return inv_freq * keep, m
    monkeypatch.setitem(M.PES, 'halfrope', HalfRoPE)
    c = GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16, pe='halfrope')
    cos, sin = GPT(c).pe.setup(torch.arange(5))['rope']
    D = 8
    for i in range(D // 2):
        theta = 10000.0 ** (-2 * i / D) if i < D // 4 else 0.0
        for n in range(5):
            assert abs(cos[n, i].item() - math.cos(n * theta)) < 1e-6 and abs(sin[n, i + D // 2].item() - math.sin(n * theta)) < 1e-6


# -----------------------------------------------------------------------------
# the encodings of issue 25, each against its paper's formula on hand-picked positions

def sigmoid(x):
    return 1 / (1 + math.exp(-x))


@pytest.mark.parametrize('scale', [1.0, 0.5])
def test_kerple_log_bias_is_the_papers(scale):
    """-r1·log(1 + r2·|i - j|) per head, r1 and r2 clamped at 0.01 (the paper keeps them positive)."""
    m = GPT(cfg('kerple', pos_scale=scale))
    r1, r2 = [1.0, 2.0, 0.5, 0.001], [0.5, 1.0, 2.0, -3.0]  # head 3: both below the clamp
    with torch.no_grad():
        m.pe.r1[1] = torch.tensor(r1)
        m.pe.r2[1] = torch.tensor(r2)
    past, Tq, Tk = 3, 6, 9
    st = m.pe.setup(torch.arange(past, past + Tq))
    bias = M.dense_bias(m.pe, m.pe.bias_tables(st, 1, None), H, past, Tq, Tk, 'cpu')
    for h in range(H):
        a, b = max(r1[h], 0.01), max(r2[h], 0.01)
        for i, j in [(3, 3), (4, 0), (8, 2), (8, 7)]:
            want = -a * math.log(1 + b * scale * (i - j))
            assert bias[h, i - past, j].item() == pytest.approx(want, abs=1e-6)
        assert bias[h, 0, 4].item() == float('-inf')  # key 4 comes after query 3
    assert not torch.equal(m.pe.bias_tables(st, 0, None)[0], m.pe.bias_tables(st, 1, None)[0])  # one set per block


@pytest.mark.parametrize('p, kept', [(0.75, 6), (0.5, 4), (0.0, 0), (1.0, 8)])
def test_prope_rotates_only_the_highest_frequencies(p, kept):
    """Head size 16: 8 pairs with θ_i = 10000^(-2i/16), highest first; p-RoPE keeps the first round(8p) and
    gives the others θ = 0 (cos 1, sin 0: those dims never rotate)."""
    m = GPT(cfg('prope', n_head=2, prope_p=p))
    cos, sin = m.pe.setup(torch.arange(120))['rope']
    for n in (1, 7, 119):
        for i in range(8):
            theta = 10000 ** (-2 * i / 16) if i < kept else 0.0
            for d in (i, i + 8):  # rotate-half pairing: dims i and i + D/2
                assert cos[n, d].item() == pytest.approx(math.cos(n * theta), abs=1e-5)
                assert sin[n, d].item() == pytest.approx(math.sin(n * theta), abs=1e-5)


def test_prope_knob_is_checked():
    with pytest.raises(ValueError, match='prope_p=1.5 is the fraction'):
        GPT(cfg('prope', prope_p=1.5))


def cope_reference(q, k, e, past):
    """CoPE's bias for one head by the paper's formula, in plain Python: gates g_it = σ(q_i·k_t/√D),
    p_ij = Σ_{t=j..i} g_it clamped to npos - 1, bias = q_i·e[p] read between floor(p) and ceil(p)."""
    D, npos = len(q[0]), len(e[0])
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))
    out = {}
    for qi, qv in enumerate(q):
        i = past + qi
        for j in range(i + 1):
            p = min(sum(sigmoid(dot(qv, k[t]) / math.sqrt(D)) for t in range(j, i + 1)), npos - 1)
            lo, hi = math.floor(p), math.ceil(p)
            z = [dot(qv, [e[d][n] for d in range(D)]) for n in (lo, hi)]
            out[i, j] = z[0] + (p - lo) * (z[1] - z[0])
    return out


@pytest.mark.parametrize('past', [0, 4])
def test_cope_bias_is_the_papers(past):
    torch.manual_seed(0)
    m = GPT(cfg('cope', n_head=2, cope_npos=4))  # head size 16; 4 positions, so the clamp is reached
    Tq, Tk = 5, past + 5
    q, k = torch.randn(1, 2, Tq, 16), torch.randn(1, 2, Tk, 16)
    q[0, 1] *= 3  # sharper gates in head 1
    with torch.no_grad():
        m.pe.emb[1].normal_()
    got = m.pe.logit_bias(q, k, m.pe.bias_tables({}, 1, None), past)
    for h in range(2):
        want = cope_reference(q[0, h].tolist(), k[0, h].tolist(), m.pe.emb[1].tolist(), past)
        for (i, j), w in want.items():
            assert got[0, h, i - past, j].item() == pytest.approx(w, abs=1e-4)
    assert torch.isfinite(got).all()  # keys after the query: finite (attention masks them)


def test_cope_gives_gradients_to_its_table_and_the_gates():
    torch.manual_seed(0)
    m = GPT(cfg('cope'))
    x = tokens(2, T0)
    _, loss = m(x, x)
    loss.backward()
    assert m.pe.emb.grad.abs().sum() > 0
    # through the gates σ(q·k) the table's bias reaches q and k's weights too: with the table non-zero, a model
    # whose gates were frozen (detached) would give other gradients
    with torch.no_grad():
        m.pe.emb.normal_()
    m.zero_grad()
    m(x, x)[1].backward()
    g = m.transformer.h[0].attn.c_attn.weight.grad.clone()
    orig = torch.sigmoid
    try:
        torch.sigmoid = lambda t: orig(t.detach())
        m.zero_grad()
        m(x, x)[1].backward()
    finally:
        torch.sigmoid = orig
    assert not torch.allclose(g, m.transformer.h[0].attn.c_attn.weight.grad)


@pytest.mark.parametrize('past', [0, 3])
def test_fox_bias_is_the_sum_of_log_forget_gates_between(past):
    """Query i, key j: Σ_{t=j+1..i} log σ(w_h·x_t + b_h), from each row's own x (the batch index reaches the tables)."""
    torch.manual_seed(0)
    m = GPT(cfg('fox'))
    with torch.no_grad():
        m.pe.gates[1].weight.normal_()
        m.pe.gates[1].bias.copy_(torch.tensor([2.0, 0.0, -1.0, 4.0]))
    Tq, Tk = 6, past + 6
    x = torch.randn(2, Tk, C)  # the normalized attention input of every key
    st = m.pe.setup(torch.arange(past, past + Tq))
    bias = M.dense_bias(m.pe, m.pe.bias_tables(st, 1, m.pe.kept(x, st, 1)), H, past, Tq, Tk, 'cpu', batch=2)
    w, b0 = m.pe.gates[1].weight.tolist(), m.pe.gates[1].bias.tolist()
    for row in range(2):
        for h in range(H):
            logf = [math.log(sigmoid(sum(a * c for a, c in zip(w[h], x[row, t].tolist())) + b0[h])) for t in range(Tk)]
            for i in range(past, past + Tq):
                for j in sorted({0, i // 2, max(i - 1, 0), i}):
                    want = sum(logf[j + 1:i + 1])
                    assert bias[row, h, i - past, j].item() == pytest.approx(want, abs=1e-4)
                assert i + 1 >= Tk or bias[row, h, i - past, i + 1].item() == float('-inf')


def test_fox_kv_cache_keeps_the_forget_gates_of_past_keys():
    """A chunk after a cache sees every earlier key's log f (kept), so its logits equal a full forward's."""
    torch.manual_seed(0)
    m = GPT(cfg('fox')).eval()
    with torch.no_grad():
        for g in m.pe.gates:
            g.weight.normal_()
    idx = tokens(2, 20)
    with torch.no_grad():
        full, _ = m(idx)
        cache = KVCache(L)
        parts = [m(idx[:, :7], cache=cache)[0], m(idx[:, 7:8], cache=cache)[0], m(idx[:, 8:], cache=cache)[0]]
    assert cache.kept[0].shape == (2, H, 20)
    assert (torch.cat(parts, 1) - full).abs().max() < 1e-5


@pytest.mark.parametrize('pe', ['nope', 'rope', 'alibi'])
def test_logn_attn_scales_queries_past_the_training_length(pe, monkeypatch):
    """q at index n is multiplied by max(1, ln(n + 1) / ln(block_size)): untouched inside the training length."""
    seen = []
    orig = M.attention
    monkeypatch.setattr(M, 'attention', lambda q, *a, **kw: seen.append(q) or orig(q, *a, **kw))
    torch.manual_seed(0)
    base = GPT(cfg(pe, n_layer=1))
    scaled = GPT(cfg(pe, n_layer=1, logn_attn=True))
    scaled.load_state_dict(base.state_dict())
    idx = tokens(1, 4 * T0)
    with torch.no_grad():
        base(idx)
        scaled(idx)
    q0, q1 = seen
    for n in (0, T0 - 1, T0, 2 * T0 + 5, 4 * T0 - 1):
        want = max(1.0, math.log(n + 1) / math.log(T0))
        assert (q1[0, :, n] - want * q0[0, :, n]).abs().max() < 1e-6
    assert want > 1.4  # ln(64) / ln(16) = 1.5


def test_logn_attn_refused_where_it_means_nothing():
    with pytest.raises(ValueError, match='logn_attn=True does nothing for pe=learned'):
        GPT(cfg('learned', logn_attn=True))


def test_drope_continues_a_rope_model_without_positions():
    """DroPE's recipe: a rope parent continued as nope. Not an exact start, so only with replace_pe."""
    torch.manual_seed(0)
    parent = GPT(cfg('rope'))
    child = GPT(cfg('nope'))
    with pytest.raises(ValueError, match='pe=nope cannot start from'):
        M.start_from(child, parent.config, parent.state_dict(), 'out/rope')
    M.start_from(child, parent.config, parent.state_dict(), 'out/rope', replace_pe=True)
    for k, v in parent.state_dict().items():
        assert torch.equal(child.state_dict()[k], v)


def test_cope_counts_positions_in_fp32_under_bf16():
    """Under bf16 autocast (CUDA's default) q and k arrive in bf16; the gates' running sum over 600 keys must still be
    exact to fp32's precision, not bf16's (which steps by 2 past 256)."""
    torch.manual_seed(0)
    m = GPT(cfg('cope', n_head=2, cope_npos=1024))
    with torch.no_grad():
        m.pe.emb[0].normal_()
    q, k = torch.randn(1, 2, 4, 16), torch.randn(1, 2, 600, 16)
    want = m.pe.logit_bias(q, k, m.pe.bias_tables({}, 0, None), 596)
    with torch.autocast('cpu', torch.bfloat16):
        got = m.pe.logit_bias(q.bfloat16(), k.bfloat16(), m.pe.bias_tables({}, 0, None), 596)
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.2 * want.abs().max() / 10  # bf16 inputs only: within 2% of the scale
