"""
The command-line grammar of every script: nanoGPT's configurator, made strict.

    python train.py config/demo_cpu.py --pe=alibi --out_dir=out/demo_alibi --batch_size 32
    python eval.py --ckpt out/demo_expe out/demo_rope --ev 4 --scale=0.5

A script's settings are the globals at its top (not _private names or CONSTANTS). A bare argument is
a config file: plain Python whose top-level names override them. `--key value` and `--key=value`
override one setting; a list setting takes every value up to the next `--key`; a bool setting alone
(`--overwrite`) means True. Keys are spelled with underscores (`--data_dir`; `--data-dir` is read as
the same key). Every key must name a setting and keep its type (an int is accepted for a float, a
whole float such as 7e8 for an int; a None default takes a number), so a typo is an error, never a
silently ignored setting. `--help` lists every setting with its default and the comment on its line.

Scripts call configure(globals()) right after their settings. Importing this module is cheap.
"""
import os
import re
import signal
import sys
import traceback


RANK = 0  # train.py under torchrun sets its process's rank here: only rank 0 says why a run stops


def die(msg):
    """A user error: one line on stderr, exit status 1, no traceback. In a DDP run only rank 0 says it: every rank
    meets the same checks, and the others leave with the same exit status (train.py prefixes what only one meets)."""
    if RANK:
        sys.exit(1)
    sys.exit(f"error: {msg}")


# -----------------------------------------------------------------------------
# settings: config files, then --key value / --key=value

def _settings(g):
    """The settings of a script: its globals of plain types (or None), but _private names and CONSTANTS."""
    return [k for k, v in g.items() if not k.startswith('_') and not k.isupper()
            and (v is None or type(v) in (int, float, bool, str, list))]


def _item_type(default):
    """The type of a list setting's items: float if any default item is, else the first item's, else str."""
    if any(type(v) is float for v in default):
        return float
    return type(default[0]) if default else str


def parse_value(key, text, default, where):
    """The value of `text` for a setting whose default is `default` (a str, int, float, bool or None)."""
    want = type(default)
    try:
        if default is None or want is float:  # a None default takes a number
            return float(text)
        if want is bool:
            return {'true': True, 'false': False, '1': True, '0': False}[text.lower()]
        if want is int:
            f = float(text)
            if f != int(f):
                raise ValueError
            return int(text) if re.fullmatch(r'[+-]?\d+', text.strip()) else int(f)
    except (ValueError, KeyError, OverflowError):
        name = 'a number' if default is None else want.__name__
        sys.exit(f"error: {key} must be of type {name}, got {text!r} in {where}")
    return text  # a str keeps the text as typed, e.g. --trainable=pe,wte


def _check(key, value, default, where):
    """A value from a config file: it must keep the setting's type (an int is accepted for a float)."""
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            value = [value]
        item = _item_type(default)
        return [_check(key, v, item(), where) for v in value]
    if (default is None or type(default) is float) and type(value) is int:
        value = float(value)
    if default is None and type(value) is float or type(value) is type(default):
        return value
    name = 'a number' if default is None else type(default).__name__
    sys.exit(f"error: {key} must be of type {name}, got {value!r} in {where}")


def usage(g, keys):
    """The script's docstring, then every setting with its default and the comment on its line."""
    script = g.get('__file__', '')
    comments = {}  # a setting the script assigns has its comment there; train.py's model keys in model.py
    for path in (script, os.path.join(os.path.dirname(os.path.abspath(script)), 'model.py')):
        if os.path.isfile(path):
            for line in open(path, encoding='utf-8'):
                m = re.match(r"\s*(\w+)\s*(?::[^=]*)?=([^#]*#)?\s*(.*)", line)
                if m and m.group(1) in keys:
                    comments.setdefault(m.group(1), m.group(3).strip() if m.group(2) else '')
    show = lambda v: ' '.join(map(str, v)) if isinstance(v, list) else repr(v)
    lines = [(g.get('__doc__') or '').strip(), '',
             f"Settings: python {os.path.basename(script)} [CONFIG_FILE.py ...] [--key value | --key=value ...]"
             "  (default, then what it does)"]
    width = max(len(f"--{k}={show(g[k])}") for k in keys)
    lines += [f"  {f'--{k}={show(g[k])}':<{width}}  {comments.get(k, '')}".rstrip() for k in keys]
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
    """Apply config files and --key value overrides to the settings in g (a script's globals, changed in
    place); returns {key: value} of every setting. Exits with one line on a mistake, and after --help."""
    keys = _settings(g)
    defaults = {k: g[k] for k in keys}
    argv = sys.argv[1:] if argv is None else argv
    if '--help' in argv or '-h' in argv:
        print(usage(g, keys))
        sys.exit(0)
    i = 0
    while i < len(argv):
        arg, i = argv[i], i + 1
        if not arg.startswith('--'):
            if not os.path.isfile(arg):
                sys.exit(f"error: config file {arg} not found (a bare argument is a config file; see config/ for the "
                         "shipped ones, and --help for the settings)")
            ns = {}
            exec_config(arg, ns)
            for k, v in ns.items():
                if not k.startswith('_') and (v is None or type(v) in (int, float, bool, str, list, tuple)):
                    if k not in defaults:
                        sys.exit(f"error: unknown config key '{k}' in {arg} (the keys are the settings at the top of the script)")
                    g[k] = _check(k, v, defaults[k], arg)
            continue
        key, eq, text = arg[2:].partition('=')
        key = key.replace('-', '_')  # --data-dir is --data_dir
        if key not in defaults:
            sys.exit(f"error: unknown config key '{key}' in {arg} (python {os.path.basename(g.get('__file__', ''))} "
                     "--help lists them)")
        default, where = defaults[key], f"--{key}"
        values = [text] if eq else []
        if isinstance(default, list):  # every value up to the next --key
            while i < len(argv) and not argv[i].startswith('--'):
                values.append(argv[i])
                i += 1
        elif not eq and type(default) is bool:  # --overwrite alone means True
            given = i < len(argv) and argv[i].lower() in ('true', 'false')
            values, i = ([argv[i]], i + 1) if given else (['True'], i)
        elif not eq and i < len(argv) and not argv[i].startswith('--'):
            values, i = [argv[i]], i + 1
        if not values:
            sys.exit(f"error: '{arg}' needs a value: write {arg}=VALUE or {arg} VALUE")
        if isinstance(default, list):
            item = _item_type(default)
            g[key] = [parse_value(key, v, item(), where) for v in values]
        else:
            g[key] = parse_value(key, values[0], default, where)
    return {k: g[k] for k in keys}


def exit_on_ctrl_c():
    """Ctrl-C ends a script with one line, not a traceback (train.py stops between steps instead)."""
    signal.signal(signal.SIGINT, lambda *_: die("interrupted (Ctrl-C)"))
