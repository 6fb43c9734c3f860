"""Behaviour of model.py: every pe x arch (causality, KV cache, length, generate), the exact
values ExPE/ExQPE write into the Q/K input (docs/expe.md), the other PEs against their
textbook formulas, config errors, training sanity, optimizer groups and checkpoints.
Tiny fp32 configs on CPU; every random draw is seeded."""
import math
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import core  # noqa: E402
import model as M  # noqa: E402
from model import ARCHS, PES, GPT, GPTConfig, KVCache  # noqa: E402

V, T0, L, H, C = 64, 16, 2, 4, 32   # vocab, block_size, n_layer, n_head, n_embd
LDIM = C // 4                        # default expe_dims
THETA = 1.0 / (2 * T0)               # default expe_theta = 1/32: every S + θ(n+i) below is exact in fp32
ORIG_PROJECT = M.expe_project


def make(pe='expe', arch='gpt2', seed=0, jitter=True, sharpen=1.0, **kw):
    """Tiny model in eval mode. jitter: random biases and norm gains, so they are not trivially 0/1,
    and the pe's own matrices get N(0, 0.5) noise, so zero or 0.02-std tables (TAPE's updates, T5's
    bias table) really act. sharpen: multiplies every matrix, so that attention (the context) moves the argmax."""
    torch.manual_seed(seed)
    kw.setdefault('dropout', 0.0)
    cfg = GPTConfig(block_size=T0, vocab_size=V, n_layer=L, n_head=H, n_embd=C, arch=arch, pe=pe, **kw)
    m = GPT(cfg).eval()
    if jitter:
        with torch.no_grad():
            for name, p in m.named_parameters():
                if p.dim() <= 1 and name != 'pe.params':
                    p.add_(0.1 * torch.randn_like(p))
                elif p.dim() >= 2:
                    p.mul_(sharpen)
                    if name.startswith('pe.'):
                        p.add_(0.5 * torch.randn_like(p))
    return m


