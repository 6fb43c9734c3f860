"""
One GPT decoder with a positional-encoding switch (`pe`) and an architecture switch (`arch`).

pe:   see PES below (expe, exqpe, rope, sinusoidal, learned, alibi, nope, tape, fire, t5, randpe, xpos)
arch: gpt2  (LayerNorm, GELU MLP, dropout, optional bias, tied embeddings by default)
      llama (RMSNorm, SwiGLU MLP, no bias, optional tied embeddings)

Every positional encoding is one class in the "Positional encodings" section: its math, its
parameters, what it contributes to the decoder and what it can do. Positions are absolute token
indices n = 0, 1, 2, ... (offset by the KV cache when decoding), multiplied by `pos_scale` at
inference for the PEs where that means something (position interpolation).
"""
import math
import re
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

# The oldest torch the suite passes on (README, Requirements): older ones break FlexAttention (the bias pes'
# GPU path) or compile differently from eager; stop at import, before any of it runs.
TORCH_FLOOR = (2, 10)


def torch_problem(version):
    """Why torch `version` (e.g. '2.9.1+cpu') cannot run this code, or '' if it can."""
    found = tuple(int(n) for n in re.findall(r'\d+', str(version))[:2])
    if found >= TORCH_FLOOR:
        return ''
    floor = '.'.join(map(str, TORCH_FLOOR))
    return f"error: torch {version} found, but this code needs torch >= {floor}: upgrade it (pip install 'torch>={floor}')"


if torch_problem(torch.__version__):
    raise SystemExit(torch_problem(torch.__version__))

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
    pe: str = 'expe'            # a name in PES
    tie_embeddings: bool = True # share the token embedding with the LM head
    ffn_hidden: int = 0         # llama MLP width; 0 -> 8/3 * n_embd rounded up to a multiple of 64
    norm_eps: float = 1e-5
    pos_scale: float = 1.0      # multiplies positions (inference-time interpolation); 1.0 = as trained
    # ExPE (Eq. 3): the first l dims of the Q/K input become S + θ(n+i)
    expe_dims: int = 0          # l; 0 -> n_embd // 4 (the paper's value is lost; docs/expe.md)
    expe_start: float = 0.0     # S (paper's example value)
    expe_theta: float = 0.0     # θ; 0 -> 1 / (2 * block_size) (paper's example value)
    expe_stable: bool = False   # ablation "p is stable": all l dims get S + θn
    expe_once: bool = False     # ablation "once": override only in the first block
    expe_learned: str = ''      # ablation: '' fixed, 'random' learned S/θ from random init, 'init' learned from S/θ
    expe_v: bool = False        # ablation: override the V input too
    # ExQPE (reconstruction, docs/expe.md): dim i holds S + δ·floor((n+i)/period)
    exqpe_step: float = 0.0     # δ; 0 -> the power of two nearest to l/(2T), so values are exact in bf16
    exqpe_period: int = 0       # 0 -> l (then exactly one dim steps by δ per position)
    rope_base: float = 10000.0  # rope, and tape's initial state
    # RoPE length extensions (rope, randpe, tape's initial state); linear interpolation is pos_scale = 1/s
    rope_scaling: str = ''      # '' none, 'ntk' (NTK-aware base), 'yarn' (YaRN: NTK-by-parts and attention temperature)
    rope_factor: float = 1.0    # s, the extension factor of ntk and yarn (new length / the length the RoPE was trained at)
    rope_original: int = 0      # yarn: L, the length the RoPE weights were trained at (required with yarn)
    yarn_alpha: float = 1.0     # yarn: pairs that turn fewer than α times over L are interpolated (θ/s)
    yarn_beta: float = 32.0     # yarn: pairs that turn more than β times over L keep θ
    # TAPE (Zhu et al. 2025): a per-layer position state updated by attention and by the MLP
    tape_inner: int = 0         # I, the width of the MLP-side update; 0 -> 4 * n_head
    tape_rowsum: bool = False   # the authors' code: the H x H head mixing acts as per-head scalars (row sums)
    # FIRE (Li et al. 2023): a learned MLP of ψ(i-j)/ψ(max(L, i)), ψ(x) = log(c·x + 1); c and L learned
    fire_width: int = 32        # hidden units of the MLP 1 -> width -> n_head (the reference code's 32)
    fire_c: float = 0.1         # initial c (the reference code's init_c)
    fire_L: float = 512.0       # initial threshold L (the reference code's init_L; learned as a multiplier of it)
    fire_shared: bool = False   # one MLP, c and L for all blocks (default: one per block, as the reference code)
    # T5 (Raffel et al. 2020): a learned bias per head and bucket of the causal distance, shared by all blocks
    t5_buckets: int = 32        # half exact distances, half log-spaced
    t5_max_distance: int = 128  # distances from here on share the last bucket
    # RandPE (Ruoss et al. 2023): in training, a row's positions are a sorted random subset of [0, randpe_max)
    randpe_max: int = 0         # 0 -> 16 * block_size (the paper needs it >= the longest test length)
    # xPos (Sun et al. 2022): RoPE with q scaled by ζ_i^(n/γ_base) and k by ζ_i^(-n/γ_base)
    xpos_gamma: float = 0.4     # ζ_i = (2i/D + γ) / (1 + γ) for the pair of frequency i
    xpos_scale_base: float = 512.0  # γ_base
    # KERPLE (Chi et al. 2022), log variant: head h adds -r1·log(1 + r2·|i - j|), r1, r2 > 0 learned per block and head
    # p-RoPE (Barbero et al. 2025): RoPE on the highest fraction p of the frequencies; the lowest (1 - p) do not rotate
    prope_p: float = 0.75       # p (the paper tries 0.25 and 0.75)
    # CoPE (Golovneva et al. 2024): positions are sums of gates σ(q·k) over the keys, interpolated in a learned table
    cope_npos: int = 0          # positions in the table (larger ones clamp to the last); 0 -> block_size
    # FoX (Lin et al. 2025): a forget gate per head, f_t = σ(w·x_t + b); logits get Σ log f over the keys between, no pe else
    # log-n attention (Qwen; YaRN's and Scalable-Softmax's idea): for any pe, q at position n >= block_size is
    # multiplied by log(n + 1) / log(block_size), so logits grow with the log of the context past the training length
    logn_attn: bool = False


# =============================================================================
# Positional encodings
#
# A pe is one class with the shape of `PE` below, and one entry in PES at the end of this section.
# GPT builds it from config.pe (as `model.pe`) and calls it at fixed points of every forward:
#   embed(x, pos)                   token embeddings (B, T, C) -> the first block's input
#   setup(pos)                      once: what the blocks need at the absolute positions pos (T,)
#                                   (or (B, T): a training batch's own, from train_positions)
#   project(c_attn, x, st, layer)   the normalized attention input (B, T, C) -> q, k, v (B, T, C)
#   rotate(q, k, v, st, layer)      q, k, v per head (B, H, T, D), before the KV cache and attention
#   kept(x, st, layer)              per-key values (B, H, T) to keep for every key, past ones too: the KV cache
#                                   keeps them beside k, v (FoX's log forget gates); None = nothing
#   bias_tables(st, layer, kept)    what score_bias or logit_bias need in this block (tensors); kept: all keys'
#   score_bias(b, h, q_pos, k_pos, tables)  added to the attention logits, if has_bias (see attention())
#   logit_bias(q, k, tables, past)  added to the logits from q and every key, if has_logit_bias: content-aware
#                                   pes (CoPE); dense attention (a (B, H, Tq, Tk) tensor), on every device
#   after_attention(y, st, layer)   the attention output per head (B, H, T, D')
#   after_block(f, st, layer)       the block's MLP output (B, T, C)
# `st` is the dict setup returned; a pe may update it from block to block (TAPE does).
# What it can do: max_len() (the longest input; None = any), scalable (pos_scale means something),
# knobs (the GPTConfig fields it owns: set on another pe, they are an error), check() (its own
# config errors), train_positions() (positions for a training batch, drawn from its seeded numpy RNG;
# None = 0..T-1; evaluation always uses 0..T-1), fp32_logits (its q·k needs fp32 at inference
# under bf16 autocast). Starting from trained weights (start_from: train.py init_from, eval.py --set):
# starts_from (the other pes it starts from exactly), retunable (its knobs that may change there),
# check_parent() (what else it refuses).
# To add a pe: write its class, add its name to PES, add its knobs to GPTConfig.

