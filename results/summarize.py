"""
Seed-averaged tables (mean ± half the min-max range) from eval.py's eval.json files, and one
per-position plot with a line per pe (seeds averaged) from the first file's per_position.csv.
In every column (scale by scale) the best row is bold, and a row whose whole seed range lies above the
best row's range is marked †: only those are separated from the best; the others tie with it.

$ python results/summarize.py --files results/cpu_main/eval.json results/cpu_scaled/eval.json > results/cpu_summary.md
"""
import csv
import json
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from configurator import configure  # noqa: E402
from evaluation import plot_curves, write_curves_csv  # noqa: E402

files = []                # eval.json files of eval.py, in the order their rows should appear
configure(globals())
paths = files
groups = defaultdict(list)  # (pe, scale) -> rows, in order of appearance
evs, strides = None, set()
for path in paths:
    result = json.load(open(path))
    evs = evs or result['ev']
    strides.add(result.get('stride', 0))
    for row in result['rows']:
        groups[(row['pe'], row['scale'])].append(row)



def losses_of(rows, ev):
    """Every seed's loss in this column, or None if a seed has none (n/a)."""
    losses = [r['cells'][str(ev)].get('loss') for r in rows]
    return None if any(v is None for v in losses) else losses


def best_of(groups, scale, ev):
    """The row of this scale with the lowest mean loss in column ev: its (min, max) over seeds, or None."""
    ranges = [(np.mean(v), min(v), max(v)) for (_, s), rows in groups.items() if s == scale
              for v in [losses_of(rows, ev)] if v]
    return min(ranges)[1:] if ranges else None


print(f"<!-- raw: {' '.join(paths)} -->")  # the raw files, for tests/test_results_tables.py
print('| pe | scale | seeds | ' + ' | '.join(f'{ev}x' for ev in evs) + ' |')
print('|---|---|---|' + '---|' * len(evs))
for (pe, scale), rows in groups.items():
    cells = []
    for ev in evs:
        losses, best = losses_of(rows, ev), best_of(groups, scale, ev)
        if losses is None:
            cells.append('n/a')
            continue
        cell = f"{np.mean(losses):.3f} ± {(max(losses) - min(losses)) / 2:.3f}"
        if (min(losses), max(losses)) == best:
            cell = f"**{cell}**"
        elif len(rows) > 1 and min(losses) > best[1]:  # its best seed is worse than the best row's worst seed
            cell += ' †'
        cells.append(cell)
    print(f"| {pe} | {scale:g} | {len(rows)} | " + ' | '.join(cells) + ' |')
tokens = {c['tokens'] for rows in groups.values() for r in rows for c in r['cells'].values() if 'tokens' in c}
protocol = ("eval.py's protocol" if strides == {0} else
            f"eval.py --stride {' / '.join(map(str, sorted(strides)))}: sliding windows, each scoring its last stride tokens")
print(f"\nMean ± half the range over seeds; every cell of every seed averages {', '.join(f'{t:,}' for t in sorted(tokens))} "
      f"val target tokens ({protocol}). Per column and scale: **best** mean; † the row's seed range lies "
      "wholly above the best row's (separated from it); an unmarked row ties with the best within the seeds.")

# one line per pe at the longest length, seeds averaged (not for the sliding protocol: it scores a window's end only)
first = json.load(open(paths[0]))
if not os.path.exists(os.path.join(os.path.dirname(paths[0]), 'per_position.csv')):
    sys.exit(0)
with open(os.path.join(os.path.dirname(paths[0]), 'per_position.csv')) as f:
    table = list(csv.reader(f))
header, body = table[0][1:], table[1:]
by_pe = defaultdict(list)
for j, name in enumerate(header):
    row = next(r for r in first['rows'] if r['ckpt'] == name)
    by_pe[row['pe']].append(np.array([float(b[j + 1]) for b in body if b[j + 1]]))
T = first['rows'][0]['block_size']
curves = {pe: (np.mean(cs, axis=0), T, pe) for pe, cs in by_pe.items()}
out = os.path.join(os.path.dirname(os.path.dirname(paths[0])), 'cpu_per_position')
os.makedirs(out, exist_ok=True)
write_curves_csv(curves, os.path.join(out, 'per_position.csv'))
plot_curves(curves, max(first['ev']), first['rows'][0]['scale'], os.path.join(out, 'per_position.png'))
print(f"\nPer-position plot (seeds averaged): {out}/per_position.png", file=sys.stderr)