def tokens(B, T, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(V, (B, T), generator=g)


def phi(x, values):
    """Reference φ(x, n) of Eq. 3: x (B, T, C) with its first l channels replaced by values (T, l)."""
    l = values.size(-1)
    return torch.cat((values.to(x.dtype).expand(x.size(0), -1, -1), x[..., l:]), dim=-1)


class Spy:
    """Stands in for model.expe_project: records (x, values, output, reference) of every call, where
    the reference is the projection of the materialized φ(x, n), computed here by hand."""
    def __init__(self):
        self.calls = []

    def __call__(self, c_attn, x, values, n_out):
        out = ORIG_PROJECT(c_attn, x, values, n_out)
        n = n_out * x.size(-1)
        ref = F.linear(phi(x, values), c_attn.weight[:n], None if c_attn.bias is None else c_attn.bias[:n])
        self.calls.append((x.detach().clone(), values.detach().clone(), out.detach().clone(), ref.detach()))
        return out


@pytest.fixture
def spy(monkeypatch):
    s = Spy()
    monkeypatch.setattr(M, 'expe_project', s)
    return s


def ln1_outputs(m):
    """Forward hooks that record the ln_1 output (the normalized attention input) of every block."""
    outs = {}
    handles = [b.ln_1.register_forward_hook(lambda mod, i, o, k=k: outs.__setitem__(k, o.detach().clone()))
               for k, b in enumerate(m.transformer.h)]
    return outs, handles


# -----------------------------------------------------------------------------
# every pe x arch

@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', PES)
def test_causality(pe, arch):
    m = make(pe, arch)
    idx = tokens(2, T0)
    with torch.no_grad():
        base, _ = m(idx)
        for t in (0, 6, T0 - 1):
            idx2 = idx.clone()
            idx2[:, t] = (idx[:, t] + 1) % V
            other, _ = m(idx2)
            assert torch.equal(base[:, :t], other[:, :t]), f"position < {t} saw token {t}"
            # every position >= t does see the change
            assert (base[:, t:] - other[:, t:]).abs().amax(-1).min() > 0


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', PES)
def test_kv_cache_equals_full_forward(pe, arch):
    m = make(pe, arch)
    T = T0 if pe == 'learned' else 2 * T0   # past block_size where the pe allows it
    idx = tokens(2, T)
    with torch.no_grad():
        full, _ = m(idx)
        cache = KVCache(L)
        outs = [m(idx[:, :5], cache=cache)[0]]          # prefill
        assert cache.pos == 5
        outs.append(m(idx[:, 5:12], cache=cache)[0])    # a second chunk after the cache
        for t in range(12, T):                          # then one token at a time
            outs.append(m(idx[:, t:t + 1], cache=cache)[0])
    got = torch.cat(outs, dim=1)
    assert cache.pos == T
    assert all(k.size(2) == T for k in cache.k) and all(v.size(2) == T for v in cache.v)
    assert got.shape == full.shape
    assert (got - full).abs().max().item() < 1e-5


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', PES)
def test_input_four_times_block_size(pe, arch):
    m = make(pe, arch)
    idx = tokens(2, 4 * T0)
    with torch.no_grad():
        if m.max_len is not None and m.max_len < 4 * T0:  # the pe's documented refusal (learned: block_size)
            assert m.max_len == T0
            with pytest.raises(ValueError, match=f'at most {T0} positions'):
                m(idx)
            with pytest.raises(ValueError, match=f'at most {T0} positions'):   # through the cache too
                cache = KVCache(L)
                m(idx[:, :T0], cache=cache)
                m(idx[:, T0:T0 + 1], cache=cache)
        else:
            logits, loss = m(idx, targets=idx)
            assert logits.shape == (2, 4 * T0, V)
            assert torch.isfinite(logits).all() and torch.isfinite(loss)


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', PES)
def test_generate_past_block_size(pe, arch):
    m = make(pe, arch)
    idx = tokens(2, 4)
    torch.manual_seed(3)
    out = m.generate(idx, max_new_tokens=2 * T0, temperature=1.0, top_k=10)
    assert out.shape == (2, 4 + 2 * T0) and out.dtype == torch.long
    assert torch.equal(out[:, :4], idx)
    assert 0 <= out.min() and out.max() < V


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', PES)
def test_generate_top1_is_greedy_full_forward(pe, arch):
    m = make(pe, arch, sharpen=10.0)
    idx = tokens(2, 5)
    torch.manual_seed(4)
    out = m.generate(idx, max_new_tokens=2 * T0, temperature=1e-6, top_k=1)
    seq = idx
    with torch.no_grad():
        for _ in range(2 * T0):
            ctx = seq[:, -T0:] if pe == 'learned' else seq   # learned crops, the others see everything
            nxt = m(ctx)[0][:, -1].argmax(-1, keepdim=True)
            seq = torch.cat((seq, nxt), dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', PES)
def test_every_parameter_gets_a_gradient(pe, arch):
    m = make(pe, arch).train()
    idx = tokens(2, T0)
    if pe == 'tape':  # TAPE's W_up starts at 0, which zeroes the gradient of W_down and the gate: one step first
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        m(idx, targets=tokens(2, T0, seed=2))[1].backward()
        opt.step()
        opt.zero_grad()
    _, loss = m(idx, targets=tokens(2, T0, seed=2))
    loss.backward()
    for name, p in m.named_parameters():
        if pe == 'fire' and name.endswith('.b2'):  # FIRE's output bias adds one constant to a head's whole
            assert p.grad.abs().max() < 1e-8, name   # row of logits: softmax ignores it (as in the reference MLP)
            continue
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# -----------------------------------------------------------------------------
# ExPE (docs/expe.md)

def expe_expected(T, l=LDIM, S=0.0, theta=THETA, stable=False, scale=1.0):
    n = torch.arange(T, dtype=torch.float64)[:, None]
    i = torch.zeros(l, dtype=torch.float64) if stable else torch.arange(l, dtype=torch.float64)
    return scale * (S + theta * (n + i[None, :]))


@pytest.mark.parametrize('arch', ARCHS)
def test_expe_default_values_every_block(arch, spy):
    m = make('expe', arch)
    assert m.pe.l == C // 4 and m.pe.theta == 1 / (2 * T0)
    ln1, handles = ln1_outputs(m)
    idx = tokens(2, T0)
    with torch.no_grad():
        m(idx)
    assert len(spy.calls) == L                      # once in every block
    exp = expe_expected(T0)
    for layer, (x, vals, out, ref) in enumerate(spy.calls):
        assert torch.equal(x, ln1[layer])           # it overrides the normalized attention input
        assert out.shape == (2, T0, 2 * C)          # q and k (not v)
        # dims i < l hold exactly S + θ(n+i) for n = 0..T-1
        assert torch.equal(vals.double(), exp)
        # q, k are the projection of φ(x, n): the override, the remaining dims untouched
        assert (out - ref).abs().max().item() < 1e-5
        attn = m.transformer.h[layer].attn.c_attn
        plain = F.linear(x, attn.weight[:2 * C], None if attn.bias is None else attn.bias[:2 * C])
        assert (out - plain).abs().max().item() > 1e-3   # and the override changes them
    for h in handles:
        h.remove()


@pytest.mark.parametrize('kw, exp', [
    (dict(), dict()),
    (dict(expe_stable=True), dict(stable=True)),                 # all l dims get S + θn
    (dict(pos_scale=0.5), dict(scale=0.5)),                      # values halved
    (dict(expe_start=0.25), dict(S=0.25)),
    (dict(expe_theta=0.1), dict(theta=0.1)),
    (dict(expe_dims=3), dict(l=3)),
    (dict(expe_dims=C), dict(l=C)),
    (dict(expe_start=0.5, expe_theta=0.125, pos_scale=0.5, expe_dims=5), dict(S=0.5, theta=0.125, scale=0.5, l=5)),
], ids=['default', 'stable', 'pos_scale', 'start', 'theta', 'dims3', 'dims_all', 'combined'])
def test_expe_knobs(kw, exp, spy):
    m = make('expe', **kw)
    T = 3 * T0                                      # past block_size too
    with torch.no_grad():
        m(tokens(1, T))
    l = exp.get('l', LDIM)
    want = expe_expected(T, **exp)
    assert len(spy.calls) == L
    for x, vals, out, ref in spy.calls:
        assert vals.shape == (T, l)
        assert torch.allclose(vals.double(), want, rtol=0, atol=1e-6)
        assert (out - ref).abs().max().item() < 1e-5
    if exp.get('theta', THETA) * 2 ** 10 % 1 == 0:   # dyadic θ and S: fp32 is exact
        assert torch.equal(spy.calls[0][1].double(), want)


def test_expe_default_differs_from_stable(spy):
    # guard for the test above: the rising and the stable form really are different values
    assert not torch.equal(expe_expected(T0), expe_expected(T0, stable=True))


def test_expe_once_only_block_zero(spy):
    m = make('expe', expe_once=True)
    ln1, handles = ln1_outputs(m)
    with torch.no_grad():
        m(tokens(2, T0))
    assert len(spy.calls) == 1                      # block 0 only
    assert torch.equal(spy.calls[0][0], ln1[0])
    for h in handles:
        h.remove()


def manual_attention(attn, x_qk, x_v):
    """One causal attention layer by hand: q, k from x_qk, v from x_v; returns the c_proj input."""
    B, T, C_ = x_qk.shape
    W, b = attn.c_attn.weight, attn.c_attn.bias
    qk = F.linear(x_qk, W, b)[..., :2 * C_]
    v = F.linear(x_v, W, b)[..., 2 * C_:]
    q, k = qk.split(C_, dim=-1)
    hd = C_ // H
    q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float('-inf')).softmax(-1)
    return (att @ v).transpose(1, 2).reshape(B, T, C_)


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('expe_v', [False, True])
def test_expe_v_input(expe_v, arch, spy):
    m = make('expe', arch, expe_v=expe_v)
    y = {}
    m.transformer.h[0].attn.c_proj.register_forward_pre_hook(lambda mod, inp: y.__setitem__('y', inp[0].detach().clone()))
    with torch.no_grad():
        m(tokens(2, T0))
        x, vals, _, _ = spy.calls[0]
        xp = phi(x, vals)
        attn = m.transformer.h[0].attn
        plain_v = manual_attention(attn, xp, x)    # the default: V sees the plain normalized input
        over_v = manual_attention(attn, xp, xp)    # expe_v: V sees the overridden input too
    assert (plain_v - over_v).abs().max() > 1e-3   # the two readings are distinguishable
    got, other = (over_v, plain_v) if expe_v else (plain_v, over_v)
    assert (y['y'] - got).abs().max().item() < 1e-5
    assert (y['y'] - other).abs().max().item() > 1e-3


@pytest.mark.parametrize('arch', ARCHS)
def test_expe_learned_init(arch, spy):
    m = make('expe', arch, expe_learned='init', expe_start=0.25)
    p = m.pe.params
    assert isinstance(p, torch.nn.Parameter) and p.requires_grad
    assert torch.equal(p.detach(), torch.tensor([0.25, THETA]))
    assert any(q is p for q in m.parameters())
    m.train()
    _, loss = m(tokens(2, T0), targets=tokens(2, T0, seed=2))
    loss.backward()
    assert p.grad is not None and (p.grad != 0).all()
    # the override reads the learned scalars
    m.eval()
    spy.calls.clear()
    with torch.no_grad():
        p.copy_(torch.tensor([0.5, 0.25]))
        m(tokens(1, T0))
    assert len(spy.calls) == L
    assert torch.equal(spy.calls[0][1].double(), expe_expected(T0, S=0.5, theta=0.25))


def test_expe_learned_random_differs_from_fixed():
    m = make('expe', expe_learned='random')
    assert isinstance(m.pe.params, torch.nn.Parameter) and m.pe.params.shape == (2,)
    assert not torch.allclose(m.pe.params.detach(), torch.tensor([0.0, THETA]))


@pytest.mark.parametrize('pe,knob,value', [('exqpe', 'expe_learned', 'init'), ('exqpe', 'expe_stable', True),
                                           ('exqpe', 'expe_theta', 0.1), ('expe', 'exqpe_step', 0.5),
                                           ('rope', 'expe_dims', 4), ('alibi', 'expe_once', True),
                                           ('expe', 'rope_base', 500.0), ('alibi', 'fire_c', 0.2),
                                           ('t5', 'fire_shared', True), ('fire', 't5_buckets', 16),
                                           ('rope', 'randpe_max', 4096), ('rope', 'xpos_gamma', 0.5),
                                           ('randpe', 'xpos_scale_base', 256.0), ('nope', 't5_max_distance', 64)])
def test_knob_the_pe_would_ignore_is_refused(pe, knob, value):
    """A knob the chosen pe ignores must not become a silent no-op ablation (exqpe + expe_learned
    would also create a parameter without gradient, which DDP refuses)."""
    cfg = GPTConfig(block_size=T0, vocab_size=V, n_layer=L, n_head=H, n_embd=C, pe=pe, **{knob: value})
    with pytest.raises(ValueError, match=knob):
        GPT(cfg)


# -----------------------------------------------------------------------------
# the residual stream never holds the position values (docs/expe.md)

@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', PES)
def test_residual_stream_is_only_the_embedding_when_blocks_write_nothing(pe, arch):
    m = make(pe, arch)
    with torch.no_grad():   # zero every block's output projection: blocks add exactly 0
        for name, p in m.named_parameters():
            if '.c_proj.' in name:
                p.zero_()
    got = {}
    m.transformer.ln_f.register_forward_pre_hook(lambda mod, inp: got.__setitem__('x', inp[0].detach().clone()))
    idx = tokens(2, T0)
    with torch.no_grad():
        m(idx)
        want = m.transformer.wte(idx)
        pos = torch.arange(T0)
        if pe == 'learned':
            want = want + m.pe.wpe(pos)
        elif pe == 'sinusoidal':
            want = want + M.sinusoidal_table(pos, C) / math.sqrt(C)
    assert torch.equal(got['x'], want)


@pytest.mark.parametrize('pe', ['expe', 'exqpe'])
def test_block_output_is_input_plus_attn_plus_mlp(pe):
    m = make(pe)
    rec = {}
    b0, b1 = m.transformer.h[0], m.transformer.h[1]
    b0.register_forward_pre_hook(lambda mod, inp: rec.__setitem__('in0', inp[0].detach().clone()))
    b0.attn.register_forward_hook(lambda mod, i, o: rec.__setitem__('attn', o.detach().clone()))
    b0.mlp.register_forward_hook(lambda mod, i, o: rec.__setitem__('mlp', o.detach().clone()))
    b1.register_forward_pre_hook(lambda mod, inp: rec.__setitem__('in1', inp[0].detach().clone()))
    idx = tokens(2, T0)
    with torch.no_grad():
        m(idx)
        emb = m.transformer.wte(idx)
    assert torch.equal(rec['in0'], emb)                                   # no positions added at the input
    assert torch.equal(rec['in1'], rec['in0'] + rec['attn'] + rec['mlp'])  # block 0 writes only attn + mlp
    pos_vals = m.pe.setup(torch.arange(T0))['expe']
    assert not torch.allclose(rec['in1'][0, :, :LDIM], pos_vals, atol=1e-3)


# -----------------------------------------------------------------------------
# ExQPE (docs/expe.md)

def is_power_of_two(v):
    return v > 0 and math.frexp(v)[0] == 0.5


@pytest.mark.parametrize('n_embd, block_size', [(32, 16), (48, 16), (64, 24), (384, 512), (768, 1024)])
def test_exqpe_default_step_is_nearest_power_of_two(n_embd, block_size):
    m = GPT(GPTConfig(block_size=block_size, vocab_size=V, n_layer=1, n_head=4, n_embd=n_embd, pe='exqpe'))
    d, l = m.pe.step, n_embd // 4
    assert is_power_of_two(d)
    assert abs(math.log2(d) - math.log2(l / (2 * block_size))) <= 0.5


@pytest.mark.parametrize('n_embd, block_size', [(32, 16), (384, 512)])
def test_exqpe_values_exact_in_bf16_up_to_16x(n_embd, block_size):
    m = GPT(GPTConfig(block_size=block_size, vocab_size=V, n_layer=1, n_head=4, n_embd=n_embd, pe='exqpe'))
    vals = m.pe.setup(torch.arange(16 * block_size))['expe']
    assert torch.equal(vals.bfloat16().float(), vals)


@pytest.mark.parametrize('kw', [dict(), dict(expe_start=0.25), dict(pos_scale=0.5), dict(exqpe_period=2 * LDIM),
                                dict(exqpe_step=0.125, expe_dims=6)], ids=['default', 'start', 'scale', 'period', 'step'])
def test_exqpe_values(kw, spy):
    m = make('exqpe', **kw)
    T = 16 * T0
    with torch.no_grad():
        m(tokens(1, T))
    assert len(spy.calls) == L
    S, s = kw.get('expe_start', 0.0), kw.get('pos_scale', 1.0)
    l = kw.get('expe_dims', LDIM)
    period = kw.get('exqpe_period', l)
    d = m.pe.step
    assert d == kw.get('exqpe_step', 0.25)
    n = torch.arange(T, dtype=torch.float64)[:, None]
    i = torch.arange(l, dtype=torch.float64)[None, :]
    want = s * (S + d * torch.floor((n + i) / period))
    for x, vals, out, ref in spy.calls:
        assert torch.equal(vals.double(), want)
        assert (out - ref).abs().max().item() < 1e-5
        assert torch.equal(vals.bfloat16().float(), vals)


@pytest.mark.parametrize('S', [0.0, 0.25])
def test_exqpe_one_dim_steps_and_sum(S):
    m = make('exqpe', expe_start=S)
    l, d = m.pe.l, m.pe.step
    T = 16 * T0
    vals = m.pe.setup(torch.arange(T))['expe'].double()
    diff = vals[1:] - vals[:-1]                       # n -> n+1
    assert torch.equal((diff != 0).sum(-1), torch.ones(T - 1, dtype=torch.long))
    assert torch.equal(diff.sum(-1), torch.full((T - 1,), d, dtype=torch.float64))
    # the dim that steps is the one where (n + 1 + i) is a multiple of l
    n = torch.arange(T - 1)
    assert torch.equal(diff.argmax(-1), (-(n + 1)) % l)
    # Hermite: the dims sum to l·S + δ·n
    assert torch.equal(vals.sum(-1), l * S + d * torch.arange(T, dtype=torch.float64))


# -----------------------------------------------------------------------------
# RoPE

def rope_complex(x, pos, base):
    """Independent reference: pair dim j with j + D/2 as one complex number, rotate by n·base^(-2j/D)."""
    D = x.size(-1)
    j = torch.arange(D // 2, dtype=torch.float64)
    ang = pos.double()[:, None] * base ** (-2 * j / D)[None, :]
    z = torch.complex(x[..., :D // 2].double(), x[..., D // 2:].double()) * torch.polar(torch.ones_like(ang), ang)
    return torch.cat((z.real, z.imag), dim=-1)


@pytest.mark.parametrize('D, base', [(8, 10000.0), (16, 10000.0), (16, 500000.0)])
def test_rope_matches_complex_rotation(D, base):
    torch.manual_seed(0)
    pos = torch.arange(48)
    x = torch.randn(2, H, 48, D)
    cos, sin = M.rope_cos_sin(pos, D, base)
    got = M.apply_rope(x, cos, sin)
    want = rope_complex(x, pos, base)
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max().item() < 1e-5
    assert not torch.allclose(got, x)               # it does rotate


def test_rope_pos_scale_half_at_2n_equals_n():
    half, one = make('rope', pos_scale=0.5), make('rope')
    c05, s05 = half.pe.setup(torch.arange(0, 4 * T0, 2))['rope']
    c1, s1 = one.pe.setup(torch.arange(2 * T0))['rope']
    assert torch.equal(c05, c1) and torch.equal(s05, s1)
    c05b, _ = half.pe.setup(torch.arange(2 * T0))['rope']
    assert not torch.equal(c05b, c1)


def test_rope_dot_product_depends_only_on_distance():
    torch.manual_seed(0)
    D = 16
    q, k = torch.randn(D), torch.randn(D)

    def dot(m, n):
        pos = torch.tensor([m, n])
        cos, sin = M.rope_cos_sin(pos, D, 10000.0)
        r = M.apply_rope(torch.stack((q, k)), cos, sin)
        return (r[0] @ r[1]).item()

    for m_, n_ in [(3, 0), (7, 7), (10, 2), (20, 19)]:
        ref = dot(m_, n_)
        for shift in (1, 5, 31):
            assert abs(dot(m_ + shift, n_ + shift) - ref) < 1e-4
    assert abs(dot(3, 0) - dot(10, 2)) > 1e-3       # but it does depend on the distance


# -----------------------------------------------------------------------------
# sinusoidal

def test_sinusoidal_table_textbook():
    d = 32
    tab = M.sinusoidal_table(torch.arange(100), d)
    assert tab.shape == (100, d)
    for n in (0, 1, 7, 33, 99):
        for i in (0, 1, 5, 15):
            w = n / 10000 ** (2 * i / d)
            assert abs(tab[n, 2 * i].item() - math.sin(w)) < 1e-5
            assert abs(tab[n, 2 * i + 1].item() - math.cos(w)) < 1e-5


def test_sinusoidal_table_odd_dim():
    tab = M.sinusoidal_table(torch.arange(10), 7)
    assert tab.shape == (10, 7)
    assert abs(tab[3, 6].item() - math.sin(3 / 10000 ** (6 / 7))) < 1e-5


# -----------------------------------------------------------------------------
# ALiBi

def test_alibi_slopes_power_of_two():
    assert torch.equal(M.alibi_slopes(8), torch.tensor([2.0 ** -k for k in range(1, 9)]))
    assert torch.equal(M.alibi_slopes(4), torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]))


def test_alibi_slopes_not_power_of_two():
    # paper's rule: the 8 slopes of 8 heads, then every other slope of 16 heads (2^-0.5, 2^-1.5, ...), first 4
    want = [2.0 ** -k for k in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]
    got = M.alibi_slopes(12)
    assert got.shape == (12,)
    assert torch.allclose(got.double(), torch.tensor(want, dtype=torch.float64), rtol=1e-7, atol=0)


@pytest.mark.parametrize('scale, offset', [(1.0, 0), (0.5, 5)])
def test_alibi_bias_values(scale, offset):
    m = make('alibi', pos_scale=scale)
    slopes = M.alibi_slopes(H)
    Tq, Tk = 6, 6 + offset
    bias = M.dense_bias(m.pe, None, H, offset, Tq, Tk, 'cpu')
    assert bias.shape == (H, Tq, Tk)  # no batch row: ALiBi's bias is the same for every row
    for h in range(H):
        for qi in range(Tq):
            qp = qi + offset
            for kp in range(Tk):
                v = bias[h, qi, kp].item()
                if kp <= qp:
                    assert v == pytest.approx(-slopes[h].item() * scale * (qp - kp), abs=1e-6)
                else:
                    assert v == float('-inf')


BIAS_PES = [pe for pe, cls in PES.items() if cls.has_bias]


@pytest.mark.filterwarnings('ignore:flex_attention called without')
@pytest.mark.parametrize('pe', BIAS_PES)
@pytest.mark.parametrize('Tq, Tk, offset, scale', [(12, 12, 0, 1.0), (4, 12, 8, 1.0), (1, 12, 11, 0.5), (5, 5, 0, 0.5)])
def test_flex_bias_matches_dense(pe, Tq, Tk, offset, scale, monkeypatch):
    """The CUDA path (FlexAttention, bias per score) equals the dense-bias path, for every bias pe."""
    from torch.nn.attention.flex_attention import flex_attention
    monkeypatch.setattr(M, '_flex_attention', flex_attention)   # eager, so it runs on CPU
    m = make(pe, pos_scale=scale if PES[pe].scalable else 1.0)
    torch.manual_seed(0)
    q, k, v = torch.randn(2, H, Tq, 8), torch.randn(2, H, Tk, 8), torch.randn(2, H, Tk, 8)
    st = m.pe.setup(torch.arange(offset, offset + Tq))  # the queries' positions, as GPT.forward with a cache
    x = torch.randn(2, Tk, C)  # the keys' attention input, for a pe that keeps per-key values (FoX's forget gates)
    for layer in range(L):
        tables = m.pe.bias_tables(st, layer, m.pe.kept(x, st, layer))
        with torch.no_grad():
            got = M.bias_flex(q, k, v, m.pe, tables, offset)
            bias = M.dense_bias(m.pe, tables, H, offset, Tq, Tk, 'cpu', batch=2)
            want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        assert (got - want).abs().max().item() < 1e-5
        assert bias[torch.isfinite(bias)].std() > 0.05  # the bias really varies (a zero bias would pass trivially)


# -----------------------------------------------------------------------------
# config errors

@pytest.mark.parametrize('pe', ['learned', 'nope'])
def test_pos_scale_refused_where_meaningless(pe):
    with pytest.raises(ValueError, match='pos_scale'):
        GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=1, n_head=H, n_embd=C, pe=pe, pos_scale=0.5))


