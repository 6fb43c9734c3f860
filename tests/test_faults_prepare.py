"""Faults a real run of prepare.py meets (issue 24): a full disk or a read-only folder, absurd sizes, a file that
cannot be read, a folder named like prepare.py's temporary one, two corpora with the same default out_dir. Each
ends in ONE 'error: ' line that names the problem and the fix, and loses nothing the user had."""
import errno
import json
import os
import shutil

import numpy as np
import pytest

import data
from test_bad_input import changed, one_line_error, run, snapshot
from test_prepare import prepare_main

BYTE = ['--tokenizer', 'byte', '--num_proc', '1']


def corpus(folder, n=30, words=('the cat sat on a mat', 'lorem ipsum dolor sit amet')):
    """n .txt files (one document each) of a few hundred bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f'{i:03d}.txt').write_text(f"{words[i % len(words)]} {i}\n" * 20)
    return folder


# -----------------------------------------------------------------------------
# 1. a full disk, a read-only folder: one line, the temporary folder gone, the earlier output as it was

def test_full_disk_keeps_the_earlier_output(tmp_path):
    work = tmp_path / 'work'
    ds = corpus(tmp_path / 'ds')
    work.mkdir()
    prepare_main(['--dataset', ds, *BYTE, '--out_dir', work / 'o'])  # the earlier output
    before = snapshot(work)
    # other settings, so it rebuilds; no file may grow past 2000 bytes: the first shard fills the disk
    r = run(['prepare.py', '--dataset', ds, *BYTE, '--out_dir', 'o', '--max_tokens', 5000], work, fsize=2000)
    one_line_error(r, 'could not write o', 'o is as it was', 'free some space')
    assert not changed(before, snapshot(work)) and not list(work.glob('o.tmp-*'))


def test_read_only_output_folder(tmp_path):
    """A folder this user may not write in (chmod; as root, chmod does not stop a write, so it skips)."""
    ds, ro = corpus(tmp_path / 'ds'), tmp_path / 'ro'
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip('running as root: a chmod does not make a folder read-only')
        r = run(['prepare.py', '--dataset', ds, *BYTE, '--out_dir', ro / 'o'], tmp_path / 'work')
        one_line_error(r, str(ro / 'o.tmp-'), 'Permission denied', 'a folder you can write to')
        assert not os.listdir(ro)
    finally:
        ro.chmod(0o755)


def test_read_only_when_swapping_in(tmp_path, monkeypatch):
    """The earlier output cannot be removed (its folder went read-only): one line that says so, not 'free some
    space'; the earlier output stays and the new shards, in the temporary folder, go with it."""
    ds, out = corpus(tmp_path / 'ds'), tmp_path / 'o'
    prepare_main(['--dataset', ds, *BYTE, '--out_dir', out])
    before = snapshot(tmp_path)
    rmtree = shutil.rmtree

    def read_only(path, *args, **kwargs):
        if os.path.abspath(path) == str(out):
            raise PermissionError(errno.EACCES, 'Permission denied', str(out / 'meta.json'))
        return rmtree(path, *args, **kwargs)
    monkeypatch.setattr(shutil, 'rmtree', read_only)
    with pytest.raises(SystemExit, match=r"^error: could not write .*/o \(Permission denied\): .* is as it was; make its "
                                         r"folder writable or choose another --out_dir$"):
        prepare_main(['--dataset', ds, *BYTE, '--out_dir', out, '--max_tokens', 5000])
    assert not changed(before, snapshot(tmp_path)) and not list(tmp_path.glob('o.tmp-*'))


