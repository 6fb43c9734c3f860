"""
One GPT decoder with a positional-encoding switch (`pe`) and an architecture switch (`arch`).

pe:   expe | exqpe | rope | sinusoidal | learned | alibi | nope | tape
arch: gpt2  (LayerNorm, GELU MLP, dropout, optional bias, tied embeddings by default)
      llama (RMSNorm, SwiGLU MLP, no bias, optional tied embeddings)

Every positional encoding is one small section below, found by its name. Positions are
absolute token indices n = 0, 1, 2, ... (offset by the KV cache when decoding), multiplied by
`pos_scale` at inference for the PEs where that means something (position interpolation).
"""
import math
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

PES = ('expe', 'exqpe', 'rope', 'sinusoidal', 'learned', 'alibi', 'nope', 'tape')
ARCHS = ('gpt2', 'llama')


@dataclass
class GPTConfig:
    block_size: int = 1024      # training length T: ExPE's default θ and the learned table derive from it
    vocab_size: int = 50304     # GPT-2's 50257 padded up to a multiple of 64 for speed
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True           # gpt2 arch: biases in Linear and LayerNorm (llama never has them)
    arch: str = 'gpt2'          # 'gpt2' or 'llama'
    pe: str = 'expe'            # one of PES
    tie_embeddings: bool = True # share the token embedding with the LM head
    ffn_hidden: int = 0         # llama MLP width; 0 -> 8/3 * n_embd rounded up to a multiple of 64
    norm_eps: float = 1e-5
    pos_scale: float = 1.0      # multiplies positions (inference-time interpolation); 1.0 = as trained
    # ExPE (Eq. 3): the first l dims of the Q/K input become S + θ(n+i)
    expe_dims: int = 0          # l; 0 -> n_embd // 4 (the paper's value is lost; spec §8.1)
    expe_start: float = 0.0     # S (paper's example value)
    expe_theta: float = 0.0     # θ; 0 -> 1 / (2 * block_size) (paper's example value)
    expe_stable: bool = False   # ablation "p is stable": all l dims get S + θn
    expe_once: bool = False     # ablation "once": override only in the first block
    expe_learned: str = ''      # ablation: '' fixed, 'random' learned S/θ from random init, 'init' learned from S/θ
    expe_v: bool = False        # ablation: override the V input too
    # ExQPE (reconstruction, spec §2): dim i holds S + δ·floor((n+i)/period)
    exqpe_step: float = 0.0     # δ; 0 -> the power of two nearest to l/(2T), so values are exact in bf16
    exqpe_period: int = 0       # 0 -> l (then exactly one dim steps by δ per position)
    rope_base: float = 10000.0  # rope, and tape's initial state
    # TAPE (Zhu et al. 2025): a per-layer position state updated by attention and by the MLP
    tape_inner: int = 0         # I, the width of the MLP-side update; 0 -> 4 * n_head
    tape_rowsum: bool = False   # the authors' code: the H x H head mixing acts as per-head scalars (row sums)


# -----------------------------------------------------------------------------
# sinusoidal (Vaswani et al. 2017): PE[n, 2i] = sin(n / 10000^(2i/d)), PE[n, 2i+1] = cos(same),
# added once to the token embedding. Scaled by 1/sqrt(d) so it starts at the size of a
# 0.02-std token embedding instead of drowning it (x-transformers' scaled sinusoidal does the same).

def sinusoidal_table(pos, dim):
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)
    ang = pos.float()[:, None] * inv_freq[None, :]
    return torch.stack((ang.sin(), ang.cos()), dim=-1).flatten(-2)[:, :dim]  # (T, dim), interleaved


# -----------------------------------------------------------------------------
# learned (GPT-2): a table with one row per training position; there is no row past block_size.
# (the table itself is `transformer.wpe` in GPT below)


# -----------------------------------------------------------------------------
# expe (ExPE, Eq. 3): dims i < l of the normalized attention input are overwritten with
# S + θ·(n + i). Computed in fp32: in bf16 neighbouring positions round to the same value.

def expe_values(pos, l, start, theta, stable=False):
    i = torch.zeros(l, device=pos.device) if stable else torch.arange(l, device=pos.device, dtype=torch.float32)
    return start + theta * (pos.float()[:, None] + i[None, :])  # (T, l)


