import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import model, prepare, ... from the repo root
# GPT-2's BPE offline: the shared tiktoken cache beside the checkout (CI and dev machines)
_cache = ROOT.parent / 'shared' / 'tiktoken'
if _cache.is_dir():
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(_cache))


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Tiny matmuls: one thread is several times faster than two on a shared 2-core box."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tree(path):
    """name -> (size, mtime) of every file under path: what a test must leave as it found it."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob('*') if p.is_file()} if path.is_dir() else {}


@pytest.fixture(autouse=True, scope='session')
def repository_out_and_data_untouched():
    """No test writes the repository's own out/ or data/ (a user's runs live there): every script in the
    suite runs in a scratch folder with explicit paths. Checked over the whole session."""
    before = {d: _tree(ROOT / d) for d in ('out', 'data')}
    yield
    for d, files in before.items():
        assert _tree(ROOT / d) == files, f"a test changed the repository's {d}/"
