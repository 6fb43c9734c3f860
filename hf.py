"""
Hugging Face models in and out: the GPT-2 family (GPT2LMHeadModel) as arch=gpt2 with pe=learned, and the Llama
family (LlamaForCausalLM) as arch=llama with pe=rope. The two are the same functions (tests/test_hf.py checks the
logits against transformers'), so a pretrained model can be continued, extended or given another pe here, and a
model trained here can be used there.

    read_hf('hf:gpt2' or 'hf:path/to/folder')  -> a checkpoint of this project's format (core.py), iter_num 0
    write_hf(ckpt, folder)                      -> config.json + model.safetensors (+ the GPT-2 tokenizer)

Weights are read from safetensors (or pytorch_model.bin with weights_only=True): no code from a model folder is
ever run. A name that is not a folder is fetched through the Hugging Face hub cache (huggingface_hub, online).
"""
import json
import os
import re
from dataclasses import asdict
from functools import partial

import torch

from data import get_tokenizer
from model import GPTConfig

GPT2_MATRICES = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')  # HF's Conv1D: (in, out)
WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json')


def hf_folder(name):
    """The local folder of 'hf:<folder or hub name>'; a hub name is downloaded (weights and configs only)."""
    if os.path.isdir(name):
        return name
    if name.startswith(('.', '/', '~')) or os.sep + os.sep in name:
        raise ValueError(f"hf:{name}: no such folder: name a folder holding config.json and the weights, or a hub model")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"hf:{name} is not a folder here, and fetching it from the hub needs huggingface_hub "
                         "(pip install huggingface_hub), or download it and pass its folder")
    try:  # safetensors first: a .bin is fetched only where a model has no safetensors
        return snapshot_download(name, allow_patterns=['*.json', '*.safetensors', '*.txt', '*.model'])
    except Exception as e:  # offline, unknown name, gated model, ...
        raise ValueError(f"hf:{name}: not a folder here and the hub did not give it ({type(e).__name__}: "
                         f"{(str(e).splitlines() or [''])[0][:120]}): pass a local folder (offline: HF_HUB_OFFLINE=1 "
                         "reads the hub cache)")


def read_weights(folder):
    """{name: tensor} of a Hugging Face folder: safetensors, or a pytorch_model.bin read with weights_only=True."""
    names = [f for f in WEIGHT_FILES if os.path.exists(os.path.join(folder, f))]
    if not names:
        raise ValueError(f"{folder} holds no weights (none of {', '.join(WEIGHT_FILES)})")
    path = os.path.join(folder, names[0])
    files = [path]
    if path.endswith('.index.json'):  # sharded: the index names the files
        with open(path) as f:
            files = [os.path.join(folder, p) for p in sorted(set(json.load(f)['weight_map'].values()))]
    state = {}
    for file in files:
        try:
            if file.endswith('.safetensors'):
                from safetensors.torch import load_file
                state.update(load_file(file))
            else:
                state.update(torch.load(file, map_location='cpu', weights_only=True))
        except ImportError:
            raise ValueError(f"{file} is safetensors: reading it needs the safetensors package (pip install safetensors)")
        except Exception as e:
            raise ValueError(f"cannot read the weights in {file} ({type(e).__name__}): a truncated download? fetch it again")
    return state


def hf_model_args(source):
    """The model settings (every GPTConfig field) of 'hf:<folder or hub name>', from its config.json alone."""
    return read_config(source)[1]


def read_config(source):
    """(folder, model settings, rename: HF weights -> this model's) of 'hf:<folder or hub name>'. ValueError, one
    line, for anything this model cannot be: another architecture, a feature it does not have, a missing file."""
    folder = hf_folder(source.removeprefix('hf:'))
    path = os.path.join(folder, 'config.json')
    try:
        with open(path) as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{source}: cannot read {path} ({type(e).__name__}): a Hugging Face model folder has one")
    kind = hf.get('model_type') if isinstance(hf, dict) else None
    if kind not in ('gpt2', 'llama'):
        raise ValueError(f"{source} is a {kind!r} model: only the gpt2 and llama families map onto this model "
                         "(arch=gpt2 with learned positions, arch=llama with rope)")
    try:
        args, rename = gpt2_args(hf, source) if kind == 'gpt2' else llama_args(hf, source)
    except (KeyError, TypeError, ZeroDivisionError) as e:
        raise ValueError(f"{source}: its config.json is not a complete {kind} config ({type(e).__name__}: {e})")
    return folder, asdict(GPTConfig(**args)), rename  # every setting, the rest at their defaults


