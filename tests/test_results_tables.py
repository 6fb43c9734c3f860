"""Every results table in README.md and results/*.md agrees, cell by cell, with the committed raw file it
came from (issue 23, item 6): a drifted cell fails CI.

A checked table names its raw files in an HTML comment on the line directly above its header (above the
opening ``` where the table sits in a code block), paths from the repository root, globs allowed:

    <!-- raw: results/cpu_main/eval.json results/cpu_scaled/eval.json -->

The header's columns say the table's kind; each kind recomputes every cell from the raw rows with the
format of the script that wrote it, and the text must be the same. Rows are matched by their key columns
(the checkpoint, the pe and scale, ...); a raw row missing from the table fails too.
- loss, `| checkpoint | pe | scale | 1x ...`: eval.py's table of eval.json.
- seed summary, `| pe | scale | seeds | 1x ...` or `| pe | 1x ...`: results/summarize.py's mean ± half the
  range of eval.json rows grouped by (pe, scale); its bold best cell and ' †' are accepted.
- passkey, `| checkpoint | pe | scale | passkey mix | 1x ...`, and passkey by depth, `| depth | 1x = 128 ...`
  (the grid of the checkpoint its caption names): evaluation.passkey_tables of tasks.json.
- addition, `| checkpoint | pe | seed | scale | N | grid | ID ...`, and addition by pe, `| pe | scale | N |
  seeds | ID of each ...`: evaluation.addition_tables / addition_by_pe of tasks.json.
- addition by answer length, `| checkpoint | 1 | 2 ...`: addition_tables' answer-length table, transposed
  (a row per checkpoint, named by its folder).
- recipe loss and recipe passkey, `| recipe | fine-tuned | ...`: results/run_extend.sh's summary of
  results/extend/{loss,passkey}/*/; its `trainable params` and `train s` columns are read from ckpt.pt and
  log.jsonl under out/, which is not committed, so those two columns are not checked.

So that no table skips the guard: a table with a raw comment but an unknown header fails, and a table
whose first column is checkpoint, pe, recipe or depth (a results table) needs a raw comment unless it is
listed in NOT_CHECKED.

Deliberately not checked:
- results/README.md, the passkey probe (`| checkpoint | pe | length | depth | 2nd mention ...`):
  results/passkey_probe.py prints it and writes no json.
- results/bf16.md and results/bf16_probe.md (`| checkpoint | pe | attention | 1x ...`): results/bf16_probe.py
  prints the table and writes no json.
- results/benchmarks.md, the demo checkpoint's benchmarks (`| checkpoint | pe | scale | task | ...`): its
  tasks.json was written under out/bench_demo, which is not committed; and the harness agreement table
  (`| task | split | rows | acc: harness ...`): results/harness_agreement.py prints it, no json.
- results/bench.md, `| arch | pe | ms/step ...`: timings, no raw json; `| part | what | file |`: prose.
- Prose tables, no numbers of a run in them: README.md's table of the pes (`pe` | what it is) and
  `| topic | page |`, results/README.md's `| row | override |`, results/bf16.md's `| attention | what it is |`.
- The scripts' own outputs in results/**/ (eval.md, tasks.md, summary.md, probe.md, ...) are out of scope:
  each was written by the same run as the json beside it, not pasted.
"""
import glob
import json
import os
import re
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
MD_FILES = ['README.md'] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(str(ROOT / 'results' / '*.md')))
RESULTS_FIRST_COLUMNS = {'checkpoint', 'pe', 'recipe', 'depth'}  # rows named so hold numbers of runs
NOT_CHECKED = {  # (file, header): why this results table has no raw comment (the docstring says more)
    ('results/README.md', '| checkpoint | pe | length | depth | 2nd mention at position | 2nd mention copied '
                          '| answer copied |'): 'passkey_probe.py writes no json',
    ('results/bf16.md', '| checkpoint | pe | attention | 1x | 2x | 4x | 8x | 16x |'): 'bf16_probe.py writes no json',
    ('results/bf16_probe.md', '| checkpoint | pe | attention | 1x | 2x | 4x | 8x | 16x |'): 'bf16_probe.py writes no json',
    ('results/benchmarks.md', '| checkpoint | pe | scale | task | source | split | n | acc | acc_norm |'):
        'its tasks.json is under out/, not committed',
}
UNCHECKED_COLUMNS = {'trainable params', 'train s'}  # run_extend.sh reads them from out/, not from the raw json

