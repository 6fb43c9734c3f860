"""Context extension (issue 15): a run started from another run's weights (train.py init_from=<run>,
model.start_from), trainable parameter groups, and RoPE's length extensions (linear interpolation =
pos_scale, NTK-aware, YaRN) against their papers' formulas and HF transformers. One-line refusals of
init_from, trainable and eval.py --set are cases of tests/test_bad_input.py."""
import json
import math
from dataclasses import asdict, replace

import pytest
import torch

import core
import model as M
from model import PES, GPT, GPTConfig
from test_bad_input import TINY, byte_corpus, run

V, T0, L, H, C = 64, 16, 2, 4, 32


def cfg(pe='rope', **kw):
    return GPTConfig(**{**dict(block_size=T0, vocab_size=V, n_layer=L, n_head=H, n_embd=C, pe=pe), **kw})


def trained_like(config, seed=0):
    """A model whose weights all matter: sharp attention, and TAPE's updates switched on."""
    torch.manual_seed(seed)
    m = GPT(config).eval()
    with torch.no_grad():
        for blk in m.transformer.h:
            blk.attn.c_attn.weight.mul_(8)
        for name, p in m.pe.named_parameters():
            if name.startswith('updates.'):
                p.normal_(0.0, 0.3)
    return m


def checkpoint(m):
    return {'model': m.state_dict(), 'model_args': asdict(m.config)}


