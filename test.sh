#!/usr/bin/env bash
# The whole test suite, on a machine with only python3: sets up what is missing (setup.sh: a local .venv with
# the test requirements), then runs pytest. Arguments go to pytest (bash test.sh -x tests/test_model.py).
# CPU only: the CUDA tests skip without a GPU.
set -euo pipefail
cd "$(dirname "$0")"
source ./setup.sh test
exec "$PY" -m pytest -q "${@:-tests}"