def read_hf(source):
    """The checkpoint (core.py's format, no training state) of 'hf:<folder or hub name>'; ValueError as read_config."""
    folder, args, rename = read_config(source)
    kind = args['arch']
    try:
        state = rename(read_weights(folder))
    except KeyError as e:
        raise ValueError(f"{source}: its weights lack {e.args[0]}: an incomplete download, or not a {kind} model")
    if args['tie_embeddings']:
        state['lm_head.weight'] = state['transformer.wte.weight']
    tok = tokenizer_of_folder(folder, args['vocab_size'])
    meta = {}
    if tok:
        _, _, eot, vocab_size = get_tokenizer(tok)
        meta = {'tokenizer': tok, 'vocab_size': vocab_size, 'eot': eot}
    return {'version': 2, 'model': state, 'model_args': args, 'meta': meta, 'iter_num': 0,
            'config': {'hf': source, 'block_size': args['block_size']}}


def tokenizer_of_folder(folder, vocab_size):
    """'gpt2' where the model reads GPT-2's BPE (tiktoken's gpt2 is the same tokenizer), else '' (not known here)."""
    vocab = {}
    for name in ('vocab.json', 'tokenizer.json'):
        try:
            with open(os.path.join(folder, name), encoding='utf-8') as f:
                vocab = json.load(f)
        except (OSError, ValueError):
            continue
        vocab = vocab.get('model', {}).get('vocab', {}) if name == 'tokenizer.json' else vocab
        break
    if vocab_size >= 50257 and len(vocab) == 50257 and vocab.get('<|endoftext|>') == 50256 and vocab.get('Ġthe') == 262:
        return 'gpt2'
    return ''


def refuse(source, what, fix):
    raise ValueError(f"{source}: {what}, which this model does not have: {fix}")


def gpt2_args(hf, source):
    C, H = hf['n_embd'], hf['n_head']
    if hf.get('n_inner') not in (None, 4 * C):
        refuse(source, f"n_inner={hf['n_inner']} (an MLP other than 4 x n_embd)", "use a model with the standard width")
    if hf.get('activation_function', 'gelu_new') not in ('gelu_new', 'gelu_pytorch_tanh'):
        refuse(source, f"activation_function={hf['activation_function']}", "only GPT-2's tanh GELU maps here")
    for k in ('scale_attn_by_inverse_layer_idx', 'reorder_and_upcast_attn', 'add_cross_attention'):
        if hf.get(k):
            refuse(source, f"{k}=true", "use a plain GPT-2")
    if not hf.get('scale_attn_weights', True):
        refuse(source, "scale_attn_weights=false", "use a plain GPT-2")
    args = dict(arch='gpt2', pe='learned', vocab_size=hf['vocab_size'], block_size=hf['n_positions'],
                n_layer=hf['n_layer'], n_head=H, n_embd=C, bias=True, dropout=0.0,
                norm_eps=hf.get('layer_norm_epsilon', 1e-5), tie_embeddings=hf.get('tie_word_embeddings', True))

    def rename(hs):
        out = {}
        for k, v in hs.items():
            k = k.removeprefix('transformer.')
            if re.search(r'\.attn\.(masked_)?bias$', k):  # old files keep the causal mask as a buffer
                continue
            name = 'pe.wpe.weight' if k == 'wpe.weight' else k if k == 'lm_head.weight' else 'transformer.' + k
            out[name] = v.t().contiguous() if name.endswith(GPT2_MATRICES) else v
        return out
    return args, rename