def tokens(B, T, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# -----------------------------------------------------------------------------
# starting from a parent's weights (in-process)

@pytest.mark.parametrize('pe', list(PES))
def test_a_child_with_unchanged_settings_has_the_parents_forward(pe):
    parent = trained_like(cfg(pe))
    child = GPT(replace(parent.config, dropout=0.1))  # another init (the global RNG moved on); dropout may change
    x = tokens(2, T0)
    with torch.no_grad():
        assert not torch.equal(child.eval()(x)[0], parent(x)[0])  # so the comparison below can fail
        core.start_from_checkpoint(child, checkpoint(parent), 'parent')
        assert torch.equal(child.eval()(x)[0], parent(x)[0])


@pytest.mark.parametrize('ext', [{}, dict(rope_scaling='ntk', rope_factor=2.0),
                                 dict(rope_scaling='yarn', rope_factor=2.0, rope_original=T0), dict(pos_scale=0.5)])
def test_rope_to_tape_is_exact_at_step_0(ext):
    rope = trained_like(cfg('rope', **ext))
    tape = GPT(cfg('tape', block_size=2 * T0, **ext)).eval()
    core.start_from_checkpoint(tape, checkpoint(rope), 'parent')
    assert all(torch.equal(u.post, torch.zeros_like(u.post)) and torch.equal(u.up, torch.zeros_like(u.up))
               for u in tape.pe.updates)  # TAPE's own parts keep their zero start
    with torch.no_grad():
        for x in (tokens(2, T0), tokens(1, 3 * T0)):  # and past the training length
            a, b = rope(x)[0], tape(x)[0]
            assert (a - b).abs().max() < 1e-6  # SDPA with TAPE's wider value tensor sums in another order
            assert a.std() > 0.1
    other = trained_like(cfg('rope', **ext), seed=1)  # a different RoPE model would not pass
    assert (other(tokens(2, T0))[0] - tape(tokens(2, T0))[0]).abs().max() > 1e-2


def refusal(parent_cfg, child_cfg, ckpt=None):
    parent = GPT(parent_cfg)
    with pytest.raises(ValueError) as e:
        core.start_from_checkpoint(GPT(child_cfg), ckpt or checkpoint(parent), 'out/parent')
    msg = str(e.value)
    assert '\n' not in msg and 'out/parent' in msg
    return msg


@pytest.mark.parametrize('parent, child, words', [
    (cfg('rope'), cfg('rope', n_embd=64), ['n_embd=64', 'n_embd=32']),
    (cfg('rope'), cfg('rope', n_layer=3), ['n_layer=3']),
    (cfg('rope'), cfg('rope', vocab_size=128), ['vocab_size=128']),
    (cfg('rope'), cfg('rope', arch='llama'), ["arch='llama'"]),
    (cfg('rope'), cfg('expe'), ['pe=expe cannot start from', 'pe=rope', 'tape']),
    (cfg('tape'), cfg('rope'), ['pe=rope cannot start from', 'pe=tape']),
    (cfg('learned'), cfg('learned', block_size=2 * T0), ['pe=learned', f'keep block_size={T0}']),
    (cfg('expe'), cfg('expe', block_size=2 * T0), [f'set expe_theta={1 / (2 * T0)!r}', 'derives it from block_size']),
    (cfg('exqpe'), cfg('exqpe', block_size=8 * T0), ['set exqpe_step=0.25']),
    (cfg('expe'), cfg('expe', expe_dims=4), ['expe_dims=4', 'expe_dims=0']),
    (cfg('tape'), cfg('tape', tape_inner=8), ['tape_inner=8']),
    (cfg('xpos'), cfg('xpos', xpos_gamma=0.5), ['xpos_gamma=0.5']),
])
def test_what_the_weights_cannot_carry_is_refused_in_one_line(parent, child, words):
    msg = refusal(parent, child)
    for w in words:
        assert w in msg, msg


def test_what_a_child_may_change():
    rope = trained_like(cfg('rope'))
    for kw in (dict(block_size=4 * T0, dropout=0.2, pos_scale=0.25), dict(rope_base=500.0),
               dict(rope_scaling='yarn', rope_factor=4.0, rope_original=T0, yarn_beta=16.0)):
        core.start_from_checkpoint(GPT(cfg('rope', **kw)), checkpoint(rope), 'parent')
    expe = trained_like(cfg('expe'))
    core.start_from_checkpoint(GPT(cfg('expe', block_size=2 * T0, expe_theta=1 / (2 * T0), pos_scale=0.5)), checkpoint(expe), 'parent')


def test_unexpected_and_missing_weights_are_refused():
    parent = GPT(cfg('rope'))
    extra = checkpoint(parent)
    extra['model'] = {**extra['model'], 'extra.weight': torch.zeros(3)}
    assert 'extra.weight is not in this model' in refusal(cfg('rope'), cfg('rope'), extra)
    missing = checkpoint(parent)
    del missing['model']['transformer.h.0.mlp.c_fc.weight']
    assert 'transformer.h.0.mlp.c_fc.weight is missing from it' in refusal(cfg('rope'), cfg('rope'), missing)
    # a new pe's own parts may be missing only where the pe changed: a tape parent must bring its updates
    tape = checkpoint(GPT(cfg('tape')))
    tape['model'] = {k: v for k, v in tape['model'].items() if not k.startswith('pe.updates.0.')}
    assert 'pe.updates.0.' in refusal(cfg('tape'), cfg('tape'), tape)


def test_eval_set_is_the_same_rule(tmp_path):
    """load_checkpoint(settings) (eval.py --set) starts the model from the file's weights like init_from."""
    parent = trained_like(cfg('rope'))
    torch.save({**checkpoint(parent), 'config': {}}, tmp_path / 'ckpt.pt')
    m, _ = core.load_checkpoint(str(tmp_path), settings={'block_size': 2 * T0, 'rope_scaling': 'ntk', 'rope_factor': 2.0})
    assert m.config.block_size == 2 * T0 and m.config.rope_scaling == 'ntk'
    same = GPT(cfg('rope', rope_base=10000.0 * 2.0 ** (8 / 6))).eval()  # NTK = RoPE with base b·s^(D/(D-2)), D = 8
    same.load_state_dict(parent.state_dict())
    x = tokens(1, 2 * T0)
    assert (m.eval()(x)[0] - same(x)[0]).abs().max() < 1e-5
    with pytest.raises(ValueError, match='n_embd=64'):
        core.load_checkpoint(str(tmp_path), settings={'n_embd': 64})


# -----------------------------------------------------------------------------
# trainable

def test_trainable_groups_freeze_exactly_what_they_name():
    m = GPT(cfg('tape', tie_embeddings=False))
    everything = {n for n, _ in m.named_parameters()}
    expect = {'pe': {n for n in everything if n.startswith('pe.')},
              'wte': {'transformer.wte.weight'}, 'lm_head': {'lm_head.weight'},
              'norm': {n for n in everything if '.ln_' in n},
              'attn': {n for n in everything if '.attn.' in n}, 'mlp': {n for n in everything if '.mlp.' in n}}
    assert set().union(*expect.values()) == everything and all(expect.values())
    for group in M.PARAM_GROUPS:
        n = m.set_trainable(group)
        on = {name for name, p in m.named_parameters() if p.requires_grad}
        assert on == expect[group], group
        assert n == sum(p.numel() for name, p in m.named_parameters() if name in on)
    m.set_trainable('pe,norm')
    assert {n for n, p in m.named_parameters() if p.requires_grad} == expect['pe'] | expect['norm']
    assert m.set_trainable('') == sum(p.numel() for p in m.parameters())
    # tied: the token embedding is the LM head, one tensor; naming either trains it
    tied = GPT(cfg('rope'))
    for group in ('wte', 'lm_head'):
        tied.set_trainable(group)
        assert [n for n, p in tied.named_parameters() if p.requires_grad] == ['transformer.wte.weight']
        assert tied.lm_head.weight.requires_grad
    with pytest.raises(ValueError, match='bogus is not a parameter group'):
        tied.set_trainable('wte,bogus')
    with pytest.raises(ValueError, match='pe=rope has none of its own'):
        tied.set_trainable('pe')


def test_frozen_parameters_get_no_optimizer_state():
    m = GPT(cfg('tape'))
    m.set_trainable('pe,norm')
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), 'cpu')
    trained = [p for p in m.parameters() if p.requires_grad]
    in_opt = [p for g in opt.param_groups for p in g['params']]
    assert len(in_opt) == len(trained) and all(any(p is q for q in trained) for p in in_opt)
    decayed = opt.param_groups[0]['params']
    assert all(p.dim() >= 2 and p.requires_grad for p in decayed) and len(decayed) == sum(p.dim() >= 2 for p in trained)


