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