Table = namedtuple('Table', 'path line header rows raw caption')  # line: of the header, 1-based; rows: [(line, cells)]
Problem = namedtuple('Problem', 'where row column expected found')


# -----------------------------------------------------------------------------
# finding the tables and their raw comments

RAW = re.compile(r'<!-- raw: (.+?) -->')


def cells_of(line):
    return [c.strip() for c in line.strip().strip('|').split('|')]


def tables_of(path, text):
    """Every markdown table of a file: a `|` header line, a `|---` rule, then `|` rows."""
    lines, tables = text.splitlines(), []
    for i in range(len(lines) - 1):
        if lines[i].startswith('|') and lines[i + 1].startswith('|---') and not (i and lines[i - 1].startswith('|')):
            end = i + 2
            while end < len(lines) and lines[end].startswith('|'):
                end += 1
            above = i - 1 - (i > 0 and lines[i - 1].startswith('```'))  # the comment sits outside a code block
            raw = RAW.fullmatch(lines[above].strip()) if above >= 0 else None
            caption = next((s for s in reversed(lines[:i]) if s.strip() and not s.startswith(('<!--', '```'))), '')
            tables.append(Table(path, i + 1, cells_of(lines[i]), [(j + 1, cells_of(lines[j])) for j in range(i + 2, end)],
                                raw.group(1).split() if raw else None, caption))
    return tables


# -----------------------------------------------------------------------------
# each kind's rows, recomputed from the raw files: [{column: cell text}], in the writing script's format

def name_of(r):  # eval.py and eval_tasks.py: the checkpoint and the --set settings but pos_scale
    return r['ckpt'] + ''.join(f" {k}={v}" for k, v in r.get('set', {}).items() if k != 'pos_scale')


def loss_rows(raws, table):  # eval.py
    return [{'checkpoint': name_of(r), 'pe': r['pe'], 'scale': f"{r['scale']:g}",
             **{f"{ev}x": f"{c['loss']:.4f}" if 'loss' in c else f"n/a ({c['na']})" for ev, c in r['cells'].items()}}
            for _, data in raws for r in data['rows']]


def seed_summary_rows(raws, table):  # results/summarize.py
    groups = {}
    for _, data in raws:
        for r in data['rows']:
            groups.setdefault((r['pe'], r['scale']), []).append(r)
    out = []
    for (pe, scale), rows in groups.items():
        row = {'pe': pe, 'scale': f"{scale:g}", 'seeds': str(len(rows))}
        for ev in raws[0][1]['ev']:
            v = [r['cells'][str(ev)].get('loss') for r in rows]
            row[f"{ev}x"] = 'n/a' if None in v else f"{np.mean(v):.3f} ± {(max(v) - min(v)) / 2:.3f}"
        out.append(row)
    return out


def undecorate(cell):  # summarize.py bolds the best cell of a column and marks rows separated from it with †
    return cell.removesuffix(' †').removeprefix('**').removesuffix('**')


def passkey_cell(c):  # evaluation.passkey_tables
    return f"{100 * c['acc']:.0f}%" if 'acc' in c else f"n/a ({c['na']})"


def passkey_rows(raws, table):
    out = []
    for _, data in raws:
        for r in data['rows']:
            row = {'checkpoint': name_of(r), 'pe': r['pe'], 'scale': f"{r['scale']:g}", 'passkey mix': f"{r['passkey_frac']:g}"}
            for ev, by_depth in r['passkey'].items():
                accs = [c['acc'] for c in by_depth.values() if 'acc' in c]
                row[f"{ev}x"] = f"{100 * np.mean(accs):.0f}%" if accs else passkey_cell(next(iter(by_depth.values())))
            out.append(row)
    return out


