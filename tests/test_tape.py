"""TAPE (pe='tape'): starts as RoPE, stays causal, shift invariant and KV-cacheable once its updates are on."""
import pytest
import torch

import model as M
from model import ARCHS, GPT, GPTConfig, KVCache

V, T0, L, H, C = 64, 16, 3, 4, 32


def cfg(pe='tape', **kw):
    return GPTConfig(block_size=T0, vocab_size=V, n_layer=L, n_head=H, n_embd=C, pe=pe, **kw)


def tape_model(arch='gpt2', seed=0, **kw):
    """A TAPE model whose two updates are switched on: random non-zero update weights."""
    torch.manual_seed(seed)
    m = GPT(cfg(arch=arch, **kw)).eval()
    with torch.no_grad():
        for blk in m.transformer.h:
            blk.attn.c_attn.weight.mul_(10)  # sharp attention, so positions visibly matter
        for u in m.pe.updates:
            for p in (u.post, u.up, u.down, u.gate.weight):
                p.normal_(0.0, 0.3)
    return m


def tokens(B, T, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('arch', ARCHS)
def test_at_init_tape_is_rope(arch):
    torch.manual_seed(0)
    rope = GPT(cfg('rope', arch=arch)).eval()
    tape = GPT(cfg('tape', arch=arch)).eval()
    missing, unexpected = tape.load_state_dict(rope.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith('pe.updates.') for k in missing)
    x = tokens(2, T0)
    # the pieces are bit-exact: the initial state rotates q/k exactly as RoPE does, and both updates are 0
    pos = torch.arange(3 * T0)
    q = torch.randn(2, H, 3 * T0, C // H)
    cos, sin = M.rope_cos_sin(pos, C // H, 10000.0)
    z = M.tape_init(pos, H, C // H, 10000.0)
    assert torch.equal(M.tape_rotate(q, z), M.apply_rope(q, cos, sin))
    blk = tape.pe.updates[0]
    zb = z.expand(2, -1, -1, -1)
    assert torch.equal(blk.attn_update(torch.randn_like(zb)), torch.zeros_like(zb))
    assert torch.equal(blk.mlp_update(torch.randn(2, 3 * T0, C), zb), torch.zeros_like(zb))
    # so the logits agree, up to the float summation order of SDPA with a wider value tensor
    a, _ = rope(x)
    b, _ = tape(x)
    assert (a - b).abs().max() < 1e-6
    a, _ = rope(tokens(1, 3 * T0))  # past block_size too
    b, _ = tape(tokens(1, 3 * T0))
    assert (a - b).abs().max() < 1e-6


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('t', [0, 7, T0 - 1])
def test_causal_with_updates_on(arch, t):
    m = tape_model(arch)
    x = tokens(2, T0)
    y = x.clone()
    y[:, t] = (y[:, t] + 1) % V
    a, _ = m(x)
    b, _ = m(y)
    assert torch.equal(a[:, :t], b[:, :t])
    assert (a[:, t:] - b[:, t:]).abs().max() > 1e-4


def test_updates_change_the_state():
    """With non-zero weights the model is no longer RoPE (else the tests above prove nothing)."""
    m = tape_model()
    rope = GPT(cfg('rope')).eval()
    rope.load_state_dict(m.state_dict(), strict=False)
    x = tokens(2, T0)
    assert (m(x)[0] - rope(x)[0]).abs().max() > 1e-2


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('shift', [1, 37, 1000])
def test_shift_invariance(arch, shift, monkeypatch):
    """Adding a constant to every position leaves the logits unchanged (rotation equivariance)."""
    m = tape_model(arch).double()
    x = tokens(2, T0)
    a, _ = m(x)
    init = M.tape_init
    monkeypatch.setattr(M, 'tape_init', lambda pos, *args: init(pos + shift, *args))
    b, _ = m(x)
    assert not torch.equal(M.tape_init(torch.arange(4), H, C // H, 1e4), init(torch.arange(4), H, C // H, 1e4))
    assert (a - b).abs().max() < 1e-6  # the initial state is computed in fp32 (like RoPE's tables)


def test_not_shift_invariant_without_equivariance(monkeypatch):
    """Control: the same shift does change the logits of a model that is not relative (expe)."""
    torch.manual_seed(0)
    m = GPT(cfg('expe')).eval().double()
    x = tokens(2, T0)
    a, _ = m(x)
    ev = M.expe_values
    monkeypatch.setattr(M, 'expe_values', lambda pos, *args, **kw: ev(pos + 1000, *args, **kw))
    assert (a - m(x)[0]).abs().max() > 1e-3


@pytest.mark.parametrize('arch', ARCHS)
def test_kv_cache_equals_full_forward(arch):
    m = tape_model(arch)
    x = tokens(2, 3 * T0)
    full, _ = m(x)
    cache = KVCache(L)
    parts = [m(x[:, :5], cache=cache)[0], m(x[:, 5:20], cache=cache)[0]]
    parts += [m(x[:, i:i + 1], cache=cache)[0] for i in range(20, 3 * T0)]
    assert (torch.cat(parts, dim=1) - full).abs().max() < 1e-5


def test_parameter_overhead():
    for I in (0, 8, 24):
        rope, tape = GPT(cfg('rope')), GPT(cfg('tape', tape_inner=I))
        inner = I or 4 * H
        extra = sum(p.numel() for p in tape.parameters()) - sum(p.numel() for p in rope.parameters())
        assert extra == (L - 1) * (H * H + C * inner + 2 * H * inner)  # none in the last block


def test_rowsum_knob_is_per_head_scalars():
    """tape_rowsum: the H x H map acts as diag(row sums), the authors' code; off: a full head mixing."""
    torch.manual_seed(0)
    full, rows = M.TAPEUpdate(cfg()), M.TAPEUpdate(cfg(tape_rowsum=True))
    with torch.no_grad():
        full.post.normal_()
    rows.load_state_dict(full.state_dict())
    az = torch.randn(2, H, 5, C // H)
    want_rows = full.post.sum(1)[None, :, None, None] * az
    assert torch.allclose(rows.attn_update(az), want_rows, atol=1e-6)
    want_full = torch.einsum('gh,bhtd->bgtd', full.post, az)
    assert torch.allclose(full.attn_update(az), want_full, atol=1e-6)
    assert (full.attn_update(az) - rows.attn_update(az)).abs().max() > 1e-2


def test_pos_scale_interpolates_the_initial_state():
    m = tape_model()
    x = tokens(1, T0)
    a, _ = m(x)
    m.config.pos_scale = 0.5
    b, _ = m(x)
    assert (a - b).abs().max() > 1e-3
    z = M.tape_init(torch.arange(8) * 0.5, H, C // H, 1e4)
    assert torch.equal(z[:, :, 2], M.tape_init(torch.arange(8), H, C // H, 1e4)[:, :, 1])


def test_state_is_fp32_under_bf16_autocast():
    m = tape_model()
    seen = []
    orig = M.TAPEUpdate.mlp_update

    def spy(self, f, z):
        out = orig(self, f, z)
        seen.append((z.dtype, out.dtype))
        return out
    M.TAPEUpdate.mlp_update = spy
    try:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            m(tokens(1, T0))
    finally:
        M.TAPEUpdate.mlp_update = orig
    assert seen and all(d == (torch.float32, torch.float32) for d in seen)


def test_training_lowers_loss_and_moves_the_update_weights():
    torch.manual_seed(0)
    m = GPT(cfg())
    opt = m.configure_optimizers(0.0, 1e-2, (0.9, 0.95), 'cpu')
    x, y = tokens(4, T0), tokens(4, T0, seed=2)
    losses = []
    for _ in range(30):
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0
    assert len(m.pe.updates) == L - 1  # none after the last block
    assert all(t.post.abs().max() > 0 and t.up.abs().max() > 0 for t in m.pe.updates)


def test_knobs_refused_on_other_pes():
    with pytest.raises(ValueError, match='tape_inner'):
        GPT(cfg('rope', tape_inner=8))
    with pytest.raises(ValueError, match='even head size'):
        GPT(GPTConfig(n_embd=12, n_head=4, pe='tape'))