# exqpe (ExQPE, reconstruction): dim i holds S + δ·floor((n + i) / period). With period = l,
# moving one position steps exactly one dim by δ, and the dims sum to l·S + δ·n (Hermite).
# `pos` may be fractional under pos_scale, so the scale multiplies the values instead.

def exqpe_values(pos, l, start, step, period):
    i = torch.arange(l, device=pos.device, dtype=torch.float32)
    return start + step * torch.floor((pos.float()[:, None] + i[None, :]) / period)


def expe_override(x, values):
    """Replace the first l channels of x (B, T, C) by values (T, l); the rest is untouched."""
    l = values.size(-1)
    return torch.cat((values.to(x.dtype).expand(x.size(0), -1, -1), x[..., l:]), dim=-1)


# -----------------------------------------------------------------------------
# rope (Su et al. 2021), rotate-half convention of HF Llama: dim j pairs with dim j + D/2.
# pos_scale < 1 is linear position interpolation (Chen et al. 2023).

def rope_cos_sin(pos, head_dim, base):
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos.device) / head_dim)
    ang = pos.float()[:, None] * inv_freq[None, :]
    ang = torch.cat((ang, ang), dim=-1)  # (T, D)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


# -----------------------------------------------------------------------------
# alibi (Press et al. 2022): head h adds -m_h · (query pos - key pos) to its logits, with the
# geometric slopes of the paper (interleaved for head counts that are not a power of two).

def alibi_slopes(n_head):
    def pow2(n):
        return [2 ** (-8 * (k + 1) / n) for k in range(n)]
    p = 2 ** math.floor(math.log2(n_head))
    slopes = pow2(p) + pow2(2 * p)[0::2][:n_head - p]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes, scale, q_pos, k_pos):
    """Dense (H, Tq, Tk) additive bias with the causal mask folded in (-inf above the diagonal)."""
    dist = q_pos[:, None] - k_pos[None, :]
    bias = -(slopes * scale)[:, None, None] * dist[None].float()
    return bias.masked_fill(dist[None] < 0, float('-inf'))


_flex_attention = None  # compiled once on first use
_block_masks = {}


def alibi_flex(q, k, v, slopes, scale, offset):
    """ALiBi through FlexAttention: the bias is computed per score, no (T x T) tensor is stored."""
    global _flex_attention
    from torch.nn.attention.flex_attention import flex_attention, create_block_mask
    if _flex_attention is None:
        _flex_attention = torch.compile(flex_attention, dynamic=False)
    Tq, Tk = q.size(-2), k.size(-2)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * scale * (q_idx + offset - kv_idx)

    def causal(b, h, q_idx, kv_idx):
        return q_idx + offset >= kv_idx

    key = (Tq, Tk, offset, str(q.device))
    if key not in _block_masks:  # building a block mask costs a pass over the blocks: reuse it
        _block_masks[key] = create_block_mask(causal, None, None, Tq, Tk, device=q.device)
    block_mask = _block_masks[key]
    return _flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)


# -----------------------------------------------------------------------------
# tape (TAPE, Zhu et al. 2025; ../shared/docs/tape-spec.md): each block carries a position state
# z (B, H, T, D) = [Re | Im] of one complex number per head, token and RoPE frequency. It starts
# as exactly RoPE, rotates q and k like RoPE, is mixed along tokens by the block's own causal
# attention probabilities (it rides along as extra value channels of the same SDPA call), and
# then by the MLP output through a gated head-mixing map. Both updates act alike on every
# frequency and on Re and Im, so rotating all of z (e.g. shifting every position) changes no
# logit: the model stays exactly relative. Extra parameters: (L-1)(H^2 + C*I + 2*H*I), since
# the last block's state is discarded (the authors' code builds that update too, L(...), and
# leaves it untrained).

def tape_init(pos, n_head, head_dim, base):
    cos, sin = rope_cos_sin(pos, head_dim, base)  # the state at init is RoPE's cos/sin
    F2 = head_dim // 2
    return torch.cat((cos[:, :F2], sin[:, :F2]), dim=-1).expand(1, n_head, -1, -1)  # (1, H, T, D)


def tape_rotate(x, z):
    """Rotate q or k (B, H, T, D) by the state z like RoPE (z = RoPE's state gives RoPE exactly)."""
    zr, zi = z.chunk(2, dim=-1)
    return apply_rope(x, torch.cat((zr, zr), dim=-1), torch.cat((zi, zi), dim=-1))


