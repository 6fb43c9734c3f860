"""Equality with independent implementations: HF transformers' GPT2LMHeadModel (arch=gpt2,
pe=learned) and LlamaForCausalLM (arch=llama, pe=rope). Weights are drawn by HF, norms are
perturbed, everything is copied into our GPT, and the logits must agree to 1e-5 in fp32."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from model import GPT, GPTConfig, KVCache  # noqa: E402

V, T0, L, H, C, FFN = 64, 16, 2, 4, 32, 96


def tokens(B, T, seed=1):
    return torch.randint(V, (B, T), generator=torch.Generator().manual_seed(seed))


def perturb(hf):
    """HF initializes norms to weight 1 / bias 0: make them random so that a wrong copy shows.
    Its 0.02-std matrices give near-uniform attention, which would hide a wrong position
    encoding: scale the block matrices by 5 so attention depends on the positions."""
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if 'ln' in name.split('.')[-2] or 'norm' in name:
                p.add_(0.2 * torch.randn_like(p))
            elif p.dim() == 2 and ('.h.' in name or '.layers.' in name):
                p.mul_(5.0)


# -----------------------------------------------------------------------------
# GPT-2

def gpt2_pair(seed=0):
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(
        vocab_size=V, n_positions=T0, n_embd=C, n_layer=L, n_head=H, activation_function='gelu_new',
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5,
        attn_implementation='eager')).eval()
    perturb(hf)
    with torch.no_grad():   # HF zero-inits biases: make them random too
        for name, p in hf.named_parameters():
            if name.endswith('.bias'):
                p.add_(0.05 * torch.randn_like(p))
    ours = GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=L, n_head=H, n_embd=C, dropout=0.0, bias=True,
                         arch='gpt2', pe='learned', tie_embeddings=True)).eval()
    hs = hf.state_dict()
    conv1d = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')
    new = {}
    hf_name = {'lm_head.weight': 'transformer.wte.weight', 'pe.wpe.weight': 'transformer.wpe.weight'}
    for k in ours.state_dict():
        src = hs[hf_name.get(k, k)]
        new[k] = src.t() if k.endswith(conv1d) else src   # HF Conv1D stores (in, out)
    missing, unexpected = ours.load_state_dict(new, strict=True)
    assert not missing and not unexpected
    # every HF parameter was used
    assert {k for k, _ in hf.named_parameters()} <= {hf_name.get(k, k) for k in new}
    return hf, ours


def test_gpt2_matches_hf():
    hf, ours = gpt2_pair()
    assert ours.transformer.wte.weight is ours.lm_head.weight
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    idx = tokens(3, T0)
    with torch.no_grad():
        want = hf(idx).logits
        got, _ = ours(idx)
    assert got.shape == want.shape == (3, T0, V)
    assert (got - want).abs().max().item() < 1e-5
    assert want.std() > 0.05   # not a degenerate comparison


def test_gpt2_cache_matches_hf():
    hf, ours = gpt2_pair(seed=1)
    idx = tokens(2, T0, seed=2)
    with torch.no_grad():
        want = hf(idx).logits
        cache = KVCache(L)
        outs = [ours(idx[:, :7], cache=cache)[0]] + [ours(idx[:, t:t + 1], cache=cache)[0] for t in range(7, T0)]
    assert (torch.cat(outs, 1) - want).abs().max().item() < 1e-5


# -----------------------------------------------------------------------------
# Llama

def llama_pair(tie=False, seed=0):
    torch.manual_seed(seed)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=V, hidden_size=C, intermediate_size=FFN, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=H, max_position_embeddings=4 * T0, rms_norm_eps=1e-5,
        rope_parameters={'rope_type': 'default', 'rope_theta': 10000.0}, tie_word_embeddings=tie,
        attention_bias=False, mlp_bias=False, attn_implementation='eager')).eval()
    perturb(hf)
    ours = GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=L, n_head=H, n_embd=C, dropout=0.0, arch='llama',
                         pe='rope', ffn_hidden=FFN, norm_eps=1e-5, rope_base=10000.0, tie_embeddings=tie)).eval()
    hs = hf.state_dict()
    new = {'transformer.wte.weight': hs['model.embed_tokens.weight'],
           'transformer.ln_f.weight': hs['model.norm.weight'],
           'lm_head.weight': hs['lm_head.weight'] if not tie else hs['model.embed_tokens.weight']}
    for i in range(L):
        p, q = f'model.layers.{i}.', f'transformer.h.{i}.'
        new[q + 'ln_1.weight'] = hs[p + 'input_layernorm.weight']
        new[q + 'ln_2.weight'] = hs[p + 'post_attention_layernorm.weight']
        new[q + 'attn.c_attn.weight'] = torch.cat([hs[p + f'self_attn.{n}_proj.weight'] for n in 'qkv'], dim=0)
        new[q + 'attn.c_proj.weight'] = hs[p + 'self_attn.o_proj.weight']
        new[q + 'mlp.c_fc.weight'] = torch.cat((hs[p + 'mlp.gate_proj.weight'], hs[p + 'mlp.up_proj.weight']), dim=0)
        new[q + 'mlp.c_proj.weight'] = hs[p + 'mlp.down_proj.weight']
    assert set(new) == set(ours.state_dict())
    ours.load_state_dict(new, strict=True)
    n_hf = sum(p.numel() for p in hf.parameters())
    assert ours.get_num_params(non_embedding=False) == n_hf   # same shapes, same count
    return hf, ours


@pytest.mark.parametrize('tie', [False, True])
@pytest.mark.parametrize('T', [T0, 3 * T0])   # RoPE runs past block_size
def test_llama_matches_hf(T, tie):
    hf, ours = llama_pair(tie=tie)
    assert (ours.transformer.wte.weight is ours.lm_head.weight) == tie
    assert (hf.lm_head.weight is hf.model.embed_tokens.weight) == tie
    idx = tokens(2, T)
    with torch.no_grad():
        want = hf(idx).logits
        got, _ = ours(idx)
    assert got.shape == want.shape == (2, T, V)
    assert (got - want).abs().max().item() < 1e-5
    assert want.std() > 0.05


def test_llama_cache_matches_hf_last_position():
    hf, ours = llama_pair(seed=3)
    T = 3 * T0
    idx = tokens(2, T, seed=4)
    with torch.no_grad():
        want = hf(idx).logits
        cache = KVCache(L)
        ours(idx[:, :10], cache=cache)
        ours(idx[:, 10:T0 + 5], cache=cache)
        for t in range(T0 + 5, T):
            last, _ = ours(idx[:, t:t + 1], cache=cache)
    assert cache.pos == T
    assert (last[:, -1] - want[:, -1]).abs().max().item() < 1e-5
