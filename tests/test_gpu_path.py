"""The GPU path, rehearsed on CPU: torch.compile sees no graph break, a compiled training step equals
the eager one, every pe runs under bf16 autocast, ExPE keeps its position part in fp32 under bf16,
and FlexAttention (compiled) equals the dense bias. The tests marked `cuda` run only where CUDA is
(results/run_gpu.sh runs them on the GPU: KV cache, causality in bf16, flex, compile, DDP over NCCL)."""
import copy
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import model as M
from model import ARCHS, GPT, GPTConfig, KVCache, PES

ROOT = Path(__file__).resolve().parents[1]
V, T0, L, H, C = 64, 16, 2, 4, 32
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA (results/run_gpu.sh runs these)')


def make(pe, arch='gpt2', seed=0, **kw):
    """A tiny model whose zero-initialised pe parts (TAPE's updates, bias tables) are non-zero, and
    whose matrices are sharpened so that positions visibly move the logits."""
    torch.manual_seed(seed)
    kw.setdefault('dropout', 0.0)
    m = GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=L, n_head=H, n_embd=C, arch=arch, pe=pe, **kw))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(3)
        for p in m.pe.parameters():
            if not p.abs().sum():
                p.normal_(0.0, 0.3)
    return m


def tokens(B, T, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def explain(fn, *args, **kw):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args, **kw)


# -----------------------------------------------------------------------------
# graph breaks: a break splits the compiled graph and runs the gap in Python, silently slower

@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', PES)
def test_no_graph_break_in_training_forward(pe, arch):
    m = make(pe, arch, dropout=0.1 if arch == 'gpt2' else 0.0).train()  # dropout's path too
    ex = explain(m, tokens(2, T0), tokens(2, T0, seed=2))
    assert ex.graph_break_count == 0, [str(r.reason) for r in ex.break_reasons]
    assert ex.graph_count == 1


@pytest.mark.parametrize('pe', PES)
def test_no_graph_break_in_kv_cache_decode(pe):
    m = make(pe).eval()
    cache = KVCache(L)
    idx = tokens(1, T0)
    with torch.no_grad():
        m(idx[:, :-1], cache=cache)
        ex = explain(m, idx[:, -1:], cache=cache)  # one new token after a prompt
    assert ex.graph_break_count == 0, [str(r.reason) for r in ex.break_reasons]


@pytest.mark.parametrize('pe', [pe for pe in PES if PES[pe].has_bias])
def test_no_graph_break_in_the_flex_path(pe, monkeypatch):
    """The CUDA bias path (FlexAttention inside the compiled model), traced on CPU. FlexAttention has
    no backward on CPU, so this traces the forward; run_gpu.sh runs the training step on CUDA."""
    orig = M.attention

    def flex_everywhere(q, k, v, pe_, tables, past, dropout_p, fp32=False):
        if pe_.has_bias and q.size(2) > 1 and dropout_p == 0.0:
            return M.bias_flex(q, k, v, pe_, tables, past)
        return orig(q, k, v, pe_, tables, past, dropout_p, fp32)
    monkeypatch.setattr(M, 'attention', flex_everywhere)
    m = make(pe).eval()
    with torch.no_grad():
        ex = explain(m, tokens(2, T0))
    assert ex.graph_break_count == 0, [str(r.reason) for r in ex.break_reasons]


# -----------------------------------------------------------------------------
# compiled == eager: inductor reorders float reductions, nothing more