class TAPE(nn.Module):
    """The two updates of the position state in one block; both start at zero (TAPE == RoPE)."""
    def __init__(self, config):
        super().__init__()
        H, I = config.n_head, config.tape_inner or 4 * config.n_head
        self.post = nn.Parameter(torch.zeros(H, H))              # attention side: head mixing
        self.gate = nn.Linear(config.n_embd, I, bias=False)     # MLP side: a gate per token and channel
        self.up = nn.Parameter(torch.zeros(I, H))                # heads -> I
        self.down = nn.Parameter(torch.randn(H, I) * 0.02)       # I -> heads
        self.rowsum = config.tape_rowsum

    def attn_update(self, az):
        """az: the attention-weighted past states (A z), (B, H, T, D)."""
        w = torch.diag(self.post.sum(1)) if self.rowsum else self.post
        with torch.autocast(az.device.type, enabled=False):  # the state accumulates over layers: fp32
            return torch.einsum('gh,bhtd->bgtd', w.float(), az.float())

    def mlp_update(self, f, z):
        """f: the block's MLP output (B, T, C), before the residual add."""
        g = F.silu(self.gate(f)).transpose(1, 2)[..., None]  # (B, I, T, 1), shared by all frequencies
        with torch.autocast(z.device.type, enabled=False):
            u = torch.einsum('ih,bhtd->bitd', self.up.float(), z)
            return torch.einsum('hi,bitd->bhtd', self.down.float(), g.float() * u)


# -----------------------------------------------------------------------------
# The decoder

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        # normalize in fp32 like HF Llama, then cast back
        return self.weight * F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype)


def make_norm(config):
    if config.arch == 'llama':
        return RMSNorm(config.n_embd, config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class KVCache:
    """Keys (already rotated/encoded) and values of past tokens, one entry per layer."""
    def __init__(self, n_layer):
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.pos = 0  # tokens seen so far = position of the next token

    def update(self, layer, k, v):
        if self.k[layer] is not None:
            k = torch.cat((self.k[layer], k), dim=2)
            v = torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        bias = config.bias and config.arch == 'gpt2'
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=bias)  # q, k, v stacked
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.layer = layer
        self.expe_here = config.pe in ('expe', 'exqpe') and (layer == 0 or not config.expe_once)
        self.expe_v = config.expe_v

    def forward(self, x, pe, cache=None):
        B, T, C = x.size()
        if self.expe_here and not self.expe_v:  # Q and K see positions, V the plain normalized input
            w, b = self.c_attn.weight, self.c_attn.bias
            q, k = F.linear(expe_override(x, pe['expe']), w[:2 * C], None if b is None else b[:2 * C]).split(C, dim=2)
            v = F.linear(x, w[2 * C:], None if b is None else b[2 * C:])
        else:
            q, k, v = self.c_attn(expe_override(x, pe['expe']) if self.expe_here else x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if 'rope' in pe:
            cos, sin = pe['rope']
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if 'tape' in pe:  # the state rides along as extra value channels: A z from the same softmax
            z = pe['tape'].expand(B, -1, -1, -1)
            q, k = tape_rotate(q, z), tape_rotate(k, z)
            v = torch.cat((v, z.to(v.dtype)), dim=-1)
        past = 0
        if cache is not None:
            past = cache.pos
            k, v = cache.update(self.layer, k, v)
        dropout_p = self.dropout if self.training else 0.0
        if 'alibi' in pe:
            slopes, scale = pe['alibi']
            if x.is_cuda and T > 1 and dropout_p == 0.0:  # no T x T tensor (flex has no dropout)
                y = alibi_flex(q, k, v, slopes, scale, past)
            else:
                bias = alibi_bias(slopes, scale, torch.arange(past, past + T, device=x.device),
                                  torch.arange(k.size(2), device=x.device))
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)
        elif past == 0:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        elif T == 1:  # one new token sees every cached key
            y = F.scaled_dot_product_attention(q, k, v)
        else:  # a chunk after a cache: causal mask aligned to the bottom right
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        az = None
        if 'tape' in pe:
            y, az = y.split(C // self.n_head, dim=-1)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y)), az


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.llama = config.arch == 'llama'
        if self.llama:  # SwiGLU: gate and up projections stacked in one matmul
            hidden = config.ffn_hidden or 64 * math.ceil(8 * config.n_embd / 3 / 64)
            self.c_fc = nn.Linear(config.n_embd, 2 * hidden, bias=False)
            self.c_proj = nn.Linear(hidden, config.n_embd, bias=False)
        else:
            self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
            self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        h = self.c_fc(x)
        if self.llama:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate='tanh')  # GPT-2's "gelu_new"
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)
        # the state after the last block is discarded, so its update would never train: none there
        self.tape = TAPE(config) if config.pe == 'tape' and layer < config.n_layer - 1 else None

    def forward(self, x, pe, cache=None):
        a, az = self.attn(self.ln_1(x), pe, cache)
        x = x + a  # the residual stream itself never holds ExPE values
        f = self.mlp(self.ln_2(x))
        if self.tape is not None:  # TAPE's state for the next block, passed on through pe
            z = pe['tape'] + self.tape.attn_update(az)
            pe['tape'] = z + self.tape.mlp_update(f, z)
        return x + f


