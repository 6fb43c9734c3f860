"""Hugging Face models in and out (hf.py, train.py init_from=hf:, export.py) and wandb logging, offline: tiny GPT-2
and Llama models with random weights, saved to a temporary folder, stand in for the hub."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip('transformers')
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

import core  # noqa: E402
import hf  # noqa: E402
from test_bad_input import TINY, byte_corpus, one_line_error, run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
V, T0 = 300, 32   # a vocabulary the byte data (257 ids) fits


def randomize(m, seed):
    """HF's init leaves norms at 1 and biases at 0, and its small matrices give near-uniform attention: make every
    weight matter, so that a wrong copy or a wrong position shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return m.eval()


def gpt2(folder, seed=0, **kw):
    m = randomize(GPT2LMHeadModel(GPT2Config(**{**dict(vocab_size=V, n_positions=T0, n_embd=32, n_layer=2, n_head=4),
                                                **kw})), seed)
    m.save_pretrained(folder)
    return m


def llama(folder, seed=0, **kw):
    m = randomize(LlamaForCausalLM(LlamaConfig(**{**dict(
        vocab_size=V, hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=T0, rms_norm_eps=1e-5), **kw})), seed)
    m.save_pretrained(folder)
    return m


def tokens(T, seed=1):
    return torch.randint(V, (2, T), generator=torch.Generator().manual_seed(seed))


def logits(m, x):
    with torch.no_grad():
        out = m(x)
    return out.logits if hasattr(out, 'logits') else out[0]


FAMILIES = {'gpt2': (gpt2, {}), 'gpt2 untied': (gpt2, dict(tie_word_embeddings=False)),
            'llama gqa': (llama, {}), 'llama tied mha': (llama, dict(tie_word_embeddings=True, num_key_value_heads=4)),
            'llama linear scaling': (llama, dict(rope_scaling={'rope_type': 'linear', 'factor': 2.0}))}


@pytest.mark.parametrize('family', FAMILIES)
def test_an_imported_model_computes_what_transformers_computes(family, tmp_path):
    make, kw = FAMILIES[family]
    theirs = make(tmp_path / 'hf', **kw)
    ckpt, path = core.read_checkpoint(f'hf:{tmp_path / "hf"}')
    ours = core.model_from_checkpoint(ckpt, path).eval()
    assert ckpt['iter_num'] == 0 and ckpt['model_args']['arch'] == family.split()[0]
    T = T0 if family.startswith('gpt2') else 2 * T0  # RoPE runs past max_position_embeddings too
    x = tokens(T)
    want = logits(theirs, x)
    assert want.std() > 0.5  # not a degenerate comparison
    assert (logits(ours, x) - want).abs().max() < 1e-4


@pytest.mark.parametrize('family', FAMILIES)
def test_import_then_export_gives_identical_logits(family, tmp_path):
    make, kw = FAMILIES[family]
    make(tmp_path / 'hf', **kw)
    ckpt, path = core.read_checkpoint(f'hf:{tmp_path / "hf"}')
    ours = core.model_from_checkpoint(ckpt, path).eval()
    written = hf.write_hf(ckpt, str(tmp_path / 'out'))
    assert written[:2] == ['model.safetensors', 'config.json']
    again = core.model_from_checkpoint(*core.read_checkpoint(f'hf:{tmp_path / "out"}')).eval()
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()  # transformers reads what we wrote
    x = tokens(T0, seed=2)
    assert torch.equal(logits(again, x), logits(ours, x))
    assert (logits(theirs, x) - logits(ours, x)).abs().max() < 1e-4