def llama_args(hf, source):
    C, H = hf['hidden_size'], hf['num_attention_heads']
    if hf.get('head_dim', C // H) != C // H or C % H:
        refuse(source, f"head_dim={hf.get('head_dim')} other than hidden_size / heads", "use a model with the usual head size")
    if hf.get('attention_bias') or hf.get('mlp_bias'):
        refuse(source, "biases in attention or MLP", "use a Llama without them")
    if hf.get('hidden_act', 'silu') != 'silu':
        refuse(source, f"hidden_act={hf['hidden_act']}", "only SwiGLU (silu) maps here")
    rope = hf.get('rope_parameters') or hf.get('rope_scaling') or {}  # newer transformers: rope_parameters
    base = rope.get('rope_theta', hf.get('rope_theta', 10000.0))
    kind = rope.get('rope_type', rope.get('type', 'default'))
    args = dict(arch='llama', pe='rope', vocab_size=hf['vocab_size'], block_size=hf.get('max_position_embeddings', 2048),
                n_layer=hf['num_hidden_layers'], n_head=H, n_embd=C, bias=False, dropout=0.0,
                ffn_hidden=hf['intermediate_size'], norm_eps=hf.get('rms_norm_eps', 1e-6), rope_base=float(base),
                tie_embeddings=hf.get('tie_word_embeddings', False))
    if kind == 'linear':  # positions divided by the factor: this model's pos_scale
        args['pos_scale'] = 1.0 / rope['factor']
    elif kind != 'default':
        refuse(source, f"rope_type={kind}", "only default and linear RoPE scaling map here (set rope_scaling after "
               "import: ntk or yarn)")
    groups = H // hf.get('num_key_value_heads', H)

    def rename(hs):
        out = {'transformer.wte.weight': hs['model.embed_tokens.weight'], 'transformer.ln_f.weight': hs['model.norm.weight']}
        if 'lm_head.weight' in hs and not args['tie_embeddings']:
            out['lm_head.weight'] = hs['lm_head.weight']
        for i in range(args['n_layer']):
            p, q = f'model.layers.{i}.', f'transformer.h.{i}.'
            # grouped-query attention as multi-head: each key/value head repeated for its group, the same function
            kv = [hs[p + f'self_attn.{n}_proj.weight'].view(-1, C // H, C).repeat_interleave(groups, 0).view(C, C)
                  for n in 'kv']
            out[q + 'attn.c_attn.weight'] = torch.cat([hs[p + 'self_attn.q_proj.weight'], *kv])
            out[q + 'attn.c_proj.weight'] = hs[p + 'self_attn.o_proj.weight']
            out[q + 'mlp.c_fc.weight'] = torch.cat((hs[p + 'mlp.gate_proj.weight'], hs[p + 'mlp.up_proj.weight']))
            out[q + 'mlp.c_proj.weight'] = hs[p + 'mlp.down_proj.weight']
            out[q + 'ln_1.weight'] = hs[p + 'input_layernorm.weight']
            out[q + 'ln_2.weight'] = hs[p + 'post_attention_layernorm.weight']
        return out
    if H % hf.get('num_key_value_heads', H):
        refuse(source, f"{hf['num_key_value_heads']} key-value heads for {H} heads", "use a model whose heads divide evenly")
    return args, rename


# -----------------------------------------------------------------------------
# out: a checkpoint of this project as a Hugging Face folder

def write_hf(ckpt, folder):
    """Write ckpt's model to folder as transformers reads it: config.json, model.safetensors, and GPT-2's tokenizer
    where the model reads it. Returns what was written. ValueError (one line) for a model that no Hugging Face class
    computes; OSError where the folder cannot be written (each file is whole or absent: core.replace_file)."""
    a = ckpt['model_args']
    state = {k: v.detach().float().cpu().contiguous() for k, v in ckpt['model'].items()}
    if (a['arch'], a['pe']) == ('gpt2', 'learned'):
        config, weights = gpt2_out(a, state)
    elif (a['arch'], a['pe']) == ('llama', 'rope'):
        config, weights = llama_out(a, state)
    else:
        raise ValueError(f"arch={a['arch']}, pe={a['pe']} has no Hugging Face model: transformers computes GPT-2 with "
                         "learned positions (arch=gpt2, pe=learned) and Llama with RoPE (arch=llama, pe=rope)")
    eot = (ckpt.get('meta') or {}).get('eot')
    config.update(bos_token_id=eot, eos_token_id=eot, torch_dtype='float32')
    os.makedirs(folder, exist_ok=True)
    from safetensors.torch import save_file

    from core import replace_file, write_text  # core reads hf: checkpoints through this module, so imported here
    replace_file(os.path.join(folder, 'model.safetensors'), lambda p: save_file(weights, p, metadata={'format': 'pt'}))
    replace_file(os.path.join(folder, 'config.json'), partial(write_text, json.dumps(config, indent=2) + '\n'))
    written = ['model.safetensors', 'config.json']
    if (ckpt.get('meta') or {}).get('tokenizer') == 'gpt2':
        try:
            written += write_gpt2_tokenizer(folder, a['block_size'])
        except Exception as e:  # GPT-2's ranks not cached offline: the model is written all the same
            written.append(f"no tokenizer ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:80]})")
    return written


def gpt2_out(a, state):
    if a['pos_scale'] != 1.0:
        raise ValueError(f"pos_scale={a['pos_scale']}: GPT-2's learned table has no position scaling; export the model at 1")
    C = a['n_embd']
    out = {}
    for k, v in state.items():
        if k == 'lm_head.weight' and a['tie_embeddings']:
            continue  # tied: transformers makes it from wte
        name = 'transformer.wpe.weight' if k == 'pe.wpe.weight' else k
        out[name] = v.t().contiguous() if k.endswith(GPT2_MATRICES) else v
    if not a['bias']:  # GPT-2 always has biases: zeros compute the same
        for i in range(a['n_layer']):
            p = f'transformer.h.{i}.'
            for name, n in (('ln_1', C), ('ln_2', C), ('attn.c_attn', 3 * C), ('attn.c_proj', C), ('mlp.c_fc', 4 * C),
                            ('mlp.c_proj', C)):
                out[p + name + '.bias'] = torch.zeros(n)
        out['transformer.ln_f.bias'] = torch.zeros(C)
    config = dict(architectures=['GPT2LMHeadModel'], model_type='gpt2', vocab_size=a['vocab_size'],
                  n_positions=a['block_size'], n_ctx=a['block_size'], n_embd=C, n_layer=a['n_layer'], n_head=a['n_head'],
                  n_inner=None, activation_function='gelu_new', resid_pdrop=a['dropout'], embd_pdrop=a['dropout'],
                  attn_pdrop=a['dropout'], layer_norm_epsilon=a['norm_eps'], initializer_range=0.02,
                  scale_attn_weights=True, use_cache=True, tie_word_embeddings=a['tie_embeddings'])
    return config, out


def llama_out(a, state):
    if a['rope_scaling']:
        raise ValueError(f"rope_scaling={a['rope_scaling']}: only RoPE without scaling, or with linear interpolation "
                         "(pos_scale), is exported (transformers' ntk is dynamic, and its yarn is not checked here)")
    C, H = a['n_embd'], a['n_head']
    hidden = state['transformer.h.0.mlp.c_proj.weight'].shape[1]
    out = {'model.embed_tokens.weight': state['transformer.wte.weight'], 'model.norm.weight': state['transformer.ln_f.weight']}
    if not a['tie_embeddings']:
        out['lm_head.weight'] = state['lm_head.weight']
    for i in range(a['n_layer']):
        p, q = f'model.layers.{i}.', f'transformer.h.{i}.'
        for n, w in zip('qkv', state[q + 'attn.c_attn.weight'].split(C)):
            out[p + f'self_attn.{n}_proj.weight'] = w.contiguous()
        out[p + 'self_attn.o_proj.weight'] = state[q + 'attn.c_proj.weight']
        gate, up = state[q + 'mlp.c_fc.weight'].split(hidden)
        out[p + 'mlp.gate_proj.weight'], out[p + 'mlp.up_proj.weight'] = gate.contiguous(), up.contiguous()
        out[p + 'mlp.down_proj.weight'] = state[q + 'mlp.c_proj.weight']
        out[p + 'input_layernorm.weight'] = state[q + 'ln_1.weight']
        out[p + 'post_attention_layernorm.weight'] = state[q + 'ln_2.weight']
    scaling = None if a['pos_scale'] == 1.0 else {'rope_type': 'linear', 'factor': 1.0 / a['pos_scale']}
    config = dict(architectures=['LlamaForCausalLM'], model_type='llama', vocab_size=a['vocab_size'], hidden_size=C,
                  intermediate_size=hidden, num_hidden_layers=a['n_layer'], num_attention_heads=H, num_key_value_heads=H,
                  head_dim=C // H, hidden_act='silu', max_position_embeddings=a['block_size'], rms_norm_eps=a['norm_eps'],
                  rope_theta=a['rope_base'], rope_scaling=scaling, attention_bias=False, mlp_bias=False,
                  attention_dropout=a['dropout'], tie_word_embeddings=a['tie_embeddings'], use_cache=True)
    return config, out


def byte_symbols():
    """GPT-2's byte -> printable character map (its vocab.json spells every token in these)."""
    keep = [*range(ord('!'), ord('~') + 1), *range(ord('\u00a1'), ord('\u00ac') + 1), *range(ord('\u00ae'), ord('\u00ff') + 1)]
    extra = iter(range(256, 512))
    return {b: chr(b) if b in keep else chr(next(extra)) for b in range(256)}


def write_gpt2_tokenizer(folder, max_length):
    """vocab.json, merges.txt and tokenizer_config.json of GPT-2's BPE, made from tiktoken's ranks: each token's merge
    is the pair BPE leaves when it may use only the tokens ranked before it."""
    import tiktoken
    enc = tiktoken.get_encoding('r50k_base')  # GPT-2's exact ranks (data.get_tokenizer)
    ranks = enc._mergeable_ranks
    sym = byte_symbols()
    spell = lambda t: ''.join(sym[b] for b in t)  # noqa: E731
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], 1 << 30))
            parts[best:best + 2] = [parts[best] + parts[best + 1]]
        merges.append(f"{spell(parts[0])} {spell(parts[1])}")
    vocab = {spell(t): r for t, r in ranks.items()} | {'<|endoftext|>': enc.eot_token}
    eot = '<|endoftext|>'
    files = {'vocab.json': json.dumps(vocab, ensure_ascii=False), 'merges.txt': '#version: 0.2\n' + '\n'.join(merges) + '\n',
             'tokenizer_config.json': json.dumps({'tokenizer_class': 'GPT2Tokenizer', 'model_max_length': max_length,
                                                  'bos_token': eot, 'eos_token': eot, 'unk_token': eot,
                                                  'add_prefix_space': False}, indent=2)}
    from core import replace_file, write_text  # as in write_hf
    for name, text in files.items():
        replace_file(os.path.join(folder, name), partial(write_text, text))
    return list(files)