def passkey_depth_rows(raws, table):  # the grid of the checkpoint that the caption above the table names
    ckpt = table.caption.split(' (pe=')[0]
    r = next((r for _, data in raws for r in data['rows'] if r['ckpt'] == ckpt), None)
    if r is None:
        raise LookupError(f"the caption names {ckpt!r}, which no raw row holds")
    out = []
    for d in next(iter(r['passkey'].values())):
        row = {'depth': f"{100 * float(d):g}%"}
        for ev, by_depth in r['passkey'].items():
            c = by_depth[d]
            row[f"{ev}x = {int(ev) * r['block_size']}"] = passkey_cell(c) + (f" ({c['loss']:.2f})" if 'acc' in c else '')
        out.append(row)
    return out


ADDITION_GROUPS = {  # evaluation.ADDITION_GROUPS: (does a cell whose longer operand has m digits count, grid it needs)
    'ID': (lambda m, N: m <= N, lambda N: N),
    'OOD': (lambda m, N: m > N, lambda N: N + 1),
    'OOD N+1..2N': (lambda m, N: N < m <= 2 * N, lambda N: 2 * N),
    'OOD 2N+1..': (lambda m, N: m > 2 * N, lambda N: 2 * N + 1),
    '2N x 2N': (lambda m, N: m <= 2 * N, lambda N: 2 * N),
}


def addition_pooled(res, group):  # evaluation.addition_pooled: (accuracy or None, cells that ran, cells, why none)
    pools, needs = ADDITION_GROUPS[group]
    N = res['N']
    if res['digits'] < needs(N):
        return None, 0, 0, f"needs --digits >= {needs(N)}"
    cells = [c for a, row in res['grid'].items() for b, c in row.items() if pools(max(int(a), int(b)), N)]
    ran = [c['acc'] for c in cells if 'acc' in c]
    return (float(np.mean(ran)) if ran else None), len(ran), len(cells), (None if ran else cells[0]['na'])


def addition_rows(raws, table):  # evaluation.addition_tables, its summary
    out = []
    for _, data in raws:
        for r in data['rows']:
            res, row = r['addition'], {'checkpoint': r['ckpt'], 'pe': r['pe'], 'seed': str(r['seed']), 'scale': f"{r['scale']:g}"}
            row.update({'N': str(res['N']), 'grid': f"1..{res['digits']}"})
            for group in ADDITION_GROUPS:
                acc, ran, cells, why = addition_pooled(res, group)
                row[group] = f"n/a ({why})" if acc is None else f"{100 * acc:.1f}%" + (f" ({ran}/{cells} cells)" if ran < cells else '')
            out.append(row)
    return out


def addition_by_pe_rows(raws, table):  # evaluation.addition_by_pe: checkpoints of one (pe, scale, N) pooled
    groups = {}
    for _, data in raws:
        for r in data['rows']:
            groups.setdefault((r['pe'], r['scale'], r['addition']['N']), []).append(r)
    out = []
    for (pe, scale, N), g in groups.items():
        if len(g) < 2:
            continue
        pooled = {name: [addition_pooled(r['addition'], name) for r in g] for name in ('ID', 'OOD N+1..2N', '2N x 2N')}
        row = {'pe': pe, 'scale': f"{scale:g}", 'N': str(N), 'seeds': ' '.join(str(r['seed']) for r in g),
               'ID of each': ' / '.join('n/a' if p[0] is None else f"{100 * p[0]:.1f}" for p in pooled['ID'])}
        for name, ps in pooled.items():
            accs, part = [p[0] for p in ps], [f"{p[1]}/{p[2]} cells" for p in ps if p[1] < p[2]]
            row[name] = 'n/a' if None in accs else (f"{100 * np.mean(accs):.1f} ± {50 * (max(accs) - min(accs)):.1f}%"
                                                    + (f" ({part[0]})" if part else ''))
        out.append(row)
    return out