def test_cannot_create_the_temporary_folder(tmp_path, monkeypatch):
    """os.makedirs refused (a read-only place): the line names the folder and the fix, and nothing is written."""
    ds = corpus(tmp_path / 'ds')

    def refuse(path, *args, **kwargs):
        raise PermissionError(errno.EROFS, 'Read-only file system', path)
    monkeypatch.setattr(os, 'makedirs', refuse)
    with pytest.raises(SystemExit, match=r"^error: cannot create .*/o\.tmp-\d+ \(Read-only file system\): choose an "
                                         r"--out_dir in a folder you can write to$"):
        prepare_main(['--dataset', ds, *BYTE, '--out_dir', tmp_path / 'o'])
    assert sorted(os.listdir(tmp_path)) == ['ds']


def test_unreadable_output_folder(tmp_path, monkeypatch):
    """An out_dir this user may not list (chmod 000 by someone else): one line, not a traceback."""
    ds, out = corpus(tmp_path / 'ds'), tmp_path / 'o'
    out.mkdir()
    listdir = os.listdir

    def refuse(path='.'):
        if os.path.abspath(path) == str(out):
            raise PermissionError(errno.EACCES, 'Permission denied', str(path))
        return listdir(path)
    monkeypatch.setattr(os, 'listdir', refuse)
    with pytest.raises(SystemExit, match=r"^error: cannot read .*/o \(Permission denied\): choose an --out_dir you can write to$"):
        prepare_main(['--dataset', ds, *BYTE, '--out_dir', out])


# -----------------------------------------------------------------------------
# 2. absurd sizes: refused up front, or one line when memory runs out; a meta.json with an absurd vocabulary

@pytest.mark.parametrize('args, words', [
    (['--shard_tokens', '1e13'], ['--shard_tokens 10,000,000,000,000 is too large', 'at most 1,000,000,000 tokens']),
    (['--shard_tokens', '1000000001'], ['--shard_tokens 1,000,000,001 is too large', 'lower it']),
    (['--val_tokens', '1e12'], ['--val_tokens 1,000,000,000,000 is too large']),
    (['--num_proc', '1000000'], ['--num_proc 1000000 is too many', 'at most 256']),
])
def test_absurd_sizes_refused_up_front(tmp_path, args, words):
    r = run(['prepare.py', '--dataset', corpus(tmp_path / 'ds', n=3), '--tokenizer', 'byte', '--out_dir', 'o', *args],
            tmp_path / 'work')
    one_line_error(r, *words)
    assert not os.listdir(tmp_path / 'work')


def test_out_of_memory_is_one_line(tmp_path, monkeypatch):
    """A shard buffer that cannot be allocated (within the bound, on a small machine): one line naming the setting."""
    empty = np.empty

    def no_memory(shape, *args, **kwargs):
        if np.prod(shape) >= 10**6:
            raise MemoryError
        return empty(shape, *args, **kwargs)
    monkeypatch.setattr(np, 'empty', no_memory)
    with pytest.raises(SystemExit, match=r"^error: out of memory: lower --shard_tokens \(100,000,000 tokens .*is as it was$"):
        prepare_main(['--dataset', corpus(tmp_path / 'ds', n=3), *BYTE, '--out_dir', tmp_path / 'o'])
    assert sorted(os.listdir(tmp_path)) == ['ds']