@pytest.mark.parametrize('pe', [pe for pe, cls in PES.items() if cls.scalable])
def test_pos_scale_accepted_elsewhere(pe):
    GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=1, n_head=H, n_embd=C, pe=pe, pos_scale=0.5))


def test_unknown_pe_and_arch():
    with pytest.raises(ValueError) as e:
        GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=1, n_head=H, n_embd=C, pe='bogus'))
    assert 'bogus' in str(e.value) and all(p in str(e.value) for p in PES)
    with pytest.raises(ValueError) as e:
        GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=1, n_head=H, n_embd=C, arch='mistral'))
    assert 'mistral' in str(e.value) and all(a in str(e.value) for a in ARCHS)


@pytest.mark.parametrize('kw, word', [(dict(n_head=5), 'n_head'), (dict(expe_dims=C + 1), 'expe_dims'),
                                      (dict(expe_learned='yes'), 'expe_learned'),
                                      (dict(pe='rope', n_embd=36, n_head=4), 'head size')])
def test_other_config_errors(kw, word):
    args = dict(block_size=T0, vocab_size=V, n_layer=1, n_head=H, n_embd=C)
    args.update(kw)
    with pytest.raises(ValueError, match=word):
        GPT(GPTConfig(**args))


# -----------------------------------------------------------------------------
# training, optimizer, accounting