def answer_length_rows(raws, table):  # addition_tables' accuracy by answer length, a row per checkpoint (its folder)
    lengths = {n for _, data in raws for r in data['rows'] for n in r['addition']['by_answer_len']}
    out = []
    for _, data in raws:
        for r in data['rows']:
            by_len = r['addition']['by_answer_len']
            out.append({'checkpoint': os.path.basename(r['ckpt']),
                        **{n: f"{100 * by_len[n]['acc']:.1f}%" if n in by_len else 'n/a' for n in lengths}})
    return out


def recipes(raws):  # run_extend.sh's summary: (fine-tuned?, recipe) -> raw rows, named by the folder of their file
    out = {}
    for path, data in raws:
        folder = os.path.basename(os.path.dirname(path))
        for r in data['rows']:
            tuned = folder == 'fine-tuned'
            name = os.path.basename(r['ckpt']).rsplit('-s', 1)[0] if tuned else folder.removeprefix('eval-only-')
            out.setdefault((tuned, name), []).append(r)
    return out


def recipe_loss_rows(raws, table):
    groups = recipes(raws)
    evs = sorted({int(e) for rows in groups.values() for r in rows for e in r['cells']})
    out = []
    for (tuned, name), rows in groups.items():
        losses = {e: [r['cells'][str(e)].get('loss') for r in rows] for e in evs}
        row = {'recipe': name, 'fine-tuned': 'yes' if tuned else 'no', 'seeds': str(len(rows))}
        row.update({f"{e}x": f"{np.mean(v):.3f} ± {(max(v) - min(v)) / 2:.3f}" if v and None not in v else 'n/a'
                    for e, v in losses.items()})
        ratio = [b / a - 1 for a, b in zip(losses[evs[0]], losses[evs[-1]]) if a and b]
        row['16x vs 1x'] = f"{100 * np.mean(ratio):+.1f}%" if len(ratio) == len(rows) else 'n/a'
        out.append(row)
    return out


def recipe_passkey_rows(raws, table):
    out = []
    for (tuned, name), rows in recipes(raws).items():
        row = {'recipe': name, 'fine-tuned': 'yes' if tuned else 'no'}
        for ev in rows[0]['passkey']:
            accs = [c['acc'] for r in rows for c in r['passkey'][ev].values() if 'acc' in c]
            row[f"{ev}x"] = f"{100 * np.mean(accs):.0f}%" if accs else 'n/a'
        out.append(row)
    return out


# -----------------------------------------------------------------------------
# a table's kind, from its header: its first columns, what every other column must be, the columns that key a row

Kind = namedtuple('Kind', 'name first rest key rows clean')
multiple = re.compile(r'\d+x').fullmatch
KINDS = [
    Kind('loss', ['checkpoint', 'pe', 'scale'], multiple, ['checkpoint'], loss_rows, str),
    Kind('seed summary', ['pe', 'scale', 'seeds'], multiple, ['pe', 'scale'], seed_summary_rows, undecorate),
    Kind('seed summary', ['pe'], multiple, ['pe', 'scale'], seed_summary_rows, undecorate),
    Kind('passkey', ['checkpoint', 'pe', 'scale', 'passkey mix'], multiple, ['checkpoint'], passkey_rows, str),
    Kind('passkey by depth', ['depth'], re.compile(r'\d+x = \d+').fullmatch, ['depth'], passkey_depth_rows, str),
    Kind('addition', ['checkpoint', 'pe', 'seed', 'scale', 'N', 'grid'], ADDITION_GROUPS.__contains__, ['checkpoint'],
         addition_rows, str),
    Kind('addition by pe', ['pe', 'scale', 'N', 'seeds', 'ID of each'], ADDITION_GROUPS.__contains__, ['pe', 'scale', 'N'],
         addition_by_pe_rows, str),
    Kind('addition by answer length', ['checkpoint'], str.isdigit, ['checkpoint'], answer_length_rows, str),
    Kind('recipe loss', ['recipe', 'fine-tuned', 'seeds', 'trainable params', 'train s'],
         lambda c: multiple(c) or c == '16x vs 1x', ['recipe', 'fine-tuned'], recipe_loss_rows, str),
    Kind('recipe passkey', ['recipe', 'fine-tuned'], multiple, ['recipe', 'fine-tuned'], recipe_passkey_rows, str),
]


