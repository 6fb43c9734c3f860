"""
Poor man's configurator, as in nanoGPT, but strict. train.py and bench.py call
configure(globals()) right after their config globals:

    python train.py config/demo_cpu.py --pe=rope --batch_size=32

A bare argument is a config file: plain Python whose top-level names override the globals.
--key=value overrides one global. Every key must name an existing global and keep its type
(an int is accepted for a float), so a typo is an error instead of a silently ignored setting.
--help lists every key with its default and the comment on its line in the script (or model.py).
"""
import os
import re
import sys
import traceback
from ast import literal_eval


def _check(g, key, value, where):
    if key not in g:
        sys.exit(f"error: unknown config key '{key}' in {where} (the keys are the globals at the top of the script)")
    want = type(g[key])
    if want is float and type(value) is int:
        value = float(value)
    if type(value) is not want:
        sys.exit(f"error: {key} must be of type {want.__name__}, got {value!r} in {where}")
    return value


def usage(g, keys):
    """The script's docstring, then every key with its default and the comment on its line."""
    script = g.get('__file__', '')
    comments = {}  # a key the script assigns has its comment there; the rest are model.py's GPTConfig fields
    for path in (script, os.path.join(os.path.dirname(os.path.abspath(script)), 'model.py')):
        if os.path.isfile(path):
            for line in open(path, encoding='utf-8'):
                m = re.match(r"\s*(\w+)\s*(?::[^=]*)?=([^#]*#)?\s*(.*)", line)
                if m and m.group(1) in keys:
                    comments.setdefault(m.group(1), m.group(3).strip() if m.group(2) else '')
    lines = [(g.get('__doc__') or '').strip(), '',
             f"Settings: python {os.path.basename(script)} [CONFIG_FILE.py ...] [--key=value ...]  (default, then why)"]
    width = max(len(f"--{k}={g[k]!r}") for k in keys)
    lines += [f"  {f'--{k}={g[k]!r}':<{width}}  {comments.get(k, '')}".rstrip() for k in keys]
    return '\n'.join(lines)


def exec_config(path, ns):
    """Run a config file; a mistake in it is one line naming the file and the line."""
    try:
        with open(path, encoding='utf-8') as f:
            code = compile(f.read(), path, 'exec')
        exec(code, ns)
    except SyntaxError as e:
        sys.exit(f"error: config file {path}, line {e.lineno}: {e.msg}")
    except Exception as e:  # a NameError, a file we cannot read, ...
        line = next((f.lineno for f in reversed(traceback.extract_tb(e.__traceback__)) if f.filename == path), None)
        where = f", line {line}" if line else ''
        sys.exit(f"error: config file {path}{where}: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}")


def configure(g, argv=None):
    """Apply config files and --key=value overrides to the dict g; returns the config dict."""
    keys = [k for k, v in g.items() if not k.startswith('_') and type(v) in (int, float, bool, str)]
    settable = {k: g[k] for k in keys}
    argv = sys.argv[1:] if argv is None else argv
    if '--help' in argv or '-h' in argv:
        print(usage(g, keys))
        sys.exit(0)
    for arg in argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                sys.exit(f"error: config file {arg} not found (see config/ for the shipped ones)")
            ns = {}
            exec_config(arg, ns)
            for k, v in ns.items():
                if not k.startswith('_') and type(v) in (int, float, bool, str):
                    settable[k] = g[k] = _check(settable, k, v, arg)
        elif '=' not in arg:
            sys.exit(f"error: '{arg}' needs a value: write {arg}=VALUE")
        else:
            key, val = arg[2:].split('=', 1)
            try:
                value = literal_eval(val)
            except (SyntaxError, ValueError):
                value = val  # a bare string such as --pe=rope
            if type(settable.get(key)) is str:
                value = val  # a string key keeps the text as typed, e.g. --evs=1,2
            settable[key] = g[key] = _check(settable, key, value, f"--{key}")
    return {k: g[k] for k in keys}