@pytest.mark.parametrize('change, words', [
    ({'vocab_size': 10**12}, ['vocab_size must be an integer from 1 to 65,536 (its dtype is uint16)', '1000000000000']),
    ({'vocab_size': 10**12, 'dtype': 'uint32'}, ['vocab_size must be an integer from 1 to 16,777,216']),
    ({'vocab_size': 70000}, ['(its dtype is uint16)', '70000']),
    ({'vocab_size': -5}, ['vocab_size must be']),
    ({'vocab_size': 257.0}, ['vocab_size must be', '257.0']),
    ({'vocab_size': '257'}, ['vocab_size must be', "'257'"]),
    ({'vocab_size': True}, ['vocab_size must be', 'True']),
    ({'dtype': 'int8'}, ['dtype must be uint16 or uint32', "'int8'"]),
])
def test_meta_with_an_absurd_vocabulary(tmp_path, change, words):
    """load_meta refuses it, naming the file; train.py stops with one line instead of building a huge model."""
    out = tmp_path / 'd'
    prepare_main(['--dataset', corpus(tmp_path / 'ds'), *BYTE, '--out_dir', out, '--val_tokens', 2000])
    meta = json.loads((out / 'meta.json').read_text())
    (out / 'meta.json').write_text(json.dumps({**meta, **change}))
    with pytest.raises(ValueError) as e:
        data.load_meta(str(out))
    assert str(out / 'meta.json') in str(e.value) and 're-run prepare.py' in str(e.value)
    for w in words:
        assert w in str(e.value)
    if change.get('vocab_size') == 10**12 and 'dtype' in change:
        r = run(['train.py', '--n_layer=1', '--n_head=2', '--n_embd=32', '--block_size=16', '--batch_size=2',
                 '--device=cpu', '--compile=False', '--max_iters=1', f'--data_dir={out}', '--out_dir=run'], tmp_path / 'work')
        one_line_error(r, str(out / 'meta.json'), 'vocab_size')
        assert not (tmp_path / 'work' / 'run').exists()


# -----------------------------------------------------------------------------
# 3. a file that cannot be read: the line names it (and the line of a .jsonl), and the fix

def bad_txt(ds):
    (ds / 'b.txt').write_bytes(b'caf\xe9 au lait')

def bad_jsonl(ds):
    (ds / 'b.jsonl').write_text('{"text": "fine"}\n{"text": oops}\n{"text": "fine"}\n')

def bad_json(ds):
    (ds / 'b.json').write_text('[{"text": "fine"}, {"text": ')

def bad_parquet(ds):
    (ds / 'b.parquet').write_bytes(b'PAR1 this is no parquet file')

@pytest.mark.parametrize('make, words', [
    (bad_txt, ['b.txt', "'utf-8' codec can't decode byte 0xe9 in position 3", 'save it as UTF-8']),
    (bad_jsonl, ['b.jsonl', 'line 2: JSON parse error', 'fix it, or move it out of the dataset']),
    (bad_json, ['b.json', 'fix it, or move it out of the dataset']),
    (bad_parquet, ['b.parquet', 'Parquet magic bytes not found', 'fix it, or move it out of the dataset']),
])
def test_unreadable_file_is_named(tmp_path, make, words):
    ds = corpus(tmp_path / 'ds', n=2)  # good files of another name before it
    (ds / 'a.jsonl').write_text('{"text": "a good row"}\n')
    make(ds)
    r = run(['prepare.py', '--dataset', ds, *BYTE, '--out_dir', 'o'], tmp_path / 'work')
    line = one_line_error(r, f'cannot read {ds / words[0]}: ', *words[1:])
    assert 'row 1' not in line  # the reader's row counts from its block, not from the file
    assert not os.listdir(tmp_path / 'work')


def test_row_of_a_document_that_is_not_text_is_named(tmp_path):
    ds = corpus(tmp_path / 'ds', n=2)
    (ds / 'b.jsonl').write_text('{"text": "x"}\n{"text": 5}\n')
    with pytest.raises(SystemExit, match=rf"^error: {ds / 'b.jsonl'}: document 2 has a 'text' that is int, not a string"):
        prepare_main(['--dataset', ds, *BYTE, '--out_dir', tmp_path / 'o'])


# -----------------------------------------------------------------------------
# 4. only a folder that prepare.py marked as its own temporary one is removed as a leftover

def test_a_users_tmp_named_folder_is_kept(tmp_path, capsys):
    ds, out = corpus(tmp_path / 'ds'), tmp_path / 'o'
    prepare_main(['--dataset', ds, *BYTE, '--out_dir', out])
    mine = tmp_path / 'o.tmp-20240101'  # the user's copy of an earlier output: meta.json and shards, as prepare.py writes
    shutil.copytree(out, mine)
    forged = tmp_path / 'o.tmp-999999997'  # a mark, but for another pid
    shutil.copytree(out, forged)
    (forged / data.TMP_MARK).write_text('12345')
    before = snapshot(mine, forged)
    prepare_main(['--dataset', ds, *BYTE, '--out_dir', out, '--max_tokens', 5000])
    assert not changed(before, snapshot(mine, forged)) and 'removed' not in capsys.readouterr().out