def kind_of(header):
    n = len(header)
    return next((k for k in KINDS if header[:len(k.first)] == k.first and n > len(k.first)
                 and all(k.rest(c) for c in header[len(k.first):])), None)


# -----------------------------------------------------------------------------
# the check: what it finds wrong, as (file:line, row, column, expected, found)

def load_raws(root, patterns):
    """[(path from the root, its json)]; a pattern outside results/ or matching nothing is a LookupError."""
    raws = []
    for pattern in patterns:
        paths = sorted(glob.glob(str(Path(root) / pattern)))
        if not pattern.startswith('results/') or not paths:
            raise LookupError(f"raw {pattern}: no such committed file under results/")
        raws += [(os.path.relpath(p, root), json.loads(Path(p).read_text())) for p in paths]
    return raws


def check_table(root, table):
    where, kind = f"{table.path}:{table.line}", kind_of(table.header)
    if kind is None:
        return [Problem(where, '-', '-', 'a known kind of header', ' '.join(table.header))]
    try:
        rows = kind.rows(load_raws(root, table.raw), table)
    except LookupError as e:  # KeyError included: a raw file of another kind
        return [Problem(where, '-', '-', 'its raw rows', f"{type(e).__name__}: {e}")]
    key_columns = [c for c in kind.key if c in table.header]
    by_key = {}  # the raw rows, by their key columns' text
    for row in rows:
        key = ' / '.join(row[c] for c in key_columns)
        if key in by_key:  # a header without the scale column, say, over raw files of two scales
            return [Problem(where, key, ' / '.join(key_columns), 'one raw row per key', 'several')]
        by_key[key] = row
    problems = []
    for line, cells in table.rows:
        found = dict(zip(table.header, cells))
        key = ' / '.join(found.get(c, '') for c in key_columns)
        want = by_key.pop(key, None)
        if want is None:
            problems.append(Problem(f"{table.path}:{line}", key, ' / '.join(key_columns), 'a row of the raw files', 'none'))
            continue
        if len(cells) != len(table.header):
            problems.append(Problem(f"{table.path}:{line}", key, '-', f"{len(table.header)} cells", f"{len(cells)}"))
        for column, cell in found.items():
            expected = want.get(column, '(a column the raw files do not give)')
            if column not in UNCHECKED_COLUMNS and kind.clean(cell) != expected:
                problems.append(Problem(f"{table.path}:{line}", key, column, expected, cell))
    problems += [Problem(where, key, '-', 'this raw row in the table', 'none') for key in by_key]
    return problems


def listed_as(table):  # its key in NOT_CHECKED
    return table.path, '| ' + ' | '.join(table.header) + ' |'


def unguarded(table):
    """A results table (its rows named by a checkpoint, pe, recipe or depth) with no raw comment nor a listed reason."""
    return table.raw is None and table.header[0] in RESULTS_FIRST_COLUMNS and listed_as(table) not in NOT_CHECKED


def check_file(root, path):
    """Every problem of one markdown file: tables that skip the guard, and cells that disagree with their raw file."""
    problems = []
    for table in tables_of(path, (Path(root) / path).read_text()):
        if unguarded(table):
            problems.append(Problem(f"{path}:{table.line}", '-', '-', 'a <!-- raw: ... --> line above it', 'none'))
        elif table.raw is not None:
            problems += check_table(root, table)
    return problems


# -----------------------------------------------------------------------------
# the repository's own tables

CHECKED = [t for path in MD_FILES for t in tables_of(path, (ROOT / path).read_text()) if t.raw is not None]


@pytest.mark.parametrize('table', CHECKED, ids=[f"{t.path}:{t.line}" for t in CHECKED])
def test_table_agrees_with_its_raw_files(table):
    problems = check_table(ROOT, table)
    assert not problems, '\n'.join(f"{p.where} row {p.row}, {p.column}: raw gives {p.expected!r}, the table {p.found!r}"
                                   for p in problems)


