import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # import model, prepare, ... from the repo root
# GPT-2's BPE offline: the shared tiktoken cache beside the checkout (CI and dev machines)
_cache = ROOT.parent / 'shared' / 'tiktoken'
if _cache.is_dir():
    os.environ.setdefault('TIKTOKEN_CACHE_DIR', str(_cache))
