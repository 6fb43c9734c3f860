"""
Poor man's configurator, as in nanoGPT, but strict. train.py and bench.py call
configure(globals()) right after their config globals:

    python train.py config/demo_cpu.py --pe=rope --batch_size=32

A bare argument is a config file: plain Python whose top-level names override the globals.
--key=value overrides one global. Every key must name an existing global and keep its type
(an int is accepted for a float), so a typo is an error instead of a silently ignored setting.
"""
import os
import sys
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


def configure(g, argv=None):
    """Apply config files and --key=value overrides to the dict g; returns the config dict."""
    keys = [k for k, v in g.items() if not k.startswith('_') and type(v) in (int, float, bool, str)]
    settable = {k: g[k] for k in keys}
    for arg in sys.argv[1:] if argv is None else argv:
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                sys.exit(f"error: config file {arg} not found (see config/ for the shipped ones)")
            ns = {}
            exec(open(arg).read(), ns)
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