def test_gqa_import_is_the_same_function_with_each_key_value_head_repeated(tmp_path):
    """Grouped-query attention becomes multi-head attention: head h reads key-value head h // (heads / kv heads)."""
    llama(tmp_path / 'hf', num_key_value_heads=2)
    ckpt, _ = core.read_checkpoint(f'hf:{tmp_path / "hf"}')
    from safetensors.torch import load_file
    k = load_file(tmp_path / 'hf' / 'model.safetensors')['model.layers.0.self_attn.k_proj.weight']  # (2 heads x 8, 32)
    ours_k = ckpt['model']['transformer.h.0.attn.c_attn.weight'][32:64].view(4, 8, 32)
    for h in range(4):
        assert torch.equal(ours_k[h], k.view(2, 8, 32)[h // 2])


def test_a_gpt2_exported_with_its_tokenizer_reads_text_as_tiktoken_does(tmp_path):
    gpt2(tmp_path / 'hf', vocab_size=50257)
    ckpt, _ = core.read_checkpoint(f'hf:{tmp_path / "hf"}')
    ckpt['meta'] = {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}
    assert hf.write_hf(ckpt, str(tmp_path / 'out'))[2:] == ['vocab.json', 'merges.txt', 'tokenizer_config.json']
    from transformers import AutoTokenizer
    import tiktoken
    tok = AutoTokenizer.from_pretrained(tmp_path / 'out')
    text = "Hello world, it's 2026: the king is dead!  Long live the queen.\n\tÜber naïve café 東京 🙂 <|endoftext|>"
    assert tok.encode(text) == tiktoken.get_encoding('r50k_base').encode(text, allowed_special='all')
    assert tok.decode(tok.encode(text)) == text
    again, _ = core.read_checkpoint(f'hf:{tmp_path / "out"}')  # and the import recognizes it as GPT-2's BPE
    assert again['meta'] == {'tokenizer': 'gpt2', 'vocab_size': 50257, 'eot': 50256}
    assert json.loads((tmp_path / 'out' / 'config.json').read_text())['eos_token_id'] == 50256


# -----------------------------------------------------------------------------
# refusals: one line each

def test_bad_folders_and_unsupported_configs_are_one_line(tmp_path):
    def refused(source, *words):
        with pytest.raises(ValueError) as e:
            core.read_checkpoint(source)
        msg = str(e.value)
        assert '\n' not in msg and all(w in msg for w in words), msg
    refused(f'hf:{tmp_path / "none"}', 'no such folder')
    (tmp_path / 'empty').mkdir()
    refused(f'hf:{tmp_path / "empty"}', 'cannot read', 'config.json')
    (tmp_path / 'bert').mkdir()
    (tmp_path / 'bert' / 'config.json').write_text(json.dumps({'model_type': 'bert'}))
    refused(f'hf:{tmp_path / "bert"}', "'bert' model", 'gpt2 and llama')
    gpt2(tmp_path / 'noweights')
    (tmp_path / 'noweights' / 'model.safetensors').unlink()
    refused(f'hf:{tmp_path / "noweights"}', 'holds no weights')
    gpt2(tmp_path / 'truncated')
    w = tmp_path / 'truncated' / 'model.safetensors'
    w.write_bytes(w.read_bytes()[:1000])
    refused(f'hf:{tmp_path / "truncated"}', 'cannot read the weights', 'truncated')
    llama(tmp_path / 'yarn', rope_scaling={'rope_type': 'yarn', 'factor': 2.0, 'original_max_position_embeddings': 16})
    refused(f'hf:{tmp_path / "yarn"}', 'rope_type=yarn')
    llama(tmp_path / 'bias', attention_bias=True)
    refused(f'hf:{tmp_path / "bias"}', 'biases')
    gpt2(tmp_path / 'relu', activation_function='relu')
    refused(f'hf:{tmp_path / "relu"}', 'activation_function=relu')
    (tmp_path / 'partial').mkdir()
    (tmp_path / 'partial' / 'config.json').write_text(json.dumps({'model_type': 'llama', 'hidden_size': 32}))
    refused(f'hf:{tmp_path / "partial"}', 'not a complete llama config')


def test_a_pytorch_bin_with_code_in_it_is_refused_not_run(tmp_path):
    gpt2(tmp_path / 'hf')
    (tmp_path / 'hf' / 'model.safetensors').unlink()
    marker = tmp_path / 'ran'
    torch.save({'x': Evil(str(marker))}, tmp_path / 'hf' / 'pytorch_model.bin')
    with pytest.raises(ValueError, match='cannot read the weights'):
        core.read_checkpoint(f'hf:{tmp_path / "hf"}')
    assert not marker.exists()


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, 'w'))


