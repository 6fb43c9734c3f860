"""Reference values for every pe: what the model really applies at hand-picked positions, seen from outside
(SDPA's q, k, v and mask, the normalized attention input, the first block's input), against each paper's
formula written out here. No helper of model.py is called, so a flipped sign, a reversed frequency order or
an off-by-one position there turns a test red. Positions past the prefix come through the KV cache, so
positions such as 37, 100 or 500 (past block_size) are checked too. The pes added later (kerple, prope, cope,
fox, and logn_attn) have theirs in test_pes.py."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import model as M
from model import GPT, GPTConfig, KVCache

V, T0, L, H, C = 64, 16, 2, 4, 32
D = C // H  # 8: RoPE frequencies 1, 0.1, 0.01, 0.001, so a reversed order cannot pass


def cfg(pe, **kw):
    args = {'block_size': T0, 'vocab_size': V, 'n_layer': L, 'n_head': H, 'n_embd': C, 'pe': pe, 'dropout': 0.0}
    return GPTConfig(**{**args, **kw})


def make(pe, seed=0, **kw):
    """A small model in eval mode, its q/k/v projection biases non-zero (a dropped bias shows)."""
    torch.manual_seed(seed)
    m = GPT(cfg(pe, **kw)).eval()
    with torch.no_grad():
        for b in m.transformer.h:
            b.attn.c_attn.bias.normal_(0.0, 0.1)
    return m


def close(got, want, atol=1e-5):
    torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=atol)


def observe(m, monkeypatch, past=0, T=4, pos=None, B=1, seed=1):
    """Run m on past + T random tokens: the first `past` alone, then the last T through the KV cache (at
    positions past..past+T-1). Returns idx, the first block's input of every position (emb), and per block:
    x, its normalized attention input (ln_1's output) at every position; q at every position (from both calls);
    k, v, mask, causal: what the last call handed to SDPA (k, v of every position, through the cache)."""
    calls = []
    real = F.scaled_dot_product_attention

    def sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kw):
        calls.append({'q': q.detach().clone(), 'k': k.detach().clone(), 'v': v.detach().clone(),
                      'mask': None if attn_mask is None else attn_mask.detach().clone(), 'causal': is_causal})
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kw)
    monkeypatch.setattr(M.F, 'scaled_dot_product_attention', sdpa)
    ln1, emb = [[] for _ in m.transformer.h], []
    hooks = [b.ln_1.register_forward_hook(lambda mod, i, o, k=k: ln1[k].append(o.detach().clone()))
             for k, b in enumerate(m.transformer.h)]
    hooks.append(m.transformer.h[0].register_forward_pre_hook(lambda mod, i: emb.append(i[0].detach().clone())))
    idx = torch.randint(0, V, (B, past + T), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        if past:
            cache = KVCache(m.config.n_layer)
            m(idx[:, :past], cache=cache)
            m(idx[:, past:], cache=cache)
        else:
            m(idx, pos=pos)
    for h in hooks:
        h.remove()
    n = m.config.n_layer
    assert len(calls) == n * (2 if past else 1)  # one SDPA call per block and forward
    blocks = []
    for layer in range(n):
        last = calls[len(calls) - n + layer]
        blocks.append({'x': torch.cat(ln1[layer], dim=1), 'q': torch.cat([c['q'] for c in calls[layer::n]], dim=2),
                       'k': last['k'], 'v': last['v'], 'mask': last['mask'], 'causal': last['causal']})
    return idx, torch.cat(emb, dim=1), blocks


def qkv(m, layer, x):
    """The un-rotated q, k, v of block `layer` from its normalized attention input x (B, T, C), split into
    heads (B, H, T, C/H) as attention splits them."""
    a, (B, T, C_), nh = m.transformer.h[layer].attn.c_attn, x.shape, m.config.n_head
    out = F.linear(x.double(), a.weight.double(), a.bias.double()).split(C_, dim=-1)
    return [t.view(B, T, nh, C_ // nh).transpose(1, 2) for t in out]


def rope_by_hand(x, pos, base=10000.0):
    """Su et al., rotate-half pairing: dims (j, j + D/2) as one complex number, times exp(i·n·base^(-2j/D))."""
    x = x.double()
    d = x.size(-1)
    theta = base ** (-2 * torch.arange(d // 2, dtype=torch.float64) / d)
    ang = torch.as_tensor(pos, dtype=torch.float64)[..., None] * theta
    z = torch.complex(x[..., :d // 2], x[..., d // 2:]) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat((z.real, z.imag), dim=-1)


def bias_of(blk):
    """The float bias SDPA got, as (H, Tq, Tk) of the first row (whatever leading dims it carries)."""
    mask = blk['mask']
    assert mask is not None and mask.is_floating_point()
    return mask.expand(*blk['q'].shape[:2], *mask.shape[-2:])[0].double()


def causal_grid(past, T):
    """Query and key positions (T, 1) and (1, past + T) of the last call, and the causal part."""
    i = torch.arange(past, past + T)[:, None]
    j = torch.arange(past + T)[None, :]
    return i, j, j <= i


# -----------------------------------------------------------------------------
# expe, exqpe: dims i < l of the Q and K input are overwritten (docs/expe.md); seen through q, k, v

def check_override(m, blocks, values, v_too=False):
    """q, k (and v if v_too) of every block are the projections of x with dims i < l replaced by
    values (positions, l) and dims l.. untouched (so an override of dim l fails too)."""
    for layer, blk in enumerate(blocks):
        x = blk['x'].double()
        over = x.clone()
        over[0, :, :values.size(1)] = values
        q, k, _ = qkv(m, layer, over)
        v = qkv(m, layer, over if v_too else x)[2]
        Tq = blk['q'].size(2)
        close(blk['q'], q[:, :, -Tq:])
        close(blk['k'], k)
        close(blk['v'], v)
        assert (qkv(m, layer, x)[0] - q).abs().max() > 1e-2  # the override does change q


@pytest.mark.parametrize('past', [0, 100])
@pytest.mark.parametrize('kw, S, theta, l, s', [
    ({}, 0.0, 1 / 32, 8, 1.0),  # the paper's S = 0, θ = 1/(2T) at T = 16; l = n_embd/4
    ({'expe_start': 0.25, 'expe_theta': 0.01, 'expe_dims': 5, 'pos_scale': 0.5}, 0.25, 0.01, 5, 0.5),
    ({'expe_v': True}, 0.0, 1 / 32, 8, 1.0),
], ids=['default', 'knobs', 'expe_v'])
def test_expe_values(kw, S, theta, l, s, past, monkeypatch):
    m = make('expe', **kw)
    _, _, blocks = observe(m, monkeypatch, past=past, T=6)
    n = torch.arange(past + 6, dtype=torch.float64)[:, None]
    i = torch.arange(l, dtype=torch.float64)[None, :]
    values = s * (S + theta * (n + i))  # Eq. 3: dim i of position n holds S + θ(n + i), times pos_scale
    if not kw:  # a few by hand: (n, i) = (5, 0), (5, 1), (5, 7), and (100, 7) = 107/32
        assert values[5, 0] == 5 / 32 and values[5, 1] == 6 / 32 and values[5, 7] == 12 / 32
        assert past == 0 or values[100, 7] == 107 / 32
    check_override(m, blocks, values, v_too=kw.get('expe_v', False))


@pytest.mark.parametrize('past', [0, 100])
@pytest.mark.parametrize('kw, S, step, period, l, s', [
    ({}, 0.0, 1 / 8, 8, 8, 1.0),  # δ: the power of two nearest l/(2T) = 8/48 = 1/6 is 1/8; period l
    ({'expe_start': 0.25, 'exqpe_step': 0.5, 'exqpe_period': 3, 'expe_dims': 5, 'pos_scale': 0.5},
     0.25, 0.5, 3, 5, 0.5),
], ids=['default', 'knobs'])
def test_exqpe_values(kw, S, step, period, l, s, past, monkeypatch):
    m = make('exqpe', block_size=24, **kw)
    _, _, blocks = observe(m, monkeypatch, past=past, T=6)
    values = torch.tensor([[s * (S + step * math.floor((n + i) / period)) for i in range(l)]
                           for n in range(past + 6)], dtype=torch.float64)
    if not kw:  # position 5: dims 0..2 hold 0, dims 3..7 hold 1/8 (n + i reaches 8 at i = 3)
        assert values[5].tolist() == [0, 0, 0] + [1 / 8] * 5
    check_override(m, blocks, values)


# -----------------------------------------------------------------------------
# rope (and randpe at evaluation, tape at init): every q, k rotated by n·θ_j, at positions 0..past+3

@pytest.mark.parametrize('past', [0, 37, 100])
@pytest.mark.parametrize('pe, kw', [('rope', {}), ('rope', {'rope_base': 500.0}), ('rope', {'pos_scale': 0.5}),
                                    ('randpe', {}), ('tape', {})])
def test_rope_rotation(pe, kw, past, monkeypatch):
    m = make(pe, **kw)
    _, _, blocks = observe(m, monkeypatch, past=past)
    pos = torch.arange(past + 4) * kw.get('pos_scale', 1.0)
    base = kw.get('rope_base', 10000.0)
    for layer, blk in enumerate(blocks):
        q, k, v = qkv(m, layer, blk['x'])
        close(blk['q'], rope_by_hand(q, pos, base))
        close(blk['k'], rope_by_hand(k, pos, base))
        close(blk['v'][..., :D], v)  # (tape's state rides along after v)
        assert (rope_by_hand(q, pos, base) - q).abs().max() > 1e-2


def test_randpe_train_positions_and_their_rotation(monkeypatch):
    m = make('randpe', randpe_max=40)
    pos = m.pe.train_positions(np.random.default_rng(3), 2, T0)
    assert pos.shape == (2, T0)
    for row in pos.tolist():  # a sorted random subset of [0, randpe_max)
        assert row == sorted(set(row)) and 0 <= row[0] and row[-1] < 40
    assert pos.tolist()[0] != pos.tolist()[1] and pos.max() > T0
    _, _, blocks = observe(m, monkeypatch, T=T0, pos=pos, B=2)
    for layer, blk in enumerate(blocks):  # a training batch rotates each row at its own positions
        q, k, _ = qkv(m, layer, blk['x'])
        close(blk['q'], rope_by_hand(q, pos[:, None, :]))
        close(blk['k'], rope_by_hand(k, pos[:, None, :]))


# -----------------------------------------------------------------------------
# xpos: RoPE, then pair j of q scaled by ζ_j^(n/γ_base), of k by ζ_j^(-n/γ_base), ζ_j = (2j/D + γ)/(1 + γ)

@pytest.mark.parametrize('past', [0, 37, 100])
@pytest.mark.parametrize('gamma, base', [(0.4, 512.0), (0.2, 64.0)])
def test_xpos_rotation_and_decay(gamma, base, past, monkeypatch):
    kw = {} if (gamma, base) == (0.4, 512.0) else {'xpos_gamma': gamma, 'xpos_scale_base': base}
    m = make('xpos', **kw)
    _, _, blocks = observe(m, monkeypatch, past=past)
    n = torch.arange(past + 4, dtype=torch.float64)[:, None]
    zeta = torch.tensor([(2 * j / D + gamma) / (1 + gamma) for j in range(D // 2)], dtype=torch.float64)
    scale = (zeta ** (n / base)).repeat(1, 2)  # pair j is dims j and j + D/2
    for layer, blk in enumerate(blocks):
        q, k, _ = qkv(m, layer, blk['x'])
        close(blk['q'], rope_by_hand(q, n[:, 0]) * scale)
        close(blk['k'], rope_by_hand(k, n[:, 0]) / scale)
    assert past == 0 or scale[-1, 0] < 0.95  # the decay is visible at these positions


# -----------------------------------------------------------------------------
# sinusoidal, learned: the first block's input is the token embedding plus the position's row

@pytest.mark.parametrize('past', [0, 37, 100])
@pytest.mark.parametrize('s', [1.0, 0.5])
def test_sinusoidal_embedding(s, past, monkeypatch):
    m = make('sinusoidal', pos_scale=s)
    idx, emb, _ = observe(m, monkeypatch, past=past)
    table = torch.tensor([[f(n * s / 10000 ** (2 * i / C)) for i in range(C // 2) for f in (math.sin, math.cos)]
                          for n in range(past + 4)], dtype=torch.float64)  # (sin, cos) interleaved: 2i, 2i + 1
    close(emb[0], m.transformer.wte.weight[idx[0]].double() + table / math.sqrt(C))


@pytest.mark.parametrize('past', [0, 10])
def test_learned_embedding(past, monkeypatch):
    m = make('learned')
    table, = m.pe.parameters()  # its only parameter: one row per position
    assert table.shape == (T0, C)
    idx, emb, _ = observe(m, monkeypatch, past=past, T=T0 - past)  # up to the last row, 15
    close(emb[0], m.transformer.wte.weight[idx[0]] + table, atol=0)


# -----------------------------------------------------------------------------
# nope: q, k, v are the plain projections, and attention is causal with no bias

@pytest.mark.parametrize('past, T', [(0, 6), (37, 3), (37, 1)])
def test_nope_plain_causal_attention(past, T, monkeypatch):
    m = make('nope')
    _, _, blocks = observe(m, monkeypatch, past=past, T=T)
    for layer, blk in enumerate(blocks):
        q, k, v = qkv(m, layer, blk['x'])
        close(blk['q'], q)
        close(blk['k'], k)
        close(blk['v'], v)
        if past == 0:
            assert blk['causal'] and blk['mask'] is None
        elif T == 1:  # one new token sees every key
            assert not blk['causal'] and blk['mask'] is None
        else:
            assert blk['mask'].dtype == torch.bool and torch.equal(blk['mask'], causal_grid(past, T)[2])


# -----------------------------------------------------------------------------
# alibi: bias[h, i, j] = -m_h·(i - j), m_h = 2^(-8(h+1)/H) for H a power of two; else the slopes of the
# power of two p below H, then every other slope of 2p (Press et al., the authors' get_slopes)

@pytest.mark.parametrize('past', [0, 37])
@pytest.mark.parametrize('n_head, slopes, s', [
    (4, [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8], 1.0),
    (8, [2 ** -1, 2 ** -2, 2 ** -3, 2 ** -4, 2 ** -5, 2 ** -6, 2 ** -7, 2 ** -8], 1.0),
    (6, [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3], 1.0),  # p = 4, then slopes 1 and 3 of 8's
    (4, [2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8], 0.5),  # pos_scale: distances halved
], ids=['H4', 'H8', 'H6', 'H4-scale'])
def test_alibi_bias(n_head, slopes, s, past, monkeypatch):
    m = make('alibi', n_head=n_head, n_embd=48, pos_scale=s)
    _, _, blocks = observe(m, monkeypatch, past=past, T=5)
    i, j, seen = causal_grid(past, 5)
    want = torch.stack([-mh * s * (i - j).double() for mh in slopes]).masked_fill(~seen, -math.inf)
    for blk in blocks:
        close(bias_of(blk), want, atol=1e-6)


# -----------------------------------------------------------------------------
# t5: bias[h, i, j] = b[bucket(i - j), h]; 16 exact distances, then floor(16 + log(d/16)/log(128/16)·16)
# up to bucket 31, shared by every block

def t5_bucket_by_hand(d, n_buckets=32, max_distance=128):
    exact = n_buckets // 2
    if d < exact:
        return d
    return min(n_buckets - 1, exact + int(math.log(d / exact) / math.log(max_distance / exact) * (n_buckets - exact)))


def test_t5_buckets_by_hand():
    # 17: 16 + 16·log(17/16)/log 8 = 16.47; 20: 17.72; 32: 21.33; 40: 23.05; 64: 26.67; 100: 30.10;
    # 127: 31.94 -> 31; 128: 32 -> clamped to 31; 500: 31
    want = {0: 0, 1: 1, 15: 15, 16: 16, 17: 16, 20: 17, 32: 21, 40: 23, 64: 26, 100: 30, 127: 31, 128: 31, 500: 31}
    assert {d: t5_bucket_by_hand(d) for d in want} == want


@pytest.mark.parametrize('past, T', [(0, 20), (490, 11)])
def test_t5_bias(past, T, monkeypatch):
    m = make('t5')
    table, = m.pe.parameters()  # (buckets, heads)
    with torch.no_grad():
        table.normal_()  # distinct values, so that a wrong bucket shows
    _, _, blocks = observe(m, monkeypatch, past=past, T=T)
    i, j, seen = causal_grid(past, T)
    buckets = torch.tensor([[t5_bucket_by_hand(a - b) if b <= a else 0 for b in j[0].tolist()]
                            for a in i[:, 0].tolist()])
    want = table.detach().double()[buckets].permute(2, 0, 1).masked_fill(~seen, -math.inf)
    for blk in blocks:  # one table for every block
        close(bias_of(blk), want, atol=0)


# -----------------------------------------------------------------------------
# fire: bias[h, i, j] = f(ψ(i - j) / (ψ(max(L, i)) + 1e-6))_h, ψ(x) = log(|c|·x + 1), threshold |L·fire_L|,
# f(u) = w2·relu(w1·u + b1) + b2, one set per block

@pytest.mark.parametrize('past', [0, 37])
def test_fire_bias(past, monkeypatch):
    m = make('fire', fire_L=8.0)  # threshold 8: positions past it use ψ(i)
    with torch.no_grad():
        m.pe.blocks[1].c.fill_(-0.3)  # |c| and |L| are what count
        m.pe.blocks[1].L.fill_(-1.5)
    _, _, blocks = observe(m, monkeypatch, past=past, T=5)
    i, j, seen = causal_grid(past, 5)
    for layer, blk in enumerate(blocks):
        b = {k: p.detach().double() for k, p in m.pe.blocks[layer].named_parameters()}
        c, thr = b['c'].abs(), (b['L'] * 8.0).abs()
        psi_i = torch.log(c * torch.maximum(i.double(), thr) + 1)
        u = torch.log(c * (i - j).clamp(min=0).double() + 1) / (psi_i + 1e-6)
        f = torch.relu(u[..., None] * b['w1'] + b['b1']) @ b['w2'].t() + b['b2']  # the MLP itself
        want = f.permute(2, 0, 1).masked_fill(~seen, -math.inf)
        close(bias_of(blk), want)
        assert want[seen.expand(H, -1, -1)].std() > 0.01


# -----------------------------------------------------------------------------
# tape: block 0 rotates like RoPE; block 1 by z1 = z0 + post·(A z0) (+ down·(g ⊙ (up·z)) on the MLP side),
# with A block 0's causal attention probabilities and z0[n, j] = exp(i·n·θ_j) (docs/tape.md)

@pytest.mark.parametrize('past', [0, 37])
@pytest.mark.parametrize('mlp_side', [False, True])
def test_tape_state_update(mlp_side, past, monkeypatch):
    m = make('tape')
    u = m.pe.updates[0]
    post = torch.tensor([[0.5, -1.0, 0.0, 0.25], [2.0, 0.0, 0.5, 0.0],
                         [0.0, 0.75, -0.5, 1.0], [-0.25, 0.0, 1.5, 0.0]])
    with torch.no_grad():
        u.post.copy_(post)  # not symmetric: a transposed mixing shows
        if mlp_side:
            u.up.normal_(0.0, 0.5)
    f = []
    m.transformer.h[0].mlp.register_forward_hook(lambda mod, i, o: f.append(o.detach().double()))
    _, _, (b0, b1) = observe(m, monkeypatch, past=past, T=4)
    N = past + 4
    theta = 10000.0 ** (-2 * torch.arange(D // 2, dtype=torch.float64) / D)
    ang = torch.arange(N, dtype=torch.float64)[:, None] * theta
    z0 = torch.polar(torch.ones_like(ang), ang)  # (N, D/2), every head
    A = (b0['q'].double() @ b0['k'].double().transpose(-1, -2) / math.sqrt(D))
    A = A.masked_fill(torch.ones(N, N, dtype=torch.bool).triu(1), -math.inf).softmax(-1)  # (1, H, N, N)
    z = z0 + torch.einsum('gh,bhtf->bgtf', post.to(z0.dtype), A.to(z0.dtype) @ z0)
    if mlp_side:
        g = F.silu(torch.cat(f, dim=1) @ u.gate.weight.detach().double().t())  # (1, N, I)
        up = torch.einsum('ih,bhtf->bitf', u.up.detach().double().to(z.dtype), z)
        down = u.down.detach().double().to(z.dtype)
        z = z + torch.einsum('hi,bitf->bhtf', down, g.transpose(1, 2)[..., None] * up)
    q, k, _ = qkv(m, 1, b1['x'])

    def rot(x):
        y = torch.complex(x[..., :D // 2], x[..., D // 2:]) * z
        return torch.cat((y.real, y.imag), dim=-1)
    close(b1['q'], rot(q))
    close(b1['k'], rot(k))
    assert (rot(q) - rope_by_hand(q, torch.arange(N))).abs().max() > 1e-2  # the update does move block 1