@pytest.mark.parametrize('pe', ['expe', 'tape'])
def test_compiled_training_step_equals_eager(pe):
    """Tolerance: loss to 1e-5 relative, every gradient to 1e-4 of its largest entry, and the weights
    after one SGD step to 1e-6 (fp32; inductor only changes the order of sums)."""
    eager = make(pe).train()
    comp = copy.deepcopy(eager)
    compiled = torch.compile(comp)
    x, y = tokens(4, T0), tokens(4, T0, seed=2)
    results = []
    for model, f in ((eager, eager), (comp, compiled)):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        _, loss = f(x, y)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        results.append((loss.item(), grads, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (l1, g1, w1), (l2, g2, w2) = results
    assert abs(l1 - l2) <= 1e-5 * abs(l1)
    assert g1.keys() == g2.keys()
    for n in g1:
        assert (g1[n] - g2[n]).abs().max() <= 1e-4 * g1[n].abs().max() + 1e-12, n
        assert (w1[n] - w2[n]).abs().max() <= 1e-6, n


# -----------------------------------------------------------------------------
# bf16 autocast, as train.py and eval.py run on CUDA

@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('pe', PES)
def test_bf16_autocast_forward_backward(pe, arch):
    """Finite logits, loss and gradients under bf16 autocast; logits within 2e-2 (relative L2 norm)
    of fp32 (bf16 keeps 8 bits of mantissa: ~0.6% was measured for every pe)."""
    m = make(pe, arch).train()
    T = T0 if m.max_len is not None else 4 * T0  # past block_size where the pe allows it
    idx = tokens(2, T)
    with torch.no_grad():
        ref, _ = m(idx)
    with torch.autocast('cpu', torch.bfloat16):
        logits, loss = m(idx, tokens(2, T, seed=2))
    loss.backward()
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all() and torch.isfinite(loss)
    for n, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    assert ((logits.float() - ref).norm() / ref.norm()).item() < 2e-2


@pytest.mark.parametrize('pe', ['expe', 'exqpe'])
def test_expe_position_part_stays_fp32_under_bf16(pe):
    """ExPE's override S + θ(n+i) is far finer than bf16, and past the training length the position
    part dominates q and k. So q, k = W[:, l:]·x[l:] (bf16 operands) + W[:, :l]·p (fp32) come back
    in fp32: their error is the bf16 rounding of the content part alone, however large the position
    values. A materialized φ cast to bf16 (what autocast does to an ordinary projection) has an error
    that grows with the position values: at 16x it breaks the bound below."""
    T = 1024
    torch.manual_seed(0)
    m = GPT(GPTConfig(block_size=T, vocab_size=V, n_layer=1, n_head=H, n_embd=C, pe=pe))
    pos = torch.arange(15 * T, 16 * T)  # 16x: values up to 8 at θ = 1/(2T)
    vals = m.pe.setup(pos)['expe']
    x = torch.randn(1, len(pos), C)
    c_attn, l = m.transformer.h[0].attn.c_attn, m.pe.l
    w, b = c_attn.weight[:2 * C].double(), c_attn.bias[:2 * C].double()
    want = F.linear(torch.cat((vals.double()[None], x.double()[..., l:]), dim=-1), w, b)  # fp64 reference
    content = F.linear(x.double()[..., l:], w[:, l:], b).abs().max()
    with torch.autocast('cpu', torch.bfloat16):
        got = M.expe_project(c_attn, x, vals, 2)
        naive = F.linear(torch.cat((vals[None], x[..., l:]), dim=-1), c_attn.weight[:2 * C], c_attn.bias[:2 * C])
    assert got.dtype == torch.float32
    bound = 2 ** -7 * content  # two bf16 roundings (operands) of the content part
    assert (got.double() - want).abs().max() <= bound
    if pe == 'expe':  # ExQPE's values are exact in bf16 by construction: only their product rounds
        assert (naive.double() - want).abs().max() > bound


@pytest.mark.parametrize('pe', PES)
def test_fp32_logits_at_inference_under_bf16(pe, monkeypatch):
    """A pe that asks for fp32 logits (ExPE, ExQPE) gets fp32 attention under bf16 autocast in eval
    mode, and bf16 attention (flash kernels) in training; every other pe gets bf16 attention."""
    seen = []
    orig = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):  # what SDPA computes in: its inputs, or bf16 where autocast is on
        seen.append(torch.bfloat16 if torch.is_autocast_enabled('cpu') else q.dtype)
        return orig(q, k, v, *a, **kw)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', spy)
    assert PES['expe'].fp32_logits and PES['exqpe'].fp32_logits  # the decision (docs/pes.md, "bf16")
    m = make(pe)
    idx = tokens(1, T0)
    for training in (False, True):
        m.train(training)
        seen.clear()
        with torch.autocast('cpu', torch.bfloat16):
            m(idx)
        fp32 = PES[pe].fp32_logits and not training
        assert seen == [torch.float32 if fp32 else torch.bfloat16] * L


# -----------------------------------------------------------------------------
# FlexAttention compiled on CPU (torch >= 2.6 runs flex on CPU through inductor)

@pytest.mark.filterwarnings('ignore:flex_attention called without')
def test_compiled_flex_alibi_equals_dense_on_cpu(monkeypatch):
    monkeypatch.setattr(M, '_flex_attention', None)  # compile it here
    monkeypatch.setattr(M, '_block_masks', {})
    m = make('alibi').eval()
    torch.manual_seed(0)
    Tq = Tk = 128
    q, k, v = (torch.randn(2, H, Tq, 16) for _ in range(3))
    tables = m.pe.bias_tables(m.pe.setup(torch.arange(Tq)), 0, None)
    with torch.no_grad():
        got = M.bias_flex(q, k, v, m.pe, tables, 0)
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=M.dense_bias(m.pe, tables, H, 0, Tq, Tk, 'cpu'))
    assert (got - want).abs().max().item() < 1e-4