@pytest.mark.parametrize('kw, words', [
    (dict(pe='expe'), ['pe=expe has no Hugging Face model', 'pe=learned', 'pe=rope']),
    (dict(arch='llama', pe='rope', rope_scaling='ntk', rope_factor=2.0), ['rope_scaling=ntk']),
    (dict(arch='gpt2', pe='tape'), ['pe=tape has no Hugging Face model']),
])
def test_export_refuses_what_transformers_does_not_compute(kw, words, tmp_path):
    from model import GPT, GPTConfig
    m = GPT(GPTConfig(**{**dict(block_size=T0, vocab_size=V, n_layer=1, n_head=2, n_embd=16), **kw}))
    r = run(['export.py', '--ckpt', save(m, tmp_path), '--out', tmp_path / 'out'], tmp_path / 'w')
    one_line_error(r, *words)
    assert not (tmp_path / 'out').exists()


def save(m, tmp_path):
    from dataclasses import asdict
    path = tmp_path / 'run'
    path.mkdir()
    core.save_checkpoint({'model': m.state_dict(), 'model_args': asdict(m.config), 'config': {}, 'meta': {}},
                         str(path / 'ckpt.pt'))
    return path


# -----------------------------------------------------------------------------
# train.py init_from=hf: and export.py, as processes

def test_tape_from_an_hf_llama_is_the_llama_at_step_0(tmp_path):
    from model import GPT, GPTConfig
    theirs = llama(tmp_path / 'hf')
    ckpt, path = core.read_checkpoint(f'hf:{tmp_path / "hf"}')
    tape = GPT(GPTConfig(**{**ckpt['model_args'], 'pe': 'tape', 'block_size': 2 * T0})).eval()
    x = tokens(2 * T0)
    assert (logits(tape, x) - logits(theirs, x)).abs().max() > 0.1  # so that the next comparison can fail
    core.start_from_checkpoint(tape, ckpt, path)
    assert (logits(tape, x) - logits(theirs, x)).abs().max() < 1e-4


def test_a_llama_continued_as_tape_parameter_efficient(tmp_path):
    """Its settings come from config.json; only TAPE's parts and the norms train; the run exports only as a Llama."""
    llama(tmp_path / 'hf')
    data = byte_corpus(tmp_path / 'data')
    args = ['train.py', f'--init_from=hf:{tmp_path / "hf"}', f'--data_dir={data}', '--pe=tape', '--trainable=pe,norm',
            '--compile=False', '--device=cpu', '--batch_size=4', '--eval_iters=1', '--eval_interval=2']
    r = run([*args, '--max_iters=0', '--eval_only=True', f'--out_dir={tmp_path / "t0"}'], tmp_path / 'w')
    assert r.returncode == 0, r.stderr
    assert f'started from hf:{tmp_path / "hf"}' in r.stdout and 'pe=rope' in r.stdout
    r = run([*args, '--max_iters=2', f'--out_dir={tmp_path / "t2"}'], tmp_path / 'w')
    assert r.returncode == 0, r.stderr
    r = run([*args, '--max_iters=4', f'--out_dir={tmp_path / "t2"}', '--init_from=resume'], tmp_path / 'w')
    assert r.returncode == 0, r.stderr  # its own command with init_from=resume: the settings from config.json again
    assert 'step 4:' in r.stdout
    ckpt, _ = core.read_checkpoint(str(tmp_path / 't2'))
    assert ckpt['iter_num'] == 4
    assert ckpt['model_args']['n_layer'] == 2 and ckpt['model_args']['ffn_hidden'] == 80  # from config.json
    assert ckpt['parent']['path'] == f'hf:{tmp_path / "hf"}'
    # the frozen blocks are the Llama's own; TAPE's updates and the norms trained
    from safetensors.torch import load_file
    hs = load_file(tmp_path / 'hf' / 'model.safetensors')
    assert torch.equal(ckpt['model']['transformer.h.1.mlp.c_proj.weight'], hs['model.layers.1.mlp.down_proj.weight'])
    assert not torch.equal(ckpt['model']['transformer.ln_f.weight'], hs['model.norm.weight'])
    one_line_error(run(['export.py', '--ckpt', tmp_path / 't2', '--out', tmp_path / 'out'], tmp_path / 'w'),
                   'pe=tape has no Hugging Face model')