@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', ['expe', 'rope'])
def test_training_lowers_loss(pe, arch):
    m = make(pe, arch, jitter=False).train()
    opt = m.configure_optimizers(0.1, 1e-2, (0.9, 0.95), 'cpu')
    x, y = tokens(4, T0, seed=5), tokens(4, T0, seed=6)
    losses = []
    for _ in range(30):
        _, loss = m(x, targets=y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(math.log(V), abs=0.3)   # starts near chance
    assert losses[-1] < 0.25 * losses[0]


@pytest.mark.parametrize('kw', [dict(pe='expe'), dict(pe='expe', expe_learned='init'), dict(pe='learned'),
                                dict(pe='rope', arch='llama', tie_embeddings=False), dict(pe='alibi', bias=False)])
def test_configure_optimizers_groups(kw):
    m = make(**kw)
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    decay, no_decay = opt.param_groups
    assert decay['weight_decay'] == 0.1 and no_decay['weight_decay'] == 0.0
    ids = lambda ps: [id(p) for p in ps]  # noqa: E731
    params = list(m.parameters())
    assert sorted(ids(decay['params'])) == sorted(id(p) for p in params if p.dim() >= 2)
    assert sorted(ids(no_decay['params'])) == sorted(id(p) for p in params if p.dim() < 2)
    assert len(set(ids(decay['params']) + ids(no_decay['params']))) == len(params)
    assert opt.param_groups[0]['lr'] == 1e-3


def test_num_params_and_flops():
    for kw in (dict(pe='expe'), dict(pe='learned'), dict(pe='rope', arch='llama')):
        m = make(**kw)
        total = sum(p.numel() for p in m.parameters())       # tied embedding counted once
        N = m.get_num_params()
        wpe = m.pe.wpe.weight.numel() if kw['pe'] == 'learned' else 0
        assert N == total - wpe
        assert m.get_num_params(non_embedding=False) == total
        for T in (1, T0, 1024):
            assert m.flops_per_token(T) == 6 * N + 12 * L * H * (C // H) * T


def test_num_params_untied_drops_token_table():
    """Docstring: non_embedding drops the position table (and the token table if untied)."""
    m = make('rope', 'llama', tie_embeddings=False)
    total = sum(p.numel() for p in m.parameters())
    assert m.get_num_params(non_embedding=False) == total
    assert m.get_num_params() == total - m.transformer.wte.weight.numel()


def test_tied_embeddings_share_storage():
    m = make('expe')
    assert m.transformer.wte.weight is m.lm_head.weight
    u = make('expe', tie_embeddings=False)
    assert u.transformer.wte.weight is not u.lm_head.weight


# -----------------------------------------------------------------------------
# checkpoints

def save(m, path, **extra_args):
    args = asdict(m.config)
    args.update(extra_args)
    torch.save({'model': m.state_dict(), 'model_args': args, 'iter_num': 7}, path)


@pytest.mark.parametrize('kw', [dict(pe='expe', expe_learned='init'), dict(pe='learned'), dict(pe='alibi', arch='llama'),
                                dict(pe='fire'), dict(pe='t5', t5_buckets=16)])
def test_load_checkpoint_roundtrip(kw, tmp_path):
    m = make(**kw)
    save(m, tmp_path / 'ckpt.pt')
    idx = tokens(2, T0)
    for path in (tmp_path / 'ckpt.pt', tmp_path):            # a file or the out_dir
        m2, ckpt = core.load_checkpoint(str(path))
        assert ckpt['iter_num'] == 7 and m2.config == m.config
        with torch.no_grad():
            assert torch.equal(m.eval()(idx)[0], m2.eval()(idx)[0])


def test_load_checkpoint_compiled_prefix(tmp_path):
    m = make('rope')
    state = {'_orig_mod.' + k: v for k, v in m.state_dict().items()}
    torch.save({'model': state, 'model_args': asdict(m.config)}, tmp_path / 'ckpt.pt')
    m2, _ = core.load_checkpoint(str(tmp_path / 'ckpt.pt'))
    idx = tokens(1, T0)
    with torch.no_grad():
        assert torch.equal(m(idx)[0], m2.eval()(idx)[0])


def test_load_checkpoint_unknown_setting(tmp_path):
    m = make('expe')
    save(m, tmp_path / 'ckpt.pt', rotary_pct=0.5)
    with pytest.raises(ValueError, match='rotary_pct'):
        core.load_checkpoint(str(tmp_path / 'ckpt.pt'))


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='train.py'):
        core.load_checkpoint(str(tmp_path / 'nope.pt'))
    with pytest.raises(FileNotFoundError, match='train.py'):
        core.load_checkpoint(str(tmp_path))                     # an out_dir without ckpt.pt


def test_load_checkpoint_renamed_key(tmp_path):
    m = make('expe')
    state = m.state_dict()
    state['transformer.h.0.attn.qkv.weight'] = state.pop('transformer.h.0.attn.c_attn.weight')
    torch.save({'model': state, 'model_args': asdict(m.config)}, tmp_path / 'ckpt.pt')
    with pytest.raises(ValueError):
        core.load_checkpoint(str(tmp_path / 'ckpt.pt'))


def test_load_checkpoint_not_a_checkpoint(tmp_path):
    torch.save({'weights': 1}, tmp_path / 'ckpt.pt')
    with pytest.raises(ValueError, match='not a checkpoint'):
        core.load_checkpoint(str(tmp_path / 'ckpt.pt'))


@pytest.mark.parametrize('kw, old_names', [
    (dict(pe='learned'), {'pe.wpe.weight': 'transformer.wpe.weight'}),
    (dict(pe='expe', expe_learned='init'), {'pe.params': 'expe_params'}),
    (dict(pe='tape'), {f'pe.updates.0.{p}': f'transformer.h.0.tape.{p}' for p in ('post', 'up', 'down', 'gate.weight')}),
])
def test_load_checkpoint_from_before_pe_classes(kw, old_names, tmp_path):
    """Checkpoints written before each pe became one class (its parameters under model.pe) still load."""
    m = make(**kw)
    state = m.state_dict()
    for new, old in old_names.items():
        state[old] = state.pop(new)
    torch.save({'model': state, 'model_args': asdict(m.config)}, tmp_path / 'ckpt.pt')
    m2, _ = core.load_checkpoint(str(tmp_path / 'ckpt.pt'))
    idx = tokens(1, T0)
    with torch.no_grad():
        assert torch.equal(m(idx)[0], m2.eval()(idx)[0])


# -----------------------------------------------------------------------------
# the torch floor (README, Requirements)

def test_torch_problem_compares_versions_as_numbers():
    assert M.TORCH_FLOOR == (2, 10)
    for ok in ('2.10.0', '2.10.0+cu128', '2.11.0a0+git1234', '2.13.0+cpu', '3.0', '10.1'):
        assert M.torch_problem(ok) == '', ok
    for old in ('2.9.1', '2.9.1+cpu', '2.5.0', '2.1.2', '1.13.1'):  # '2.9' > '2.10' as text: compared as numbers
        msg = M.torch_problem(old)
        assert msg.startswith(f'error: torch {old} found') and ">= 2.10" in msg and '\n' not in msg, old


@pytest.mark.parametrize('script', ['train.py', 'eval.py', 'eval_tasks.py', 'sample.py', 'bench.py'])
def test_a_torch_below_the_floor_stops_every_script_with_one_line(script):
    import subprocess
    run_as_old_torch = ("import runpy, sys, torch; torch.__version__ = '2.9.1+cpu'; sys.argv = sys.argv[1:]; "
                        "runpy.run_path(sys.argv[0], run_name='__main__')")
    r = subprocess.run([sys.executable, '-c', run_as_old_torch, script, '--help'], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr == M.torch_problem('2.9.1+cpu') + '\n'
    assert r.stdout == ''  # stopped before the script printed its help
