"""Every command in README.md's ```bash blocks runs, in order, on what the two set-up commands produce.

The documented override, TINY: each command gets its script's tiny settings appended (later settings win),
so training runs 20 steps, evaluation one window per length and a few rows per task. `bash test.sh` is
skipped (it is what runs this). `PYTHON` points the set-up at this interpreter, so nothing is installed.

In the suite: in a scratch copy of the repository (its tracked files), with `.venv/bin` standing for this
interpreter. In CI, before the suite runs a second time: `python tests/test_readme.py` runs them in the
checkout itself, so that the suite shows it does not depend on what a user ran before it.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ['--max_iters=20', '--eval_interval=10', '--eval_iters=2', '--log_interval=10']
TINY = {
    'demo.sh': TRAIN,
    'train.py': TRAIN,
    'eval.py': ['--windows', '1'],
    'eval_tasks.py': ['--limit', '5', '--keys', '2', '--problems', '4'],
    'sample.py': ['--max_new_tokens', '20', '--num_samples', '1'],
    'bench.py': ['--repeats=2', '--warmup=1'],
    'harness.py': ['--limit', '5'],
}


def readme_blocks(path=ROOT / 'README.md'):
    """The commands of each ```bash block: continuation lines joined, comments dropped, `bash test.sh` left out."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)
    out = []
    for block in blocks:
        lines = []
        for line in block.replace('\\\n', ' ').splitlines():
            line = re.sub(r"(^|\s)#.*$", '', line).strip()
            if line and line != 'bash test.sh':
                lines.append(line)
        out.append(lines)
    return out


def tiny(command):
    """The command with its script's TINY settings appended."""
    words = command.split()
    script = next((w for w in words if w in TINY), None)
    return command + ''.join(' ' + a for a in TINY[script]) if script else command


def run_readme(cwd, python=sys.executable):
    """Run every block in cwd, each as one bash script that stops at the first failing command."""
    env = dict(os.environ, PYTHON=python, OMP_NUM_THREADS='1')
    for lines in readme_blocks():
        script = 'set -euo pipefail\n' + '\n'.join(f"echo '+ {c}'\n{tiny(c)}" for c in map(str.strip, lines))
        p = subprocess.run(['bash', '-c', script], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
        assert p.returncode == 0, f"README command failed in {cwd}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"


def scratch_copy(dest):
    """The repository's tracked files (a fresh clone's), and .venv/bin/{activate,python} for this interpreter."""
    files = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    bin_dir = dest / '.venv' / 'bin'
    bin_dir.mkdir(parents=True)
    (bin_dir / 'python').write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')  # a venv's python finds its packages
    (bin_dir / 'python').chmod(0o755)                                                  # only when called by its own path
    (bin_dir / 'activate').write_text(f'export PATH="{bin_dir}:$PATH"\n')


def test_every_readme_command_runs(tmp_path):
    blocks = readme_blocks()
    assert blocks[0] == ['bash demo.sh'] and sum(map(len, blocks)) >= 6  # the quick start, then the examples
    scratch_copy(tmp_path)
    run_readme(tmp_path)
    assert (tmp_path / 'out' / 'demo_eval' / 'eval.md').exists() and (tmp_path / 'out' / 'docs_eval' / 'eval.md').exists()


def test_tiny_settings_reach_the_commands():
    assert tiny('python train.py config/demo_cpu.py --pe=rope').endswith('--pe=rope --max_iters=20 --eval_interval=10 '
                                                                          '--eval_iters=2 --log_interval=10')
    assert tiny('source .venv/bin/activate') == 'source .venv/bin/activate'


if __name__ == '__main__':  # CI: the README's commands in this checkout, before the suite runs again
    run_readme(ROOT, os.environ.get('PYTHON', sys.executable))
    print('every README command ran in', ROOT)