def test_train_from_hf_step_0_is_the_hf_model(tmp_path):
    """TAPE from a Llama's RoPE at step 0 (nothing trained): the child's val loss is the Llama's own."""
    theirs = llama(tmp_path / 'hf')
    data = byte_corpus(tmp_path / 'data')
    common = [f'--data_dir={data}', '--compile=False', '--device=cpu', '--batch_size=4', '--eval_iters=2',
              '--max_iters=0', '--eval_only=True']
    out = {}
    for pe in ('rope', 'tape'):
        r = run(['train.py', f'--init_from=hf:{tmp_path / "hf"}', f'--pe={pe}', *common, f'--out_dir={tmp_path / pe}'],
                tmp_path / 'w')
        assert r.returncode == 0, r.stderr
        out[pe] = [line for line in r.stdout.splitlines() if line.startswith('step 0:')]
    assert out['rope'] and out['rope'] == out['tape']
    assert theirs is not None


def test_gpt2_learned_table_replaced_by_expe_needs_replace_pe(tmp_path):
    gpt2(tmp_path / 'hf')
    data = byte_corpus(tmp_path / 'data')
    args = ['train.py', f'--init_from=hf:{tmp_path / "hf"}', f'--data_dir={data}', '--pe=expe', '--compile=False',
            '--device=cpu', '--batch_size=4', '--eval_iters=1', '--max_iters=2', f'--out_dir={tmp_path / "x"}']
    one_line_error(run(args, tmp_path / 'w'), 'pe=expe cannot start from', 'pe=learned', 'replace_pe=True')
    r = run([*args, '--replace_pe=True'], tmp_path / 'w')
    assert r.returncode == 0, r.stderr
    assert 'replace_pe: pe=expe learns from its init' in r.stdout
    ckpt, _ = core.read_checkpoint(str(tmp_path / 'x'))
    assert ckpt['model_args']['pe'] == 'expe' and ckpt['model_args']['block_size'] == T0
    assert not any(k.startswith('pe.') for k in ckpt['model'])  # the learned table is gone, ExPE has no parameters


def test_train_from_hf_refusals_are_one_line(tmp_path):
    gpt2(tmp_path / 'hf', vocab_size=100)  # the byte data's 257 ids do not fit
    data = byte_corpus(tmp_path / 'data')
    base = ['train.py', f'--data_dir={data}', '--compile=False', '--device=cpu', f'--out_dir={tmp_path / "x"}']
    one_line_error(run([*base, f'--init_from=hf:{tmp_path / "nothing"}'], tmp_path / 'w'), 'init_from', 'no such folder')
    one_line_error(run([*base, f'--init_from=hf:{tmp_path / "hf"}'], tmp_path / 'w'), 'vocab')
    gpt2(tmp_path / 'hf2')
    one_line_error(run([*base, f'--init_from=hf:{tmp_path / "hf2"}', '--n_layer=3'], tmp_path / 'w'),
                   'n_layer=3', 'n_layer=2')
    assert not (tmp_path / 'x').exists()  # nothing written before the checks