def test_own_temporary_folder_is_marked_and_the_mark_never_reaches_the_output(tmp_path, monkeypatch, capsys):
    ds, out = corpus(tmp_path / 'ds'), tmp_path / 'o'
    build, seen = data.build_shards, []

    def marked_build(s, tmp_dir):
        seen.append((os.path.basename(tmp_dir), (tmp_path / os.path.basename(tmp_dir) / data.TMP_MARK).read_text()))
        return build(s, tmp_dir)
    monkeypatch.setattr(data, 'build_shards', marked_build)
    prepare_main(['--dataset', ds, *BYTE, '--out_dir', out])
    assert seen == [(f'o.tmp-{os.getpid()}', str(os.getpid()))]
    assert data.TMP_MARK not in os.listdir(out)
    # a killed run's marked folder is removed, its pid gone
    dead = tmp_path / 'o.tmp-999999996'
    shutil.copytree(out, dead)
    (dead / data.TMP_MARK).write_text('999999996')
    prepare_main(['--dataset', ds, *BYTE, '--out_dir', out])
    assert not dead.exists() and 'removed' in capsys.readouterr().out


# -----------------------------------------------------------------------------
# 5. another corpus never silently replaces the one in out_dir

def test_another_source_with_the_same_out_dir_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    a = corpus(tmp_path / 'a' / 'corpus')
    b = corpus(tmp_path / 'b' / 'corpus', words=('a different corpus altogether',))
    out = tmp_path / 'data' / 'corpus_byte'  # the default out_dir of both
    prepare_main(['--dataset', 'a/corpus', *BYTE])
    assert data.load_meta(str(out))['dataset'] == str(a)
    before = snapshot(out)
    with pytest.raises(SystemExit, match=rf"^error: data/corpus_byte holds the shards of {a}, not of {b}: choose another "
                                         r"--out_dir, or add --overwrite to replace them$"):
        prepare_main(['--dataset', 'b/corpus', *BYTE])
    assert not changed(before, snapshot(out))
    # the same source: up to date, or rebuilt with other settings, as before
    monkeypatch.chdir(tmp_path / 'a')
    prepare_main(['--dataset', 'corpus', *BYTE, '--out_dir', out])
    assert 'up to date' in capsys.readouterr().out
    prepare_main(['--dataset', 'corpus', *BYTE, '--out_dir', out, '--max_tokens', 5000])
    assert data.load_meta(str(out))['max_tokens'] == 5000
    # --overwrite replaces it, with the other corpus
    monkeypatch.chdir(tmp_path)
    prepare_main(['--dataset', 'b/corpus', *BYTE, '--overwrite'])
    assert data.load_meta(str(out))['dataset'] == str(b) and not list((tmp_path / 'data').glob('*.tmp-*'))


def test_another_subset_is_another_source(tmp_path):
    """fineweb's subsets share the default data/fineweb_gpt2; refused before anything is streamed (no network here)."""
    out = tmp_path / 'o'
    prepare_main(['--dataset', corpus(tmp_path / 'ds'), *BYTE, '--out_dir', out])
    meta = json.loads((out / 'meta.json').read_text())
    (out / 'meta.json').write_text(json.dumps({**meta, 'dataset': 'fineweb', 'subset': 'sample-10BT'}))  # as fineweb writes it
    with pytest.raises(SystemExit, match=r"holds the shards of fineweb \(subset sample-10BT\), not of fineweb \(subset "
                                         r"sample-100BT\): choose another --out_dir, or add --overwrite"):
        prepare_main(['--dataset', 'fineweb', '--subset', 'sample-100BT', *BYTE, '--out_dir', out])