# -----------------------------------------------------------------------------
# CUDA only (results/run_gpu.sh)

@cuda
@pytest.mark.parametrize('pe', PES)
def test_cuda_kv_cache_equals_full_forward_bf16(pe):
    m = make(pe).cuda().eval()
    idx = tokens(2, T0).cuda()
    with torch.no_grad(), torch.autocast('cuda', torch.bfloat16):
        full, _ = m(idx)
        cache = KVCache(L)
        parts = [m(idx[:, :9], cache=cache)[0]] + [m(idx[:, t:t + 1], cache=cache)[0] for t in range(9, T0)]
    inc = torch.cat(parts, dim=1)
    assert ((inc.float() - full.float()).norm() / full.float().norm()).item() < 2e-2


@cuda
@pytest.mark.parametrize('pe', PES)
def test_cuda_causal_in_bf16(pe):
    m = make(pe).cuda().eval()
    a, b = tokens(1, T0).cuda(), tokens(1, T0).cuda()
    b[:, 10:] = (b[:, 10:] + 1) % V  # change only the future of position 9
    with torch.no_grad(), torch.autocast('cuda', torch.bfloat16):
        la, _ = m(a)
        lb, _ = m(b)
    assert torch.equal(la[:, :10], lb[:, :10])


@cuda
@pytest.mark.parametrize('pe', [pe for pe in PES if PES[pe].has_bias])
def test_cuda_flex_equals_dense(pe):
    m = make(pe).cuda().eval()
    torch.manual_seed(0)
    for Tq, Tk, past in ((256, 256, 0), (64, 256, 192)):
        q, k, v = (torch.randn(2, H, n, 64, device='cuda') for n in (Tq, Tk, Tk))
        st = m.pe.setup(torch.arange(past, past + Tq, device='cuda'))
        tables = m.pe.bias_tables(st, 0, m.pe.kept(torch.randn(2, Tk, C, device='cuda'), st, 0))  # FoX keeps per-key values
        with torch.no_grad():
            got = M.bias_flex(q, k, v, m.pe, tables, past)
            bias = M.dense_bias(m.pe, tables, H, past, Tq, Tk, 'cuda', batch=2)
            want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        assert (got - want).abs().max().item() < 1e-3


@cuda
@pytest.mark.parametrize('pe', ['expe', 'rope', 'alibi', 'tape'])
def test_cuda_compiled_step_equals_eager_bf16(pe):
    eager = make(pe).cuda().train()
    comp = copy.deepcopy(eager)
    compiled = torch.compile(comp)
    x, y = tokens(4, 4 * T0).cuda()[:, :T0], tokens(4, T0, seed=2).cuda()
    losses, grads = [], []
    for model, f in ((eager, eager), (comp, compiled)):
        with torch.autocast('cuda', torch.bfloat16):
            _, loss = f(x, y)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters()]))
    assert abs(losses[0] - losses[1]) <= 1e-2 * abs(losses[0])
    assert ((grads[0] - grads[1]).norm() / grads[0].norm()).item() < 5e-2


@cuda
def test_cuda_ddp_nccl_one_process(tmp_path):
    """train.py under torchrun with the NCCL backend, one process: it trains and checkpoints."""
    import numpy as np
    data = tmp_path / 'data'
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (('val_000000.bin', 20000), ('train_000001.bin', 100000)):
        header = np.zeros(256, dtype=np.int32)
        header[:3] = (20240520, 1, n)
        with open(data / name, 'wb') as f:
            f.write(header.tobytes())
            f.write(rng.integers(0, 250, n).astype(np.uint16).tobytes())
    out = tmp_path / 'out'
    p = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
                        str(ROOT / 'train.py'), f'--data_dir={data}', f'--out_dir={out}', '--vocab_size=256',
                        '--n_layer=2', '--n_head=4', '--n_embd=64', '--block_size=64', '--batch_size=8',
                        '--max_iters=20', '--eval_interval=20', '--eval_iters=2', '--log_interval=10',
                        '--compile=False', '--warmup_iters=2'],
                       cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert 'device cuda:0' in p.stdout and 'all 1 processes hold identical weights' in p.stdout
    assert (out / 'ckpt.pt').exists()