def test_a_gpt2_bpe_model_refuses_byte_data(tmp_path):
    gpt2(tmp_path / 'hf', vocab_size=50257)
    hf.write_gpt2_tokenizer(str(tmp_path / 'hf'), T0)  # its vocab.json says GPT-2's BPE
    data = byte_corpus(tmp_path / 'data')
    r = run(['train.py', f'--init_from=hf:{tmp_path / "hf"}', f'--data_dir={data}', '--compile=False', '--device=cpu',
             f'--out_dir={tmp_path / "x"}'], tmp_path / 'w')
    one_line_error(r, "tokenizer 'gpt2'", "'byte'", '--tokenizer gpt2')


def test_export_cli_writes_a_folder_transformers_loads(tmp_path):
    from model import GPT, GPTConfig
    m = GPT(GPTConfig(block_size=T0, vocab_size=V, n_layer=2, n_head=2, n_embd=16, arch='llama', pe='rope',
                      pos_scale=0.5, tie_embeddings=False)).eval()
    r = run(['export.py', '--ckpt', save(m, tmp_path), '--out', tmp_path / 'out'], tmp_path / 'w')
    assert r.returncode == 0, r.stderr
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / 'out').eval()
    x = tokens(2 * T0)
    assert (logits(theirs, x) - logits(m, x)).abs().max() < 1e-4
    r = run(['export.py', '--ckpt', tmp_path / 'run', '--out', tmp_path / 'out'], tmp_path / 'w')
    one_line_error(r, 'already holds', '--overwrite')  # never over a folder the user has


# -----------------------------------------------------------------------------
# wandb

def test_wandb_offline_writes_its_run_files(tmp_path):
    pytest.importorskip('wandb')
    data = byte_corpus(tmp_path / 'data')
    env = {**os.environ, 'WANDB_MODE': 'offline', 'WANDB_SILENT': 'true', 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, ROOT / 'train.py', *TINY, f'--data_dir={data}', '--max_iters=4', '--log_interval=2',
                        '--eval_interval=4', f'--out_dir={tmp_path / "run"}', '--wandb_log=True', '--wandb_run_name=tiny'],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    runs = list((tmp_path / 'run' / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and list(runs[0].glob('*.wandb')), list((tmp_path / 'run').rglob('*'))
    assert 'warning' not in r.stdout


def test_an_unreachable_wandb_never_stops_training(tmp_path):
    """A wandb that cannot start (no key, no network), or fails mid-run: one warning each, and the run goes on."""
    fake = tmp_path / 'fake'
    fake.mkdir()
    (fake / 'wandb.py').write_text(
        "import os\n"
        "class Run:\n"
        "    n = 0\n"
        "    def log(self, record, step):\n"
        "        Run.n += 1\n"
        "        if Run.n == 2: raise ConnectionError('service unreachable')\n"
        "def init(**kw):\n"
        "    if os.environ.get('FAIL_INIT'): raise RuntimeError('api_key not configured (no-tty)')\n"
        "    return Run()\n")
    data = byte_corpus(tmp_path / 'data')
    for fail_init, warning in (('1', 'wandb logging is off (RuntimeError: api_key'), ('', 'wandb logging stopped')):
        env = {**os.environ, 'PYTHONPATH': str(fake), 'FAIL_INIT': fail_init, 'OMP_NUM_THREADS': '1'}
        r = subprocess.run([sys.executable, ROOT / 'train.py', *TINY, f'--data_dir={data}', '--max_iters=4',
                            '--log_interval=1', '--eval_interval=4', f'--out_dir={tmp_path / ("run" + fail_init)}',
                            '--wandb_log=True'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count('warning: wandb') == 1 and warning in r.stdout, r.stdout
        assert 'saved checkpoint' in r.stdout
        log = (tmp_path / ('run' + fail_init) / 'log.jsonl').read_text().splitlines()
        assert json.loads(log[-1])['iter'] == 4  # every record still in log.jsonl