class PE(nn.Module):
    """The shape every pe has. On its own it adds nothing: it is `nope` (causal attention alone)."""
    knobs = ()          # GPTConfig fields that belong to this pe
    scalable = False    # does pos_scale mean anything (are there position values to scale)?
    has_bias = False    # does it add score_bias to the attention logits (one score at a time: FlexAttention on CUDA)?
    has_logit_bias = False  # does it add logit_bias (from q and all keys: dense attention)?
    fp32_logits = False # at inference under autocast, must q·k be computed in fp32 (not bf16)?
    renamed = ()        # (old state-dict name pattern, new name) for checkpoints from before a rename
    starts_from = ()    # other pes whose trained weights this pe starts from exactly (its own parts start at zero)
    retunable = ()      # knobs that a model started from trained weights may set anew (start_from)

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.check()  # before a subclass builds anything from the settings

    def check(self):
        """Raise ValueError (one line: the problem and the fix) for settings this pe cannot use.
        It runs first, so it reads only self.config."""

    def check_parent(self, parent):
        """Raise ValueError (one line) if this pe cannot start from the weights of a model with GPTConfig `parent`
        (start_from). By default a knob that the parent's pe has too keeps its value, unless it is retunable."""
        for k in self.knobs:
            old, new = getattr(parent, k), getattr(self.config, k)
            if k in PES[parent.pe].knobs and k not in self.retunable and old != new:
                raise ValueError(f"{k}={new!r}, but the weights were trained with {k}={old!r}: keep it "
                                 f"(pe={self.config.pe} may change {', '.join(self.retunable) or 'none of its settings'})")

    def max_len(self):
        """The longest input in positions, KV cache included; None = no limit."""
        return None

    def train_positions(self, rng, batch_size, T):
        """Positions (batch_size, T) for one training batch, drawn from the batch's numpy RNG; None = 0..T-1."""
        return None

    def embed(self, x, pos):
        return x

    def setup(self, pos):
        return {}

    def project(self, c_attn, x, st, layer):
        return c_attn(x).split(x.size(-1), dim=2)

    def rotate(self, q, k, v, st, layer):
        return q, k, v

    def kept(self, x, st, layer):
        """Per-key values (B, H, T) from this block's normalized attention input x (B, T, C) that bias_tables needs
        for every key: the KV cache keeps them, so a chunk after a cache still sees the past keys'. None = none."""
        return None

    def bias_tables(self, st, layer, kept):
        """Tensors score_bias (or logit_bias) needs in this block; kept: the per-key values of every key (KV cache
        included), or None. Picked here, outside score_bias, so that one compiled FlexAttention kernel serves every
        block (a block index inside it would compile one per block)."""
        return None

    def score_bias(self, b, h, q_pos, k_pos, tables):
        """The logit bias of batch row b, head h, query position q_pos and key position k_pos: broadcast index
        grids on the dense path, 0-d tensors inside FlexAttention. So: elementwise ops and table indexing only.
        Positions are indices into the input (KV cache included), 0..Tk-1; a key after the query (masked
        anyway) arrives as the query's own position, so a bias defined for k_pos <= q_pos only is safe."""
        raise NotImplementedError

    def logit_bias(self, q, k, tables, past):
        """The logit bias (B, H, Tq, Tk) of queries q (B, H, Tq, D) at positions past..past+Tq-1 over every key
        k (B, H, Tk, D): for pes that need q against all keys at once (CoPE). The causal mask is added after;
        keys after a query must still give finite values (use causal_mask)."""
        raise NotImplementedError

    def after_attention(self, y, st, layer):
        return y

    def after_block(self, f, st, layer):
        pass


def rope_checks(config):
    """Settings every pe with a RoPE rotation needs, and its length extension."""
    c = config
    if (c.n_embd // c.n_head) % 2:
        raise ValueError(f"pe={c.pe} needs an even head size, got {c.n_embd // c.n_head}: change n_embd or n_head")
    if not (math.isfinite(c.rope_base) and c.rope_base > 1):
        raise ValueError(f"rope_base={c.rope_base} must be a finite number > 1")
    if c.rope_scaling not in ('', 'ntk', 'yarn'):
        raise ValueError(f"rope_scaling='{c.rope_scaling}': use '' (none; pos_scale=1/s is linear interpolation), 'ntk' or 'yarn'")
    if c.rope_scaling and not (math.isfinite(c.rope_factor) and c.rope_factor >= 1):
        raise ValueError(f"rope_factor={c.rope_factor} is the extension factor s: a finite number >= 1")
    D = c.n_embd // c.n_head
    if c.rope_scaling == 'ntk' and D < 4:
        raise ValueError(f"rope_scaling=ntk needs a head size of at least 4 (its base grows by s^(D/(D-2))), got head "
                         f"size {D}: raise n_embd or lower n_head")
    if c.rope_scaling == 'ntk' and math.log(c.rope_base) + D / (D - 2) * math.log(c.rope_factor) > 88:  # float32's max
        raise ValueError(f"rope_factor={c.rope_factor!r} overflows the NTK base rope_base * s^(D/(D-2)) in float32: "
                         "s is new length / trained length (2 to 64 in practice)")
    d = GPTConfig()
    unused = [k for k in ('rope_factor', 'rope_original', 'yarn_alpha', 'yarn_beta') if getattr(c, k) != getattr(d, k)
              and not (c.rope_scaling == 'yarn' or (c.rope_scaling == 'ntk' and k == 'rope_factor'))]
    if unused:
        k = unused[0]
        raise ValueError(f"{k}={getattr(c, k)!r} does nothing with rope_scaling='{c.rope_scaling}': " +
                         ("set rope_scaling='ntk' or 'yarn'" if k == 'rope_factor' else "it is a setting of rope_scaling='yarn'")
                         + ", or leave it at its default")
    if c.rope_scaling == 'yarn' and c.rope_original < 1:
        raise ValueError("rope_scaling='yarn' needs rope_original, the length the RoPE weights were trained at "
                         "(e.g. the parent's block_size)")
    if c.rope_scaling == 'yarn' and not (0 < c.yarn_alpha < c.yarn_beta < math.inf):
        raise ValueError(f"yarn_alpha={c.yarn_alpha}, yarn_beta={c.yarn_beta}: need 0 < alpha < beta (the paper: 1 and 32)")


# -----------------------------------------------------------------------------
# sinusoidal (Vaswani et al. 2017): PE[n, 2i] = sin(n / 10000^(2i/d)), PE[n, 2i+1] = cos(same),
# added once to the token embedding. Scaled by 1/sqrt(d) so it starts at the size of a
# 0.02-std token embedding instead of drowning it (x-transformers' scaled sinusoidal does the same).

def sinusoidal_table(pos, dim):
    inv_freq = 10000.0 ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim)
    ang = pos.float()[:, None] * inv_freq[None, :]
    return torch.stack((ang.sin(), ang.cos()), dim=-1).flatten(-2)[:, :dim]  # (T, dim), interleaved


class Sinusoidal(PE):
    scalable = True

    def embed(self, x, pos):
        C = x.size(-1)
        return x + (sinusoidal_table(pos * self.config.pos_scale, C) / math.sqrt(C)).to(x.dtype)


# -----------------------------------------------------------------------------
# learned (GPT-2): a table with one row per training position; there is no row past block_size.

class Learned(PE):
    renamed = ((r'^transformer\.wpe\.', 'pe.wpe.'),)

    def __init__(self, config):
        super().__init__(config)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)

    def max_len(self):
        return self.config.block_size

    def check_parent(self, parent):
        if parent.pe == 'learned' and parent.block_size != self.config.block_size:
            raise ValueError(f"pe=learned has a row per position: its table of {parent.block_size} cannot become "
                             f"{self.config.block_size}; keep block_size={parent.block_size}")

    def embed(self, x, pos):
        return x + self.wpe(pos)