def check_config(config):
    """Refuse settings that cannot work, with a message that says how to fix them."""
    c = config
    # sizes first: a zero or negative one fails later with an obscure shape error, or not at all
    for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size'):
        if getattr(c, k) < 1:
            raise ValueError(f"{k}={getattr(c, k)} must be at least 1")
    for k in ('ffn_hidden', 'expe_dims', 'exqpe_period', 'tape_inner'):  # 0 = the default
        if getattr(c, k) < 0:
            raise ValueError(f"{k}={getattr(c, k)} must be >= 0 (0 = the default)")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout={c.dropout} is a probability: use a value from 0 to below 1")
    for k in ('norm_eps', 'pos_scale', 'rope_base'):
        if not (math.isfinite(getattr(c, k)) and getattr(c, k) > 0):
            raise ValueError(f"{k}={getattr(c, k)} must be a finite number > 0")
    for k in ('expe_start', 'expe_theta', 'exqpe_step'):
        if not math.isfinite(getattr(c, k)):
            raise ValueError(f"{k}={getattr(c, k)} must be a finite number")
    if c.pe not in PES:
        raise ValueError(f"unknown pe '{c.pe}': choose one of {', '.join(PES)}")
    if c.arch not in ARCHS:
        raise ValueError(f"unknown arch '{c.arch}': choose one of {', '.join(ARCHS)}")
    if c.n_embd % c.n_head:
        raise ValueError(f"n_embd={c.n_embd} is not divisible by n_head={c.n_head}")
    if c.pe in ('rope', 'tape') and (c.n_embd // c.n_head) % 2:
        raise ValueError(f"pe={c.pe} needs an even head size, got {c.n_embd // c.n_head}")
    if c.pe in ('learned', 'nope') and c.pos_scale != 1.0:
        raise ValueError(f"pos_scale={c.pos_scale} has no meaning for pe={c.pe} "
                         "(it has no position values to scale): leave it at 1.0")
    if c.pe in ('expe', 'exqpe') and not 1 <= (c.expe_dims or c.n_embd // 4) <= c.n_embd:
        raise ValueError(f"expe_dims={c.expe_dims} must be between 1 and n_embd={c.n_embd}")
    if c.expe_learned not in ('', 'random', 'init'):
        raise ValueError(f"expe_learned='{c.expe_learned}': use '' (fixed), 'random' or 'init'")
    # a knob that the chosen pe would silently ignore is an error, not a no-op ablation
    defaults = GPTConfig()
    for knobs, pes in ((('expe_theta', 'expe_stable', 'expe_learned'), ('expe',)),
                       (('exqpe_step', 'exqpe_period'), ('exqpe',)),
                       (('expe_dims', 'expe_start', 'expe_once', 'expe_v'), ('expe', 'exqpe')),
                       (('rope_base',), ('rope', 'tape')),
                       (('tape_inner', 'tape_rowsum'), ('tape',))):
        for k in knobs:
            if c.pe not in pes and getattr(c, k) != getattr(defaults, k):
                raise ValueError(f"{k}={getattr(c, k)!r} only applies to pe={'/'.join(pes)}, not pe={c.pe}: "
                                 "leave it at its default")


class GPT(nn.Module):

    def __init__(self, config):
        super().__init__()
        check_config(config)
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=make_norm(config),
        ))
        if config.pe == 'learned':
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
        if config.pe in ('expe', 'exqpe'):
            self.expe_dims = config.expe_dims or config.n_embd // 4
            self.expe_theta = config.expe_theta or 1.0 / (2 * config.block_size)
            self.exqpe_step = config.exqpe_step or 2.0 ** round(math.log2(self.expe_dims / (2 * config.block_size)))
            if config.expe_learned:  # two trainable scalars shared by all blocks
                init = torch.randn(2) * 0.02 if config.expe_learned == 'random' else \
                    torch.tensor([config.expe_start, self.expe_theta])
                self.expe_params = nn.Parameter(init)
        if config.pe == 'alibi':
            self.register_buffer('alibi_slopes', alibi_slopes(config.n_head), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith('c_proj.weight'):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_num_params(self, non_embedding=True):
        """Parameter count; non_embedding drops the position table (and the token table if untied)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.pe == 'learned':
            n -= self.transformer.wpe.weight.numel()
        if non_embedding and not self.config.tie_embeddings:  # a tied table also serves as the LM head
            n -= self.transformer.wte.weight.numel()
        return n

    @property
    def max_len(self):
        """The longest input (in positions, KV cache included) this model accepts; None = no limit."""
        return self.config.block_size if self.config.pe == 'learned' else None

    @property
    def scalable(self):
        """Whether pos_scale means anything for this pe (it has position values to scale)."""
        return self.config.pe not in ('learned', 'nope')

    def pe_inputs(self, pos):
        """What the blocks need to apply this model's PE at absolute positions `pos` (T,)."""
        c, s = self.config, self.config.pos_scale
        if c.pe == 'expe':
            start, theta = self.expe_params if c.expe_learned else (c.expe_start, self.expe_theta)
            return {'expe': s * expe_values(pos, self.expe_dims, start, theta, c.expe_stable)}
        if c.pe == 'exqpe':
            period = c.exqpe_period or self.expe_dims
            return {'expe': s * exqpe_values(pos, self.expe_dims, c.expe_start, self.exqpe_step, period)}
        if c.pe == 'rope':
            return {'rope': rope_cos_sin(pos * s, c.n_embd // c.n_head, c.rope_base)}
        if c.pe == 'alibi':
            return {'alibi': (self.alibi_slopes, s)}
        if c.pe == 'tape':
            return {'tape': tape_init(pos * s, c.n_head, c.n_embd // c.n_head, c.rope_base)}
        return {}

    def forward(self, idx, targets=None, cache=None):
        """Logits for every position (and the mean loss if targets are given).
        With a KVCache, idx holds only the new tokens; positions continue from cache.pos."""
        B, T = idx.size()
        past = cache.pos if cache is not None else 0
        if self.max_len is not None and past + T > self.max_len:
            raise ValueError(f"pe={self.config.pe} accepts at most {self.max_len} positions "
                             f"(asked for {past + T}): use a shorter input or another pe")
        pos = torch.arange(past, past + T, device=idx.device)
        x = self.transformer.wte(idx)
        if self.config.pe == 'learned':
            x = x + self.transformer.wpe(pos)
        elif self.config.pe == 'sinusoidal':
            x = x + (sinusoidal_table(pos * self.config.pos_scale, self.config.n_embd) / math.sqrt(self.config.n_embd)).to(x.dtype)
        x = self.transformer.drop(x)
        pe = self.pe_inputs(pos)
        for block in self.transformer.h:
            x = block(x, pe, cache)
        if cache is not None:
            cache.pos += T
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay 2-D weights (matmuls, embeddings); never biases, norm gains or ExPE's scalars
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{'params': [p for p in params if p.dim() >= 2], 'weight_decay': weight_decay},
                  {'params': [p for p in params if p.dim() < 2], 'weight_decay': 0.0}]
        fused = device_type == 'cuda'
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=fused)

    def flops_per_token(self, T):
        """Training FLOPs per token (PaLM appendix B, as nanoGPT): 6N + 12·L·H·Q·T."""
        c = self.config
        return 6 * self.get_num_params() + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * T

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """Sample max_new_tokens tokens after idx (B, T), with a KV cache. For pe=learned, once
        the sequence outgrows block_size the context is cropped to the last block_size tokens."""
        crop = self.max_len  # a pe with a longest input sees only the last max_len tokens
        cache = KVCache(self.config.n_layer)
        logits, _ = self(idx[:, -crop:] if crop else idx, cache=cache)
        for _ in range(max_new_tokens):
            logits = logits[:, -1, :] / max(temperature, 1e-8)
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('inf')
            idx_next = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
            if crop and cache.pos >= crop:  # no room left: recompute on a cropped window
                logits, _ = self(idx[:, -crop:])
            else:
                logits, _ = self(idx_next, cache=cache)
        return idx


# -----------------------------------------------------------------------------
# Throughput accounting and checkpoints, shared by train.py, eval.py, sample.py, bench.py

PEAK_FLOPS = {  # dense bf16 tensor-core peak per device, FLOP/s (vendor datasheets)
    'H100': 989e12, 'H200': 989e12, 'A100': 312e12, 'A10G': 125e12, 'L4': 121e12,
    'RTX 4090': 165e12, 'RTX 3090': 71e12, 'V100': 125e12, 'A40': 150e12, 'L40S': 362e12,
}


def peak_flops(device_type):
    """Peak FLOP/s of the current CUDA device, or None where we do not know it (CPU, mps)."""
    if device_type != 'cuda':
        return None
    name = torch.cuda.get_device_name()
    for key, flops in PEAK_FLOPS.items():
        if key in name:
            return flops
    return None


def read_checkpoint(path, device='cpu'):
    """The dict in a ckpt.pt (a file or an out_dir), loaded with weights_only=True: tensors and plain
    data only (dicts, lists, tuples, str, int, float, bool, None: all that train.py saves), so a
    checkpoint from elsewhere can never run code. An error says why a file cannot be read and never
    advises re-training: the file may be fine. Returns (checkpoint, path)."""
    if os.path.isdir(path):
        path = os.path.join(path, 'ckpt.pt')
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}: train one with `python train.py ...` first")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device '{device}' is not one torch knows: use cpu, cuda, cuda:N or mps")
    if dev.type == 'cuda' and not (torch.cuda.is_available() and (dev.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"cannot load {path} on device '{device}': this machine has no such CUDA device "
                         f"({torch.cuda.device_count()} found); use --device cpu (the checkpoint itself may be fine)")
    if dev.type == 'mps' and not torch.backends.mps.is_available():
        raise ValueError(f"cannot load {path} on device 'mps': it is not available here; use --device cpu")
    try:
        with open(path, 'rb') as f:
            head = f.read(4)
    except OSError as e:  # permission, a folder named ckpt.pt, ...
        raise ValueError(f"cannot read {path}: {e.strerror} (the checkpoint itself may be fine): fix its permissions "
                         "or read it as its owner")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip; its directory sits at the very end
        if head == b'PK\x03\x04':
            raise ValueError(f"{path} is truncated (a zip without its end, {os.path.getsize(path):,} bytes): an incomplete "
                             "copy or download? copy it again from its source")
        raise ValueError(f"{path} is not a PyTorch checkpoint (torch.save writes a zip file; this is not one)")
    try:
        with warnings.catch_warnings():  # torch's own advice (load with weights_only=False) is exactly what not to do
            warnings.simplefilter('ignore')
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # read from the opcodes, nothing is run
        raise ValueError(f"refused to load {path}: it holds Python objects ({', '.join(found[:3]) or 'unknown'}) that "
                         "could run code when loaded; a train.py checkpoint holds only tensors and plain data")
    except Exception as e:  # a damaged zip member
        raise ValueError(f"{path} is damaged: torch cannot read it ({type(e).__name__}); copy it again from its source")
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get('model_args'), dict) and isinstance(ckpt.get('model'), dict)):
        raise ValueError(f"{path} is a PyTorch file but not a checkpoint of this project (no model and model_args): "
                         "point at a ckpt.pt written by train.py")
    return ckpt, path


def load_checkpoint(path, device='cpu'):
    """Load ckpt.pt from a file or an out_dir; returns (model, checkpoint dict)."""
    ckpt, path = read_checkpoint(path, device)
    args = ckpt['model_args']
    known = {f.name for f in fields(GPTConfig)}
    if set(args) - known:
        raise ValueError(f"{path} has model settings this model.py does not know ({', '.join(sorted(set(args) - known))}): "
                         "it comes from another version of the code")
    model = GPT(GPTConfig(**args))
    state = {k.removeprefix('_orig_mod.'): v for k, v in ckpt['model'].items()}
    bad = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"{path} holds non-finite weights ({bad[0]}{' and more' if len(bad) > 1 else ''}): "
                         "its run diverged before this was saved; use an earlier checkpoint")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing, unexpected or mis-shaped weights
        raise ValueError(f"{path} does not match its model settings ({str(e).splitlines()[1].strip()}): "
                         "it comes from another version of the code")
    model.to(device)
    return model, ckpt