# -----------------------------------------------------------------------------
# RoPE length extensions against their formulas

def angles(config, pos):
    """RoPE's (cos, sin) of a model with `config` at positions pos, per pair i (the first D/2 dims)."""
    cos, sin = PES[config.pe](config).setup(torch.tensor(pos))['rope']
    D = config.n_embd // config.n_head
    return cos[:, :D // 2].double(), sin[:, :D // 2].double()


def yarn_cfg(s, **kw):
    return GPTConfig(n_layer=1, n_head=1, n_embd=64, block_size=4096, pe='rope', rope_scaling='yarn', rope_factor=s,
                     rope_original=4096, **kw)


POS = [0, 1, 7, 100, 1000]


def test_linear_interpolation_is_pos_scale():
    # Chen et al. 2023: position n becomes n/s
    s, D, base = 4.0, 64, 10000.0
    c = GPTConfig(n_layer=1, n_head=1, n_embd=D, pe='rope', pos_scale=1 / s)
    theta = base ** (-torch.arange(0, D, 2).double() / D)
    cos, sin = angles(c, POS)
    want = torch.tensor(POS).double()[:, None] / s * theta
    assert torch.allclose(cos, want.cos(), atol=1e-5) and torch.allclose(sin, want.sin(), atol=1e-5)


@pytest.mark.parametrize('s', [2.0, 8.0])
def test_ntk_matches_its_formula(s):
    # bloc97: base' = base * s^(D/(D-2)), so θ'_i = θ_i * s^(-2i/(D-2)): θ_0 kept, the lowest frequency / s
    D, base = 64, 10000.0
    c = GPTConfig(n_layer=1, n_head=1, n_embd=D, pe='rope', rope_scaling='ntk', rope_factor=s)
    i = torch.arange(D // 2).double()
    theta = base ** (-2 * i / D) * s ** (-2 * i / (D - 2))
    inv_freq, m = M.rope_frequencies(c)
    assert m == 1.0 and inv_freq[0] == 1.0
    assert torch.allclose(inv_freq.double(), theta, rtol=1e-6)
    assert math.isclose(inv_freq[-1].item(), base ** (-(D - 2) / D) / s, rel_tol=1e-6)
    cos, sin = angles(c, POS)
    want = torch.tensor(POS).double()[:, None] * theta
    assert torch.allclose(cos, want.cos(), atol=5e-4) and torch.allclose(sin, want.sin(), atol=5e-4)  # fp32 angles


@pytest.mark.parametrize('s', [2.0, 16.0])
def test_yarn_matches_the_paper(s):
    """Peng et al. 2023, Sec. 3.2-3.4: pair d turns r(d) = L/λ_d = L·θ_d/2π times over the original length L;
    h(θ_d) = θ_d where r > β, θ_d/s where r < α, and in between a mix of the two; q and k are scaled by
    sqrt(1/t) = 0.1·ln(s) + 1. L = 4096, D = 64, α = 1, β = 32 (the paper's values for LLaMA)."""
    D, base, Lo = 64, 10000.0, 4096
    theta = base ** (-torch.arange(0, D, 2).double() / D)
    r = Lo * theta / (2 * math.pi)
    keep, interp = r > 32, r < 1
    between = ~keep & ~interp
    assert keep.sum() == 11 and interp.sum() == 9 and between.sum() == 12  # all three regimes are tested
    h, m = M.rope_frequencies(yarn_cfg(s))
    h = h.double()
    assert m == 0.1 * math.log(s) + 1
    assert torch.allclose(h[keep], theta[keep], rtol=1e-6) and torch.allclose(h[interp], theta[interp] / s, rtol=1e-6)
    assert ((h[between] < theta[between]) & (h[between] > theta[between] / s)).all()
    mix = (h - theta / s) / (theta - theta / s)  # the share of θ_d: rises from 0 to 1 with r
    assert (mix[between].diff() < 0).all()  # pairs are in order of falling r
    # the rotation and the temperature at a few positions: cos/sin carry m, so q·k carries m²
    cos, sin = angles(yarn_cfg(s), POS)
    want = torch.tensor(POS).double()[:, None] * h
    assert torch.allclose(cos, m * want.cos(), atol=5e-4) and torch.allclose(sin, m * want.sin(), atol=5e-4)
    idx = [0, 10, 23, 31]  # kept pairs and interpolated ones (the ends of both ranges), against the paper alone
    assert keep[idx[:2]].all() and interp[idx[2:]].all()
    paper = torch.tensor(POS).double()[:, None] * torch.where(keep, theta, theta / s)[idx]
    assert torch.allclose(cos[:, idx], m * paper.cos(), atol=5e-4)


def test_yarn_alpha_beta_move_the_ramp():
    h1, _ = M.rope_frequencies(yarn_cfg(4.0))
    h2, _ = M.rope_frequencies(yarn_cfg(4.0, yarn_alpha=2.0, yarn_beta=64.0))
    assert not torch.equal(h1, h2)


def test_yarn_scales_the_logits_by_the_temperature_squared():
    """Where no frequency changes (s -> every pair kept: L huge), YaRN leaves only its temperature."""
    x = tokens(1, T0)
    base = trained_like(cfg('rope'))
    yarn = GPT(cfg('rope', rope_scaling='yarn', rope_factor=4.0, rope_original=10 ** 9)).eval()
    yarn.load_state_dict(base.state_dict())
    m = 0.1 * math.log(4.0) + 1
    q = torch.randn(1, H, T0, C // H)
    st_b, st_y = base.pe.setup(torch.arange(T0)), yarn.pe.setup(torch.arange(T0))
    qb, kb, _ = base.pe.rotate(q, q, q, st_b, 0)
    qy, ky, _ = yarn.pe.rotate(q, q, q, st_y, 0)
    assert torch.allclose(qy @ ky.transpose(-1, -2), m ** 2 * (qb @ kb.transpose(-1, -2)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(yarn(x)[0], base(x)[0], atol=1e-3)


def test_tape_and_randpe_take_the_extensions_and_xpos_refuses():
    ext = dict(rope_scaling='yarn', rope_factor=2.0, rope_original=T0)
    rope_cos, _ = GPT(cfg('rope', **ext)).pe.setup(torch.arange(8))['rope']
    z = GPT(cfg('tape', **ext)).pe.setup(torch.arange(8))['z']
    assert torch.equal(z[0, 0, :, :C // H // 2], rope_cos[:, :C // H // 2])  # TAPE's initial state is YaRN's RoPE
    assert torch.equal(GPT(cfg('randpe', **ext)).pe.setup(torch.arange(8))['rope'][0], rope_cos)
    owners = '/'.join(name for name, p in PES.items() if 'rope_scaling' in p.knobs)  # a new RoPE variant joins them
    with pytest.raises(ValueError, match=f'only applies to pe={owners}, not pe=xpos'):
        GPT(cfg('xpos', **ext))


@pytest.mark.parametrize('kw, words', [
    (dict(rope_scaling='linear'), ["rope_scaling='linear'", 'pos_scale=1/s']),
    (dict(rope_factor=2.0), ['rope_factor=2.0 does nothing', "rope_scaling='ntk' or 'yarn'"]),
    (dict(rope_scaling='ntk', rope_original=128), ["rope_original=128", "rope_scaling='yarn'"]),
    (dict(rope_scaling='yarn', rope_factor=2.0), ['needs rope_original']),
    (dict(rope_scaling='yarn', rope_factor=0.5, rope_original=64), ['rope_factor=0.5']),
    (dict(rope_scaling='yarn', rope_factor=2.0, rope_original=64, yarn_alpha=40.0), ['yarn_alpha=40.0']),
])
def test_extension_settings_are_checked(kw, words):
    with pytest.raises(ValueError) as e:
        GPT(cfg('rope', **kw))
    for w in words:
        assert w in str(e.value), str(e.value)


@pytest.mark.parametrize('D, Lo, s, base', [(32, 128, 2.0, 10000.0), (64, 4096, 16.0, 10000.0), (128, 8192, 4.0, 500000.0),
                                            (16, 64, 3.0, 10000.0)])
def test_extensions_match_hf_transformers(D, Lo, s, base):
    pytest.importorskip('transformers')
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    def hf(rope_type, max_pos, seq_len=None, **params):
        c = LlamaConfig(hidden_size=4 * D, num_attention_heads=4, max_position_embeddings=max_pos,
                        rope_parameters={'rope_type': rope_type, 'rope_theta': base, **params})
        return ROPE_INIT_FUNCTIONS[rope_type](c, 'cpu', seq_len=seq_len) if seq_len else ROPE_INIT_FUNCTIONS[rope_type](c, 'cpu')

    ours = lambda **kw: M.rope_frequencies(GPTConfig(n_head=4, n_embd=4 * D, pe='rope', rope_base=base, **kw))
    inv, att = hf('yarn', int(Lo * s), factor=s, original_max_position_embeddings=Lo)
    got, m = ours(rope_scaling='yarn', rope_factor=s, rope_original=Lo)
    assert torch.allclose(got, inv, rtol=1e-6, atol=0) and math.isclose(m, att)
    # static NTK is HF's dynamic NTK at factor 1 and seq_len = s * L: base * (seq_len / L)^(D/(D-2))
    inv, _ = hf('dynamic', Lo, seq_len=int(Lo * s), factor=1.0)
    got, _ = ours(rope_scaling='ntk', rope_factor=s)
    assert torch.allclose(got, inv, rtol=1e-6, atol=0)
    # linear: HF divides the frequencies by s, we multiply the positions by pos_scale = 1/s
    inv, _ = hf('linear', Lo, factor=s)
    got, _ = ours()
    assert torch.allclose(got / s, inv, rtol=1e-6, atol=0)


# -----------------------------------------------------------------------------
# train.py end to end: the first forward, what trains, the record of the parent, exact resume

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp('extend')
    data = byte_corpus(root / 'data')
    common = [*TINY, f'--data_dir={data}']
    r = run(['train.py', *common, '--pe=rope', f"--out_dir={root / 'parent'}", '--max_iters=8', '--eval_interval=8'], root / 'w')
    assert r.returncode == 0, r.stderr
    return root, common


def log_of(out):
    return [json.loads(line) for line in (out / 'log.jsonl').read_text().splitlines()]


def child(runs, name, *args):
    root, common = runs
    r = run(['train.py', *common, f"--init_from={root / 'parent'}", f'--out_dir={root / name}', *args], root / 'w')
    assert r.returncode == 0, r.stderr
    return r


def test_train_child_starts_where_the_parent_ended(runs):
    root, _ = runs
    parent_val = log_of(root / 'parent')[-1]['val_loss']
    child(runs, 'same', '--pe=rope', '--eval_only=True')
    assert log_of(root / 'same')[0]['val_loss'] == parent_val  # the same weights, batches and settings
    child(runs, 'tape0', '--pe=tape', '--eval_only=True')
    assert abs(log_of(root / 'tape0')[0]['val_loss'] - parent_val) < 1e-6  # rope -> tape: exact up to float order
    assert not (root / 'same' / 'ckpt.pt').exists()  # nothing trained, nothing saved


FINE_TUNE = ['--pe=tape', '--trainable=pe,wte,norm', '--block_size=64', '--dropout=0.1', '--lr_decay_iters=12',
             '--eval_interval=6', '--log_interval=1']


@pytest.fixture(scope='module')
def peft(runs):
    """TAPE's recipe on the RoPE parent: 12 steps at twice its length."""
    return child(runs, 'peft', *FINE_TUNE, '--max_iters=12')


def test_train_trainable_freezes_the_rest_and_records_the_parent(runs, peft):
    root, _ = runs
    parent = torch.load(root / 'parent' / 'ckpt.pt', weights_only=True)
    ck = torch.load(root / 'peft' / 'ckpt.pt', weights_only=True)
    m = GPT(GPTConfig(**ck['model_args']))
    n = m.set_trainable('pe,wte,norm')
    trained = [name for name, p in m.named_parameters() if p.requires_grad]
    frozen = [name for name, p in m.named_parameters() if not p.requires_grad]
    assert frozen and all('.attn.' in k or '.mlp.' in k for k in frozen)
    assert all(torch.equal(ck['model'][k], parent['model'][k]) for k in frozen)  # bit-identical after 12 steps
    assert all(not torch.equal(ck['model'][k], parent['model'][k]) for k in trained if k in parent['model'])
    state = ck['optimizer']
    assert len(state['state']) == len(trained)  # AdamW holds moments for the trained tensors only
    assert sorted(s['exp_avg'].numel() for s in state['state'].values()) == \
        sorted(p.numel() for p in m.parameters() if p.requires_grad)
    assert ck['trainable_params'] == n and f"{n:,} of " in peft.stdout and "trainable='pe,wte,norm'" in peft.stdout
    rec = ck['parent']
    assert rec['path'] == str(root / 'parent' / 'ckpt.pt') and rec['iter_num'] == 8
    assert rec['model_args']['pe'] == 'rope' and rec['config']['max_iters'] == 8
    assert f"started from {root / 'parent' / 'ckpt.pt'} (iter 8, pe=rope, block_size=32)" in peft.stdout


def test_train_resume_of_a_fine_tune_is_exact(runs, peft):
    root, common = runs
    child(runs, 'half', *FINE_TUNE, '--max_iters=6')
    r = run(['train.py', *common, *FINE_TUNE, f"--out_dir={root / 'half'}", '--init_from=resume', '--max_iters=12'], root / 'w')
    assert r.returncode == 0, r.stderr
    a = [x['loss'] for x in log_of(root / 'peft') if 'loss' in x]
    b = [x['loss'] for x in log_of(root / 'half') if 'loss' in x]
    assert len(a) == len(b) == 12 and a == b  # bit-identical
    assert [x['val_loss'] for x in log_of(root / 'peft') if 'val_loss' in x][-1] == \
        [x['val_loss'] for x in log_of(root / 'half') if 'val_loss' in x][-1]
    assert torch.load(root / 'half' / 'ckpt.pt', weights_only=True)['parent']['iter_num'] == 8  # kept through the resume