# -----------------------------------------------------------------------------
# expe (ExPE, Eq. 3; docs/expe.md): dims i < l of the normalized attention input of Q and K (not V)
# become S + θ·(n + i); the residual stream never holds them. The override is applied inside the
# projection: W·φ(x, n) = W[:, l:]·x[l:] + W[:, :l]·p_n, the position part in fp32, computed once
# for all rows, and q, k are returned in fp32. bf16 precision: S + θ(n+i) is far finer than bf16
# (neighbouring positions share one value from n = 256 at θ = 1/2048), and past the training
# length the position part dominates q and k, so rounding q, k to bf16 costs 0.094 nats at 16x
# (results/bf16.md; docs/pes.md, "bf16"). So at inference their logits are computed in fp32 (fp32_logits); in training
# (n < block_size, small values) bf16 attention costs nothing measurable and keeps flash kernels.

def expe_values(pos, l, start, theta, stable=False):
    i = torch.zeros(l, device=pos.device) if stable else torch.arange(l, device=pos.device, dtype=torch.float32)
    return start + theta * (pos.float()[:, None] + i[None, :])  # (T, l)


EXPE_MAX_VALUE = 1e6  # the largest ExPE/ExQPE value accepted (at 16x the training length): q·k stays finite in fp32


def expe_project(c_attn, x, values, n_out):
    """The first n_out C-wide outputs of c_attn (q, k; and v with expe_v) on φ(x, n): x (B, T, C)
    with its first l channels replaced by values (T, l)."""
    C, l = x.size(-1), values.size(-1)
    w = c_attn.weight[:n_out * C]
    b = None if c_attn.bias is None else c_attn.bias[:n_out * C]
    rest = F.linear(x[..., l:], w[:, l:], b)
    with torch.autocast(x.device.type, enabled=False):  # the position part stays fp32
        pos_part = values.float() @ w[:, :l].float().t()  # (T, n_out * C), the same for every row
    return rest + pos_part  # fp32: attention() decides the precision of q·k