def test_no_results_table_skips_the_guard():
    tables = [t for path in MD_FILES for t in tables_of(path, (ROOT / path).read_text())]
    assert [f"{t.path}:{t.line}" for t in tables if unguarded(t)] == []
    assert set(NOT_CHECKED) <= {listed_as(t) for t in tables}, "NOT_CHECKED names a table that no longer exists"


# -----------------------------------------------------------------------------
# the guard fails where it should: the same check on an edited copy

def copy_results(tmp_path):
    """README.md and results/'s .md and .json files, laid out as in the repository (nothing else is read)."""
    shutil.copy(ROOT / 'README.md', tmp_path)
    shutil.copytree(ROOT / 'results', tmp_path / 'results', ignore=lambda folder, names: [
        n for n in names if not (os.path.isdir(os.path.join(folder, n)) or n.endswith(('.md', '.json')))])


def edit(path, old, new):
    """Replace the one occurrence of old; the line number (1-based) where it was."""
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    return text[:text.index(old)].count('\n') + 1


def test_a_drifted_cell_fails(tmp_path):
    copy_results(tmp_path)
    line = edit(tmp_path / 'results/README.md', '| out/results/expe-s1338 | expe | 1 | 1.7958 |',
                '| out/results/expe-s1338 | expe | 1 | 1.7959 |')  # one digit, the last place
    assert check_file(tmp_path, 'results/README.md') == [
        Problem(f"results/README.md:{line}", 'out/results/expe-s1338', '1x', '1.7958', '1.7959')]
    line = edit(tmp_path / 'results/cpu_summary.md', '| rope | 0.5 | 2 | 2.814 ± 0.011 † |', '| rope | 0.5 | 2 | 2.814 ± 0.012 † |')
    assert check_file(tmp_path, 'results/cpu_summary.md') == [
        Problem(f"results/cpu_summary.md:{line}", 'rope / 0.5', '1x', '2.814 ± 0.011', '2.814 ± 0.012 †')]


def test_a_drifted_raw_file_fails(tmp_path):
    copy_results(tmp_path)
    raw = tmp_path / 'results/cpu_main/eval.json'
    result = json.loads(raw.read_text())
    next(r for r in result['rows'] if r['ckpt'] == 'out/results/expe-s1337')['cells']['1']['loss'] += 0.01
    raw.write_text(json.dumps(result))
    found = {(p.row, p.column, p.expected, p.found) for p in check_file(tmp_path, 'results/README.md')}
    assert found == {('out/results/expe-s1337', '1x', '1.8141', '1.8041'),  # the per-checkpoint table
                     ('expe / 1', '1x', '1.805 ± 0.009', '1.800 ± 0.004')}  # and the seed summary of both files


def test_summarize_decorations_are_accepted(tmp_path):
    copy_results(tmp_path)
    text = (tmp_path / 'results/cpu_summary.md').read_text()
    assert '| **1.779 ± 0.004** |' in text and '| 2.201 ± 0.024 † |' in text  # xpos best at 1x; nope separated from it
    edit(tmp_path / 'results/cpu_summary.md', '| **1.779 ± 0.004** |', '| 1.779 ± 0.004 |')  # and plain cells pass too
    assert check_file(tmp_path, 'results/cpu_summary.md') == []


def test_a_table_cannot_skip_the_guard(tmp_path):
    copy_results(tmp_path)
    line = edit(tmp_path / 'README.md', '<!-- raw: results/cpu_main/eval.json -->\n| pe |', '| pe |')
    extra = edit(tmp_path / 'README.md', '| topic | page |', '<!-- raw: results/cpu_main/eval.json -->\n| topic | page |') + 1
    assert check_file(tmp_path, 'README.md') == [  # a results table without its raw line; a raw line on an unknown kind
        Problem(f"README.md:{line}", '-', '-', 'a <!-- raw: ... --> line above it', 'none'),
        Problem(f"README.md:{extra}", '-', '-', 'a known kind of header', 'topic page')]
