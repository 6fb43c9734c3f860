"""bench.py runs a few steps on CPU and prints the promised table."""
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ['--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--vocab_size=64', '--batch_size=2',
        '--warmup=1', '--repeats=2', '--device=cpu']


def bench(*args):
    p = subprocess.run([sys.executable, str(ROOT / 'bench.py'), *TINY, *args], cwd=tempfile.mkdtemp(), capture_output=True,
                       text=True, timeout=300)
    return p, [line.split(' | ') for line in p.stdout.splitlines() if line.startswith('| ') and '---' not in line]


def test_train_mode_table():
    p, rows = bench('--pes=expe,rope,tape', '--archs=gpt2,llama')
    assert p.returncode == 0, p.stderr
    assert 'device cpu, 1 thread(s)' in p.stdout  # one thread unless asked
    assert rows[0] == ['| arch', 'pe', 'ms/step', 'min - max', 'tokens/s', 'MFU', 'peak memory', 'x RoPE |']
    body = rows[1:]
    assert [(r[0].strip('| '), r[1]) for r in body] == [(a, pe) for a in ('gpt2', 'llama') for pe in ('expe', 'rope', 'tape')]
    spread = {}
    for r in body:
        ms, tok_s = float(r[2]), float(r[4].replace(',', ''))
        lo, hi = map(float, r[3].split(' - '))
        assert 0 < lo <= ms <= hi  # the median lies in the spread
        spread[r[0].strip('| '), r[1]] = lo, hi
        # tokens/s = batch x T / step time; the printed ms (0.1) and tokens/s (1) are rounded
        assert 2 * 16 / ((ms + 0.06) / 1000) - 0.5 <= tok_s <= 2 * 16 / ((ms - 0.06) / 1000) + 0.5
        assert r[5] == 'n/a' and r[6] == 'n/a'  # no MFU peak or CUDA memory on CPU
    assert [r[7].strip(' |') for r in body if r[1] == 'rope'] == ['1.00', '1.00']
    # the warning names exactly the rows whose spread overlaps RoPE's (rows within printing precision of the edge skipped)
    warning = [line for line in p.stdout.splitlines() if line.startswith('warning:')]
    for (arch, pe), (lo, hi) in spread.items():
        r_lo, r_hi = spread[arch, 'rope']
        if pe == 'rope' or min(abs(lo - r_hi), abs(hi - r_lo)) < 0.15:
            continue
        named = bool(warning) and f"{arch} {pe}" in warning[0]
        assert named == (lo <= r_hi and hi >= r_lo), (arch, pe, spread, warning)


def test_eval_mode_table():
    p, rows = bench('--mode=eval', '--evs=1,2', '--pes=expe,learned', '--threads=2')
    assert p.returncode == 0, p.stderr
    assert 'device cpu, 2 thread(s)' in p.stdout
    assert rows[0][2:] == ['1x = 16: ms (min - max), memory', '2x = 32: ms (min - max), memory |']
    expe, learned = rows[1], rows[2]
    for cell in expe[2:]:  # "median (min - max), memory"
        ms, lo, hi = map(float, cell.split(',')[0].replace('(', '').replace(')', '').replace(' - ', ' ').split())
        assert 0 < lo <= ms <= hi
    assert learned[3].strip(' |') == 'n/a'  # no position past block_size


def test_bad_pe():
    p, _ = bench('--pes=expe,bogus')
    assert p.returncode != 0 and "unknown pe 'bogus'" in p.stderr and 'Traceback' not in p.stderr
    p, _ = bench('--threads=-1')
    assert p.returncode != 0 and 'threads=-1' in p.stderr and 'Traceback' not in p.stderr


def test_every_pe_knob_reaches_the_pes_that_own_it():
    """bench.py takes every GPTConfig field a pe owns and gives each pe only its own: rope gets the NTK knobs while
    alibi, in the same table, would refuse them; a knob reaches its pe's own checks; a knob no benchmarked pe owns
    changes no row and is refused."""
    p, rows = bench('--pes=rope,alibi', '--rope_scaling=ntk', '--rope_factor=2')
    assert p.returncode == 0, p.stderr
    assert [r[1] for r in rows[1:]] == ['rope', 'alibi']
    p, _ = bench('--pes=rope', '--rope_scaling=yarn')  # rope's own check sees the knob: YaRN needs rope_original
    assert p.returncode != 0 and 'needs rope_original' in p.stderr and 'Traceback' not in p.stderr
    p, _ = bench('--pes=expe', '--rope_base=500')
    assert p.returncode != 0 and 'rope_base=500.0 belongs to pe=rope/' in p.stderr and 'Traceback' not in p.stderr