class ExPE(PE):
    knobs = ('expe_dims', 'expe_start', 'expe_once', 'expe_v', 'expe_theta', 'expe_stable', 'expe_learned')
    scalable = True  # multiplies the values (the paper's "scaled by 1/2")
    fp32_logits = True
    renamed = ((r'^expe_params$', 'pe.params'),)
    retunable = ('expe_theta',)  # as long as the step itself stays the parent's (check_parent)

    def __init__(self, config):
        super().__init__(config)
        c = config
        self.l = c.expe_dims or c.n_embd // 4
        self.theta = self.spacing(c)  # (ExQPE's δ, which it calls step)
        if c.expe_learned in ('random', 'init'):  # two trainable scalars (S, θ) shared by all blocks
            self.params = nn.Parameter(torch.randn(2) * 0.02 if c.expe_learned == 'random'
                                       else torch.tensor([c.expe_start, self.theta]))

    def spacing(self, c):
        """The step per position of settings c: θ (0 -> 1/(2T))."""
        return c.expe_theta or 1.0 / (2 * c.block_size)

    def check_parent(self, parent):
        super().check_parent(parent)
        # the default step derives from block_size: a longer block_size would silently scale the positions
        knob, was, now = self.retunable[0], self.spacing(parent), self.spacing(self.config)
        if now != was and not self.config.expe_learned:  # learned: the step is in the weights
            raise ValueError(f"{knob}={getattr(self.config, knob)!r} gives a step of {now!r} per position, but the "
                             f"weights were trained with {was!r} ({knob}=0 derives it from block_size): set {knob}={was!r} "
                             "to keep it (pos_scale scales the positions)")

    def check(self):
        c = self.config
        if not 0 <= c.expe_dims <= c.n_embd:
            raise ValueError(f"expe_dims={c.expe_dims} must be between 1 and n_embd={c.n_embd} (0 = n_embd/4)")
        if c.expe_learned not in ('', 'random', 'init'):
            raise ValueError(f"expe_learned='{c.expe_learned}': use '' (fixed), 'random' or 'init'")
        if not (math.isfinite(c.expe_start) and math.isfinite(c.expe_theta) and c.expe_theta >= 0):
            raise ValueError(f"expe_start={c.expe_start} and expe_theta={c.expe_theta} must be finite "
                             "(θ >= 0, 0 = 1/(2T))")
        top = c.pos_scale * (abs(c.expe_start) + abs(self.spacing(c)) * (16 * c.block_size + (c.expe_dims or c.n_embd // 4)))
        if top > EXPE_MAX_VALUE:  # q·k of such inputs overflows fp32: a table of NaN
            raise ValueError(f"expe_start={c.expe_start}, step {self.spacing(c):g}: the values reach {top:.3g} at 16 x block_size, "
                             f"more than {EXPE_MAX_VALUE:g}, past which q·k overflows fp32: use a smaller start or step")

    def values(self, pos):
        c = self.config
        start, theta = self.params if c.expe_learned else (c.expe_start, self.theta)
        return expe_values(pos, self.l, start, theta, c.expe_stable)

    def setup(self, pos):
        return {'expe': self.config.pos_scale * self.values(pos)}

    def project(self, c_attn, x, st, layer):
        c = self.config
        if c.expe_once and layer > 0:  # ablation "once": the first block only
            return super().project(c_attn, x, st, layer)
        C = x.size(-1)
        if c.expe_v:  # ablation: V sees the positions too
            return expe_project(c_attn, x, st['expe'], 3).split(C, dim=2)
        q, k = expe_project(c_attn, x, st['expe'], 2).split(C, dim=2)
        w, b = c_attn.weight[2 * C:], None if c_attn.bias is None else c_attn.bias[2 * C:]
        return q, k, F.linear(x, w, b)


# exqpe (ExQPE, reconstruction; docs/expe.md): dim i holds S + δ·floor((n + i) / period). With
# period = l, moving one position steps exactly one dim by δ, and the dims sum to l·S + δ·n.
# `pos` may be fractional under pos_scale, so the scale multiplies the values instead.

def exqpe_values(pos, l, start, step, period):
    i = torch.arange(l, device=pos.device, dtype=torch.float32)
    return start + step * torch.floor((pos.float()[:, None] + i[None, :]) / period)


class ExQPE(ExPE):
    knobs = ('expe_dims', 'expe_start', 'expe_once', 'expe_v', 'exqpe_step', 'exqpe_period')
    retunable = ('exqpe_step',)

    def __init__(self, config):
        super().__init__(config)
        self.step = self.spacing(config)

    def spacing(self, c):
        """δ (0 -> the power of two nearest to l/(2T), so every value is exact in bf16)."""
        return c.exqpe_step or 2.0 ** round(math.log2((c.expe_dims or c.n_embd // 4) / (2 * c.block_size)))

    def check(self):
        super().check()
        c = self.config
        if c.exqpe_period < 0 or not math.isfinite(c.exqpe_step):
            raise ValueError(f"exqpe_period={c.exqpe_period} must be >= 0 and exqpe_step={c.exqpe_step} finite (0 = default)")

    def values(self, pos):
        c = self.config
        return exqpe_values(pos, self.l, c.expe_start, self.step, c.exqpe_period or self.l)


# -----------------------------------------------------------------------------
# rope (Su et al. 2021), rotate-half convention of HF Llama: dim j pairs with dim j + D/2; pair i
# turns by n·θ_i at position n, θ_i = base^(-2i/D). Length extensions by a factor s (rope, randpe,
# and tape's initial state; xpos has its own decay for length and takes none):
#   linear position interpolation (Chen et al. 2023): pos_scale = 1/s, positions n/s;
#   rope_scaling='ntk', NTK-aware (bloc97 2023): base -> base·s^(D/(D-2)): θ_0 is kept, the lowest
#     frequency θ_(D/2-1) becomes θ/s, and the ones between something in between;
#   rope_scaling='yarn' (Peng et al. 2023): "NTK-by-parts" (yarn_ramp) and q, k each multiplied by
#     0.1·ln(s) + 1, so the logits by its square (the paper's temperature: sqrt(1/t) = 0.1 ln s + 1).

def rope_inv_freq(head_dim, base, device=None):
    return base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def yarn_ramp(head_dim, base, original, alpha, beta):
    """YaRN's share of interpolation per frequency pair (D/2,): 0 keeps θ_i, 1 makes it θ_i/s. Pair i turns
    r(i) = L·θ_i/2π times over the original length L: pairs with r >= β keep θ_i, pairs with r <= α are
    interpolated, and between them the ramp is linear in i, from floor(i where r = β) to ceil(i where r = α),
    as in the authors' code and HF transformers (the paper's Eq. ramps linearly in r: the same outside (α, β))."""
    def pair(rotations):  # the (real) i at which r(i) = rotations; in logs, so any positive α, β stay finite
        return head_dim * (math.log(original) - math.log(2 * math.pi) - math.log(rotations)) / (2 * math.log(base))
    low, high = max(math.floor(pair(beta)), 0), min(math.ceil(pair(alpha)), head_dim - 1)
    i = torch.arange(head_dim // 2, dtype=torch.float32)
    return ((i - low) / (high - low if high != low else 1e-3)).clamp(0, 1)


def rope_frequencies(config, device=None):
    """θ_i (D/2,) under config's length extension, and the factor on q and k (YaRN's temperature; else 1)."""
    c = config
    D, s = c.n_embd // c.n_head, c.rope_factor
    if c.rope_scaling == 'ntk':
        return rope_inv_freq(D, c.rope_base * s ** (D / (D - 2)), device), 1.0
    inv_freq = rope_inv_freq(D, c.rope_base, device)
    if c.rope_scaling == 'yarn':
        ramp = yarn_ramp(D, c.rope_base, c.rope_original, c.yarn_alpha, c.yarn_beta).to(inv_freq.device)
        return inv_freq * (1 - ramp) + inv_freq / s * ramp, 0.1 * math.log(s) + 1
    return inv_freq, 1.0


def rope_cos_sin(pos, head_dim, base, inv_freq=None):
    """cos and sin (..., T, D) of the angles n·θ_i; θ_i = base^(-2i/D) unless inv_freq gives them."""
    inv_freq = rope_inv_freq(head_dim, base, pos.device) if inv_freq is None else inv_freq
    ang = pos.float()[..., None] * inv_freq
    ang = torch.cat((ang, ang), dim=-1)  # (T, D)
    return ang.cos(), ang.sin()


def apply_rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return (x * cos + torch.cat((-x2, x1), dim=-1) * sin).to(x.dtype)


ROPE_KNOBS = ('rope_base', 'rope_scaling', 'rope_factor', 'rope_original', 'yarn_alpha', 'yarn_beta')


class RoPE(PE):
    knobs = ROPE_KNOBS
    scalable = True
    retunable = ROPE_KNOBS  # the weights carry over to another base or extension (that is what they are for)

    def check(self):
        rope_checks(self.config)

    def frequencies(self, device):
        """θ_i (D/2,) and the factor on q and k: the hook a RoPE variant overrides to change the frequencies
        (e.g. drop some), keeping the rotation, the length extensions and the KV cache as they are."""
        return rope_frequencies(self.config, device)

    def setup(self, pos):
        c = self.config
        inv_freq, m = self.frequencies(pos.device)
        cos, sin = rope_cos_sin(pos * c.pos_scale, c.n_embd // c.n_head, c.rope_base, inv_freq)
        return {'rope': (cos, sin) if m == 1 else (cos * m, sin * m)}

    def rotate(self, q, k, v, st, layer):
        cos, sin = st['rope']
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


# -----------------------------------------------------------------------------
# randpe (Ruoss et al. 2023): RoPE, but in training each row's positions are a sorted random subset
# of [0, randpe_max), drawn from the batch's seeded RNG (train.py), so every relative distance up to
# randpe_max is seen at the training length. Evaluation uses positions 0..n-1 like RoPE (the
# authors' code draws a new random subset at test time too; docs/pes.md, "What is a reconstruction").

class RandPE(RoPE):
    knobs = ROPE_KNOBS + ('randpe_max',)
    retunable = knobs  # randpe_max only draws training positions

    def __init__(self, config):
        super().__init__(config)
        self.max_pos = config.randpe_max or 16 * config.block_size

    def check(self):
        super().check()
        c = self.config
        if c.randpe_max and c.randpe_max < c.block_size:
            raise ValueError(f"randpe_max={c.randpe_max} is below block_size={c.block_size}: "
                             "the random positions of a row must fit in [0, randpe_max); raise it or set 0")
        if (c.randpe_max or 16 * c.block_size) > 2 ** 24:
            raise ValueError(f"randpe_max={c.randpe_max or 16 * c.block_size}: positions past 2^24 are not exact in float32 "
                             f"(RoPE's angles): at most {2 ** 24}")

    def train_positions(self, rng, batch_size, T):
        rows = [torch.from_numpy(rng.choice(self.max_pos, size=T, replace=False)) for _ in range(batch_size)]
        return torch.stack(rows).sort(dim=1).values

    def setup(self, pos):
        st = super().setup(pos)
        if pos.dim() == 2:  # a training batch's own positions (B, T): the same for every head
            st['rope'] = tuple(t[:, None] for t in st['rope'])
        return st


# -----------------------------------------------------------------------------
# xpos (Sun et al. 2022): RoPE whose pair of frequency i is also scaled, q by ζ_i^(n/γ_base) and k by
# ζ_i^(-n/γ_base), ζ_i = (2i/D + γ)/(1 + γ), so q_m·k_n decays like ζ_i^((m-n)/γ_base) with distance.
# Not centred (the authors' code centres n on the middle of the input, which changes cached keys as
# the input grows): k's scale grows with n, so inputs stop where it would pass 2^96 (max_len).
# The paper's blockwise causal attention at inference (LEX) is not part of it.

def xpos_scale(pos, head_dim, gamma, scale_base):
    """ζ_i^(n / scale_base) (T, D), laid out like rope_cos_sin (pair i is dims i and i + D/2)."""
    zeta = (torch.arange(0, head_dim, 2, dtype=torch.float32, device=pos.device) / head_dim + gamma) / (1 + gamma)
    scale = zeta ** (pos.float()[..., None] / scale_base)
    return torch.cat((scale, scale), dim=-1)


class XPos(PE):
    knobs = ('rope_base', 'xpos_gamma', 'xpos_scale_base')
    retunable = ('rope_base',)
    scalable = True  # positions x s, in the rotation and the decay

    def check(self):
        c = self.config
        rope_checks(c)
        for k in ('xpos_gamma', 'xpos_scale_base'):
            if not (math.isfinite(getattr(c, k)) and getattr(c, k) > 0):
                raise ValueError(f"{k}={getattr(c, k)} must be a finite number > 0")
        if self.max_len() < c.block_size:
            raise ValueError(f"xpos_scale_base={c.xpos_scale_base} with xpos_gamma={c.xpos_gamma} lets k's scale pass 2^96 "
                             f"after {self.max_len()} tokens, fewer than block_size={c.block_size}: raise xpos_scale_base")

    def max_len(self):
        c = self.config
        bits_per_pos = math.log1p(1 / c.xpos_gamma) / math.log(2)  # log2(1/ζ_0), ζ_0 = γ/(1+γ): k's fastest-growing scale
        return int(96 * c.xpos_scale_base / (bits_per_pos * c.pos_scale))

    def setup(self, pos):
        c = self.config
        D = c.n_embd // c.n_head
        cos, sin = rope_cos_sin(pos * c.pos_scale, D, c.rope_base)
        scale = xpos_scale(pos * c.pos_scale, D, c.xpos_gamma, c.xpos_scale_base)
        return {'xpos_q': (cos * scale, sin * scale), 'xpos_k': (cos / scale, sin / scale)}

    def rotate(self, q, k, v, st, layer):
        return apply_rope(q, *st['xpos_q']), apply_rope(k, *st['xpos_k']), v


# -----------------------------------------------------------------------------
# alibi (Press et al. 2022): head h adds -m_h · (query pos - key pos) to its logits, with the
# geometric slopes of the paper (interleaved for head counts that are not a power of two).

def alibi_slopes(n_head):
    def pow2(n):
        return [2 ** (-8 * (k + 1) / n) for k in range(n)]
    p = 2 ** math.floor(math.log2(n_head))
    slopes = pow2(p) + pow2(2 * p)[0::2][:n_head - p]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(PE):
    scalable = True  # multiplies the distances
    has_bias = True

    def __init__(self, config):
        super().__init__(config)
        self.register_buffer('slopes', alibi_slopes(config.n_head), persistent=False)

    def score_bias(self, b, h, q_pos, k_pos, tables):
        return -self.slopes[h] * self.config.pos_scale * (q_pos - k_pos)


# -----------------------------------------------------------------------------
# t5 (Raffel et al. 2020): head h adds a learned b[bucket(i - j), h], one table for all blocks (T5
# computes it in the first block and reuses it). Causal buckets as T5's decoder: distances below
# t5_buckets/2 each have a bucket, then log-spaced buckets up to t5_max_distance, then the last one.
# Added to the scaled logits, like ALiBi (T5 itself does not scale its logits).

def t5_bucket(dist, n_buckets, max_distance):
    """T5's bucket of a causal distance q - k >= 0 (float; integer-valued unless scaled)."""
    exact = n_buckets // 2
    log_bucket = exact + (torch.log(dist.clamp(min=exact) / exact) / math.log(max_distance / exact)
                          * (n_buckets - exact)).long()
    return torch.where(dist < exact, dist.long(), log_bucket.clamp(max=n_buckets - 1))


class T5(PE):
    knobs = ('t5_buckets', 't5_max_distance')
    scalable = True  # multiplies the distances before bucketing
    has_bias = True

    def __init__(self, config):
        super().__init__(config)
        self.rel = nn.Embedding(config.t5_buckets, config.n_head)

    def check(self):
        c = self.config
        if c.t5_buckets < 2 or c.t5_max_distance <= c.t5_buckets // 2:
            raise ValueError(f"t5_buckets={c.t5_buckets}, t5_max_distance={c.t5_max_distance}: need at least 2 "
                             "buckets and a max distance above half of them")

    def score_bias(self, b, h, q_pos, k_pos, tables):
        c = self.config
        dist = (q_pos - k_pos).clamp(min=0) * c.pos_scale  # future keys (masked) get bucket 0, as in T5
        return self.rel.weight[t5_bucket(dist, c.t5_buckets, c.t5_max_distance), h]


# -----------------------------------------------------------------------------
# fire (FIRE, Li et al. 2023): head h adds f(ψ(i - j) / ψ(max(L, i)))_h, ψ(x) = log(c·x + 1), with f
# an MLP 1 -> fire_width -> n_head (ReLU); f, c and the threshold L are learned, one set per block.
# Details the paper's text leaves open follow TAPE's FIRE baseline (VITA-Group/TAPE, fire.py): ψ takes
# |c·x|, the threshold is |L|, L is learned as a multiplier of fire_L, 1e-6 is added to the denominator,
# and the MLP has PyTorch's default Linear init. A ReLU MLP of one input is piecewise linear, so setup rewrites f
# once per forward as pieces A + B·u between its sorted kinks (exact, and differentiable in the
# weights): a score then costs two logs, a 6-step binary search and a multiply-add, not a 32-wide MLP.

def fire_pieces(w1, b1, w2, b2):
    """f(u) = w2·relu(w1·u + b1) + b2 as pieces: kinks (P,) sorted and padded with +inf to a power of
    two P > width, and A, B (H, P) such that f(u) = A[:, s] + B[:, s]·u for s = #(kinks <= u)."""
    W = w1.numel()
    P = 2 ** math.ceil(math.log2(W + 1))
    with torch.no_grad():  # where the pieces change is not differentiable (ReLU's kink)
        t, order = torch.where(w1 != 0, -b1 / w1, torch.inf).sort()  # unit k switches at u = -b1/w1
        rank = order.argsort()
    s = torch.arange(P, device=w1.device)[:, None]  # piece s: kinks[s-1] <= u < kinks[s]
    on = torch.where(w1 > 0, rank < s, torch.where(w1 < 0, rank >= s, b1 > 0)).float()  # (P, W)
    kinks = torch.cat((t, t.new_full((P - W,), torch.inf)))
    return kinks, (w2 * b1) @ on.t() + b2[:, None], (w2 * w1) @ on.t()


class FIREBlock(nn.Module):
    """f, c and L of one block."""
    def __init__(self, config):
        super().__init__()
        W, H = config.fire_width, config.n_head
        self.w1 = nn.Parameter(torch.empty(W).uniform_(-1.0, 1.0))  # Linear(1, W): bound 1/sqrt(fan-in)
        self.b1 = nn.Parameter(torch.empty(W).uniform_(-1.0, 1.0))
        self.w2 = nn.Parameter(torch.empty(H, W).uniform_(-W ** -0.5, W ** -0.5))  # Linear(W, H)
        self.b2 = nn.Parameter(torch.empty(H).uniform_(-W ** -0.5, W ** -0.5))
        self.c = nn.Parameter(torch.tensor(config.fire_c))
        self.L = nn.Parameter(torch.tensor(1.0))  # the threshold is |L * fire_L|


class FIRE(PE):
    knobs = ('fire_width', 'fire_c', 'fire_L', 'fire_shared')
    scalable = True  # multiplies positions (i - j and i)
    has_bias = True

    def __init__(self, config):
        super().__init__(config)
        self.blocks = nn.ModuleList(FIREBlock(config) for _ in range(1 if config.fire_shared else config.n_layer))

    def check(self):
        c = self.config
        if c.fire_width < 1 or c.fire_c <= 0 or c.fire_L <= 0:
            raise ValueError(f"fire_width={c.fire_width}, fire_c={c.fire_c}, fire_L={c.fire_L} must be positive")
        if c.fire_L > 2 ** 24 or c.fire_c > 1e30:  # ψ(x) = log(c·x + 1) of positions up to 2^24 must stay finite in fp32
            raise ValueError(f"fire_c={c.fire_c} (at most 1e30) and fire_L={c.fire_L} (at most 2^24, the exact float32 "
                             "positions): past them ψ = log(c·x + 1) overflows fp32")

    def setup(self, pos):
        # per query row (pos): c and 1/(ψ(max(L, i)) + 1e-6), as tables that score_bias indexes:
        # FlexAttention's backward handles captured tensors that score_mod indexes, not a 0-d c used directly
        i = (pos * self.config.pos_scale).float()
        tables = []
        with torch.autocast(pos.device.type, enabled=False):  # fp32
            for b in self.blocks:
                c, L = b.c.abs(), (b.L * self.config.fire_L).abs()
                den = 1 / (torch.log1p(c * torch.maximum(i, L)) + 1e-6)
                tables.append((pos[0], c.expand(len(pos)).contiguous(), den, *fire_pieces(b.w1, b.b1, b.w2, b.b2)))
        return {'fire': tables}

    def bias_tables(self, st, layer, kept):
        return st['fire'][0 if self.config.fire_shared else layer]

    def score_bias(self, b, h, q_pos, k_pos, tables):
        pos0, c, den, kinks, A, B = tables
        row = q_pos - pos0  # the query's row in the per-query tables
        dist = (q_pos - k_pos).clamp(min=0) * self.config.pos_scale
        u = torch.log1p(c[row] * dist) * den[row]  # ψ(i - j) / ψ(max(L, i)): progressive interpolation
        step = kinks.numel() // 2
        s = (kinks[step - 1] <= u).long() * step  # binary search: s = #(kinks <= u)
        while step > 1:
            step //= 2
            s = torch.where(kinks[s + step - 1] <= u, s + step, s)
        return A[h, s] + B[h, s] * u


# -----------------------------------------------------------------------------
# tape (TAPE, Zhu et al. 2025; docs/tape.md): each block carries a position state z (B, H, T, D) =
# [Re | Im] of one complex number per head, token and RoPE frequency. It starts as exactly RoPE,
# rotates q and k like RoPE, is mixed along tokens by the block's own causal attention
# probabilities (it rides along as extra value channels of the same SDPA call), and then by the
# MLP output through a gated head-mixing map. Both updates act alike on every frequency and on Re
# and Im, so rotating all of z (e.g. shifting every position) changes no logit: the model stays
# exactly relative. Extra parameters: (L-1)(H^2 + C*I + 2*H*I), since the last block's state is
# discarded (the authors' code builds that update too, L(...), and leaves it untrained).

def tape_init(pos, n_head, head_dim, base, inv_freq=None):
    cos, sin = rope_cos_sin(pos, head_dim, base, inv_freq)  # the state at init is RoPE's cos/sin
    F2 = head_dim // 2
    return torch.cat((cos[:, :F2], sin[:, :F2]), dim=-1).expand(1, n_head, -1, -1)  # (1, H, T, D)


def tape_rotate(x, z):
    """Rotate q or k (B, H, T, D) by the state z like RoPE (z = RoPE's state gives RoPE exactly)."""
    zr, zi = z.chunk(2, dim=-1)
    return apply_rope(x, torch.cat((zr, zr), dim=-1), torch.cat((zi, zi), dim=-1))


class TAPEUpdate(nn.Module):
    """The two updates of the position state after one block; both start at zero (TAPE == RoPE)."""
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


class TAPE(PE):
    knobs = ROPE_KNOBS + ('tape_inner', 'tape_rowsum')
    scalable = True  # interpolates the initial RoPE state
    renamed = ((r'^transformer\.h\.(\d+)\.tape\.', r'pe.updates.\1.'),)
    starts_from = ('rope',)  # its updates start at zero: on RoPE's weights it is that RoPE model
    retunable = ROPE_KNOBS   # of its initial state

    def __init__(self, config):
        super().__init__(config)
        # the state after the last block is discarded, so its update would never train: none there
        self.updates = nn.ModuleList(TAPEUpdate(config) for _ in range(config.n_layer - 1))

    def check(self):
        rope_checks(self.config)
        if self.config.tape_inner < 0:
            raise ValueError(f"tape_inner={self.config.tape_inner} must be >= 0 (0 = 4 n_head)")

    def setup(self, pos):
        c = self.config
        inv_freq, m = rope_frequencies(c, pos.device)
        z = tape_init(pos * c.pos_scale, c.n_head, c.n_embd // c.n_head, c.rope_base, inv_freq)
        return {'z': z if m == 1 else z * m}  # the updates are linear in z: every block's q·k gets m²

    def rotate(self, q, k, v, st, layer):
        z = st['z'].expand(q.size(0), -1, -1, -1)
        return tape_rotate(q, z), tape_rotate(k, z), torch.cat((v, z.to(v.dtype)), dim=-1)  # A z rides along

    def after_attention(self, y, st, layer):
        y, st['az'] = y.split(y.size(-1) // 2, dim=-1)
        return y

    def after_block(self, f, st, layer):
        if layer < len(self.updates):  # the state for the next block
            u = self.updates[layer]
            z = st['z'] + u.attn_update(st['az'])
            st['z'] = z + u.mlp_update(f, z)


# -----------------------------------------------------------------------------
# kerple (KERPLE, Chi et al. 2022), its log variant: head h of each block adds -r1·log(1 + r2·|i - j|) to its
# logits, with r1, r2 > 0 learned per block and head (kept positive by clamping at 0.01, as the paper does).
# Init: r1 ~ U(0, 2), r2 ~ U(0, 1) per head (our choice: spread heads like ALiBi's slopes, not all alike).

class KERPLE(PE):
    scalable = True  # multiplies the distances
    has_bias = True

    def __init__(self, config):
        super().__init__(config)
        L, H = config.n_layer, config.n_head
        self.r1 = nn.Parameter(torch.rand(L, H) * 2)
        self.r2 = nn.Parameter(torch.rand(L, H))

    def bias_tables(self, st, layer, kept):
        return self.r1[layer].clamp(min=0.01), self.r2[layer].clamp(min=0.01)

    def score_bias(self, b, h, q_pos, k_pos, tables):
        r1, r2 = tables
        return -r1[h] * torch.log1p(r2[h] * self.config.pos_scale * (q_pos - k_pos))


# -----------------------------------------------------------------------------
# prope (p-RoPE, Barbero et al. 2025): RoPE on the highest fraction p of its frequencies; the lowest
# D/2·(1 - p) get θ = 0, so their dims never rotate and can carry content across any distance.

class PRoPE(RoPE):
    knobs = ROPE_KNOBS + ('prope_p',)

    def check(self):
        super().check()
        p = self.config.prope_p
        if not 0 <= p <= 1:
            raise ValueError(f"prope_p={p} is the fraction of RoPE frequencies kept: use a value from 0 to 1")

    def frequencies(self, device):
        inv_freq, m = super().frequencies(device)
        keep = round(self.config.prope_p * len(inv_freq))  # θ_i falls with i: the first `keep` are the highest
        return torch.where(torch.arange(len(inv_freq), device=device) < keep, inv_freq, 0.0), m


# -----------------------------------------------------------------------------
# cope (CoPE, Golovneva et al. 2024): head h gives key j a position relative to query i that counts only
# the keys the query "gates in": p_ij = Σ_{t=j..i} σ(q_i·k_t/√D), clamped to cope_npos - 1. The logit
# gets q_i·e[p_ij], with e (head size x cope_npos, shared by the heads of a block, zero at init) read
# between its two nearest integer rows. No other pe: the gates see content, so it needs q against every
# key at once (logit_bias: dense attention, no FlexAttention, on every device).

def causal_mask(Tq, Tk, past, device):
    """(Tq, Tk) True where key j comes after query past + i (j > past + i): what attention masks out."""
    return torch.ones(Tq, Tk, dtype=torch.bool, device=device).triu(diagonal=past + 1)


class CoPE(PE):
    knobs = ('cope_npos',)
    has_logit_bias = True

    def __init__(self, config):
        super().__init__(config)
        D = config.n_embd // config.n_head
        self.npos = config.cope_npos or config.block_size
        self.emb = nn.Parameter(torch.zeros(config.n_layer, D, self.npos))

    def check(self):
        if self.config.cope_npos < 0:
            raise ValueError(f"cope_npos={self.config.cope_npos} must be >= 0 (0 = block_size)")

    def bias_tables(self, st, layer, kept):
        return self.emb[layer]

    def logit_bias(self, q, k, tables, past):
        future = causal_mask(q.size(2), k.size(2), past, q.device)
        q, k = q.float(), k.float()  # a running sum over thousands of keys: bf16 would round positions to steps of 2+
        with torch.autocast(q.device.type, enabled=False):
            gates = torch.sigmoid(q @ k.transpose(-1, -2) * q.size(-1) ** -0.5).masked_fill(future, 0.0)
            pos = gates.flip(-1).cumsum(-1).flip(-1).clamp(max=self.npos - 1)  # p_ij = Σ_{t >= j} g_it (future ones 0)
            z = q @ tables.float()  # q_i·e[p] at every integer p (B, H, Tq, npos)
        lo = pos.floor()
        z_lo, z_hi = z.gather(-1, lo.long()), z.gather(-1, pos.ceil().long())
        return z_lo + (pos - lo) * (z_hi - z_lo)


# -----------------------------------------------------------------------------
# fox (Forgetting Transformer, Lin et al. 2025): each block has a forget gate per head and token,
# f_t = σ(w_h·x_t + b_h) from the normalized attention input; query i's logit for key j gets
# Σ_{t=j+1..i} log f_t = c_i - c_j, c the running sum of log f over the keys (so older keys fade at
# a rate the content sets). No other pe, as in the paper; the "Pro" block extras are not built.
# c is per batch row: the bias tables carry it (B, H, Tk) and score_bias indexes it by row, so it
# runs in FlexAttention on CUDA; the KV cache keeps each key's log f (kept) for later chunks.

class FoX(PE):
    has_bias = True

    def __init__(self, config):
        super().__init__(config)
        self.gates = nn.ModuleList(nn.Linear(config.n_embd, config.n_head) for _ in range(config.n_layer))

    def kept(self, x, st, layer):
        with torch.autocast(x.device.type, enabled=False):  # a running sum of thousands of logs: fp32
            return F.logsigmoid(self.gates[layer](x.float())).transpose(1, 2)  # log f (B, H, T)

    def bias_tables(self, st, layer, kept):
        return (kept.cumsum(-1),)  # c (B, H, Tk)

    def score_bias(self, b, h, q_pos, k_pos, tables):
        c, = tables
        return c[b, h, q_pos] - c[b, h, k_pos]


# -----------------------------------------------------------------------------
# Every pe, by the name `config.pe` uses. A new pe: its class above, its name here.

PES = {
    'expe': ExPE,
    'exqpe': ExQPE,
    'rope': RoPE,
    'sinusoidal': Sinusoidal,
    'learned': Learned,
    'alibi': ALiBi,
    'nope': PE,
    'tape': TAPE,
    'fire': FIRE,
    't5': T5,
    'randpe': RandPE,
    'xpos': XPos,
    'kerple': KERPLE,
    'prope': PRoPE,
    'cope': CoPE,
    'fox': FoX,
}


# -----------------------------------------------------------------------------
# Attention, shared by every pe: causal SDPA (flash / memory-efficient kernels where possible),
# one path for pes that add a score bias: a dense (B, H, Tq, Tk) bias on CPU, FlexAttention on
# CUDA, which computes the bias per score and stores no T x T tensor (it has no dropout), and a
# dense path for pes whose bias needs q against every key at once (logit_bias).

_flex_attention = None  # compiled once on first use
_block_masks = {}


def bias_flex(q, k, v, pe, tables, past):
    global _flex_attention
    from torch.nn.attention.flex_attention import flex_attention, create_block_mask
    if _flex_attention is None:
        _flex_attention = torch.compile(flex_attention, dynamic=False)
    Tq, Tk = q.size(-2), k.size(-2)

    def score_mod(score, b, h, q_idx, kv_idx):  # a future key is scored as the query's own, as in dense_bias
        return score + pe.score_bias(b, h, q_idx + past, torch.minimum(kv_idx, q_idx + past), tables)

    def causal(b, h, q_idx, kv_idx):
        return q_idx + past >= kv_idx

    key = (Tq, Tk, past, str(q.device))
    if key not in _block_masks:  # building a block mask costs a pass over the blocks: reuse it
        _block_masks[key] = create_block_mask(causal, None, None, Tq, Tk, device=q.device)
    return _flex_attention(q, k, v, score_mod=score_mod, block_mask=_block_masks[key])


def dense_bias(pe, tables, n_head, past, Tq, Tk, device, batch=1):
    """(batch, H, Tq, Tk) score bias of the queries at past..past+Tq-1, with the causal mask folded in; (H, Tq, Tk)
    for a pe whose bias is the same in every row (SDPA rounds a 3-d mask as it always did: the tables reproduce)."""
    b = torch.arange(batch, device=device)[:, None, None, None]
    h = torch.arange(n_head, device=device)[None, :, None, None]
    q_pos = torch.arange(past, past + Tq, device=device)[None, None, :, None]
    k_pos = torch.arange(Tk, device=device)[None, None, None, :]
    seen = torch.minimum(k_pos, q_pos)  # a future key is scored as the query's own: a pe never sees a negative distance,
    bias = pe.score_bias(b, h, q_pos, seen, tables).float().masked_fill(k_pos > q_pos, float('-inf'))  # so no NaN gradient
    return bias[0] if bias.size(0) == 1 else bias


def attention(q, k, v, pe, tables, past, dropout_p, fp32=False):
    """Causal attention of q (B, H, Tq, D), at positions past..past+Tq-1, over k, v (B, H, Tk, D);
    tables: the block's pe.bias_tables. fp32: under autocast, compute it in fp32 (autocast would
    run SDPA in bf16)."""
    if fp32 and torch.is_autocast_enabled(q.device.type):
        with torch.autocast(q.device.type, enabled=False):
            return attention(q.float(), k.float(), v.float(), pe, tables, past, dropout_p).to(v.dtype)
    Tq, Tk = q.size(2), k.size(2)
    if pe.has_logit_bias:
        bias = pe.logit_bias(q, k, tables, past).masked_fill(causal_mask(Tq, Tk, past, q.device), float('-inf'))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)
    if pe.has_bias:
        if q.is_cuda and Tq > 1 and dropout_p == 0.0:
            return bias_flex(q, k, v, pe, tables, past)
        bias = dense_bias(pe, tables, q.size(1), past, Tq, Tk, q.device, q.size(0))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p)
    if past == 0:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if Tq == 1:  # one new token sees every cached key
        return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=~causal_mask(Tq, Tk, past, q.device))  # a chunk after a cache


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
    """Keys (already rotated/encoded), values and the pe's kept per-key values of past tokens, one entry per layer."""
    def __init__(self, n_layer):
        self.k = [None] * n_layer
        self.v = [None] * n_layer
        self.kept = [None] * n_layer
        self.pos = 0  # tokens seen so far = position of the next token

    def update(self, layer, k, v, kept=None):
        if self.k[layer] is not None:
            k = torch.cat((self.k[layer], k), dim=2)
            v = torch.cat((self.v[layer], v), dim=2)
            if kept is not None:
                kept = torch.cat((self.kept[layer], kept), dim=2)
        self.k[layer], self.v[layer], self.kept[layer] = k, v, kept
        return k, v, kept


class CausalSelfAttention(nn.Module):
    def __init__(self, config, layer):
        super().__init__()
        bias = config.bias and config.arch == 'gpt2'
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=bias)  # q, k, v stacked
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.dropout, self.layer = config.n_head, config.dropout, layer
        self.logn_attn, self.block_size = config.logn_attn, config.block_size

    def forward(self, x, pe, st, cache=None):
        B, T, C = x.size()
        q, k, v = pe.project(self.c_attn, x, st, self.layer)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        q, k, v = pe.rotate(q, k, v, st, self.layer)
        kept = pe.kept(x, st, self.layer)
        past = cache.pos if cache is not None else 0
        if self.logn_attn:  # q past the training length grows with the log of the context (1 before it)
            n = torch.arange(past, past + T, device=x.device)
            q = q * (torch.log1p(n.float()) / math.log(self.block_size)).clamp(min=1.0)[:, None].to(q.dtype)
        if cache is not None:
            k, v, kept = cache.update(self.layer, k, v, kept)
        y = attention(q, k, v, pe, pe.bias_tables(st, self.layer, kept), past, self.dropout if self.training else 0.0,
                      pe.fp32_logits and not self.training)
        y = pe.after_attention(y, st, self.layer)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


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
        self.layer = layer

    def forward(self, x, pe, st, cache=None):
        x = x + self.attn(self.ln_1(x), pe, st, cache)  # the residual stream itself never holds ExPE values
        f = self.mlp(self.ln_2(x))
        pe.after_block(f, st, self.layer)
        return x + f


# What train.py's `trainable` names: every parameter is in one group (a tied token embedding is in two)
PARAM_GROUPS = ('pe', 'wte', 'lm_head', 'norm', 'attn', 'mlp')
# Settings outside the pes that a model started from trained weights may change (start_from); the
# others define what the weights mean. Each pe rules on its own knobs (PE.retunable, PE.check_parent).
MAY_CHANGE = ('block_size', 'dropout', 'pos_scale', 'logn_attn')


def check_config(config):
    """Refuse settings that cannot work, with a message that says how to fix them."""
    c = config
    # sizes first: a zero or negative one fails later with an obscure shape error, or not at all
    for k in ('n_layer', 'n_head', 'n_embd', 'block_size', 'vocab_size'):
        if getattr(c, k) < 1:
            raise ValueError(f"{k}={getattr(c, k)} must be at least 1")
    if c.ffn_hidden < 0:
        raise ValueError(f"ffn_hidden={c.ffn_hidden} must be >= 0 (0 = the default)")
    if not 0.0 <= c.dropout < 1.0:
        raise ValueError(f"dropout={c.dropout} is a probability: use a value from 0 to below 1")
    for k in ('norm_eps', 'pos_scale'):
        if not (math.isfinite(getattr(c, k)) and getattr(c, k) > 0):
            raise ValueError(f"{k}={getattr(c, k)} must be a finite number > 0")
    if c.pe not in PES:
        raise ValueError(f"unknown pe '{c.pe}': choose one of {', '.join(PES)}")
    if c.logn_attn and c.block_size < 2:
        raise ValueError("logn_attn=True divides by log(block_size): it needs block_size >= 2")
    if c.arch not in ARCHS:
        raise ValueError(f"unknown arch '{c.arch}': choose one of {', '.join(ARCHS)}")
    if c.n_embd % c.n_head:
        raise ValueError(f"n_embd={c.n_embd} is not divisible by n_head={c.n_head}")
    pe = PES[c.pe]
    if not pe.scalable and c.pos_scale != 1.0:
        raise ValueError(f"pos_scale={c.pos_scale} has no meaning for pe={c.pe} "
                         "(it has no position values to scale): leave it at 1.0")
    # a knob that the chosen pe would silently ignore is an error, not a no-op ablation
    defaults = GPTConfig()
    for k in sorted({k for p in PES.values() for k in p.knobs} - set(pe.knobs)):
        if getattr(c, k) != getattr(defaults, k):
            owners = '/'.join(name for name, p in PES.items() if k in p.knobs)
            raise ValueError(f"{k}={getattr(c, k)!r} only applies to pe={owners}, not pe={c.pe}: "
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
        self.pe = PES[config.pe](config)  # the positional encoding, with its parameters (it checks its settings)
        longest = self.pe.max_len()
        if config.logn_attn and longest is not None and longest <= config.block_size:
            raise ValueError(f"logn_attn=True does nothing for pe={config.pe}: it scales queries past block_size="
                             f"{config.block_size}, and pe={config.pe} accepts at most {longest} positions")
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight
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
        """Parameter count; non_embedding drops position tables (and the token table if untied)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= sum(m.weight.numel() for m in self.pe.modules() if isinstance(m, nn.Embedding))
        if non_embedding and not self.config.tie_embeddings:  # a tied table also serves as the LM head
            n -= self.transformer.wte.weight.numel()
        return n

    @property
    def max_len(self):
        """The longest input (in positions, KV cache included) this model accepts; None = no limit."""
        return self.pe.max_len()

    @property
    def scalable(self):
        """Whether pos_scale means anything for this pe (it has position values to scale)."""
        return self.pe.scalable

    def forward(self, idx, targets=None, cache=None, pos=None):
        """Logits for every position (and the mean loss if targets are given). With a KVCache, idx
        holds only the new tokens; positions continue from cache.pos. `pos`: the positions of a
        training batch where the pe draws its own (pe.train_positions); default 0..T-1."""
        B, T = idx.size()
        past = cache.pos if cache is not None else 0
        if self.max_len is not None and past + T > self.max_len:
            raise ValueError(f"pe={self.config.pe} accepts at most {self.max_len} positions "
                             f"(asked for {past + T}): use a shorter input or another pe")
        if pos is None:
            pos = torch.arange(past, past + T, device=idx.device)
        x = self.transformer.drop(self.pe.embed(self.transformer.wte(idx), pos))
        st = self.pe.setup(pos)
        for block in self.transformer.h:
            x = block(x, self.pe, st, cache)
        if cache is not None:
            cache.pos += T
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def param_groups(self):
        """{parameter name: its groups in PARAM_GROUPS}. The pe's own parameters are `pe`; a tied token
        embedding is also the LM head (one tensor), so it is in `wte` and `lm_head`."""
        module_group = {'ln_1': 'norm', 'ln_2': 'norm', 'ln_f': 'norm', 'attn': 'attn', 'mlp': 'mlp',
                        'wte': 'wte', 'lm_head': 'lm_head'}
        groups = {}
        for name, _ in self.named_parameters():
            parts = name.split('.')
            groups[name] = {'pe'} if parts[0] == 'pe' else {next(module_group[p] for p in parts if p in module_group)}
        if self.config.tie_embeddings:
            groups['transformer.wte.weight'] = {'wte', 'lm_head'}
        return groups

    def set_trainable(self, trainable):
        """Train only the parameters in the comma-separated PARAM_GROUPS of `trainable` ('' = all): the rest
        get requires_grad False, so no gradient, no optimizer state and no weight decay. Returns how many
        parameters train; ValueError (one line) for an unknown group or one that selects nothing."""
        wanted = set(trainable.split(',')) if trainable else set(PARAM_GROUPS)
        if wanted - set(PARAM_GROUPS):
            raise ValueError(f"trainable='{trainable}': {', '.join(sorted(wanted - set(PARAM_GROUPS)))} is not a "
                             f"parameter group; use a comma-separated list of {', '.join(PARAM_GROUPS)} ('' = all)")
        groups = self.param_groups()
        for name, p in self.named_parameters():
            p.requires_grad_(bool(groups[name] & wanted))
        n = sum(p.numel() for p in self.parameters() if p.requires_grad)
        if n == 0:
            raise ValueError(f"trainable='{trainable}' selects no parameter: pe={self.config.pe} has none of its own; "
                             "name another group")
        return n

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
        """Sample max_new_tokens tokens after idx (B, T), with a KV cache. For a pe with a longest
        input (learned: block_size), the context is cropped to its last max_len tokens."""
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
# Starting from trained weights (train.py init_from=<run>, eval.py --set): core.py reads the checkpoint

def start_from(model, parent, state, path, replace_pe=False):
    """Load the weights `state` of a model with GPTConfig `parent` (from `path`) into `model`, whose settings may
    differ from the parent's where the weights still mean the same (train.py init_from=<run>, eval.py --set):
    MAY_CHANGE, the pe's retunable knobs (RoPE's base and length extension), and the pe itself where the new one
    starts exactly from the old (pe.starts_from: rope -> tape); the new pe's own parameters keep their init.
    replace_pe: any other pe too, not an exact start: the parent's positional parameters (pe.*) are dropped and the
    new pe's start at their init (GPT-2's learned table -> ExPE; DroPE's rope -> nope).
    Anything the weights cannot carry is a ValueError (one line)."""
    c = model.config
    replace_pe = replace_pe and c.pe != parent.pe and parent.pe not in model.pe.starts_from
    if replace_pe:
        state = {k: v for k, v in state.items() if not k.startswith('pe.')}
    knobs = {k for p in PES.values() for k in p.knobs}
    for f in fields(GPTConfig):
        k = f.name
        if k not in MAY_CHANGE + ('pe',) and k not in knobs and getattr(parent, k) != getattr(c, k):
            raise ValueError(f"{k}={getattr(c, k)!r}, but {path} was trained with {k}={getattr(parent, k)!r}: its weights "
                             f"need the same (of the model's settings only {', '.join(MAY_CHANGE)} and the pe's may change)")
    if c.pe != parent.pe and parent.pe not in model.pe.starts_from and not replace_pe:
        can = ', '.join(name for name, p in PES.items() if parent.pe in p.starts_from)
        raise ValueError(f"pe={c.pe} cannot start from the weights of {path} (pe={parent.pe}): keep pe={parent.pe}"
                         + (f" or use {can}" if can else '') + " (or replace_pe=True: a new pe, learned afresh)")
    try:
        if not replace_pe:  # a replaced pe keeps nothing of the parent's
            model.pe.check_parent(parent)
    except ValueError as e:
        raise ValueError(f"{path}: {e}")
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not (c.pe != parent.pe and k.startswith('pe.'))]  # a new pe's are new
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    for k in unexpected + missing + reshaped:
        where = ('not in this model' if k in unexpected else 'missing from it' if k in missing else
                 f"{tuple(state[k].shape)} there, {tuple(own[k].shape)} here")
        raise ValueError(f"{path} cannot give this model its weights: {k} is {where}")
    model.load_state_dict(state, strict=False)
