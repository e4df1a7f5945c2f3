"""The loaders: rows start at <|bos|> and are full, pieces are the right documents, exact resume, ranks.

Most tests write small shards of their own (documents tagged "[train 1.7]" so any row
can be traced back to its text) and use a byte-level tokenizer, so each test takes well
under a second. A few use the course data pack's real shards.
"""
import json
import os
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchrun import run_two_ranks
import torch

from nanochat import common, dataset
from nanochat.dataloader import (BestFitLoader, DocumentBuffer, StreamingLoader, build_train_loader,
                                 build_val_loader)
from nanochat.tokenizer import Tokenizer

sys.path.insert(0, os.path.dirname(__file__))
from dist_loader_worker import tags_in  # noqa: E402

ROW_GROUP = 16
SHARD_DOCS = (64, 48, 48)  # two train shards, then the val shard


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.bytes_only()


@pytest.fixture
def docs(base_dir):
    """Write tiny shards into base_dir; return {split: [texts in reading order]}."""
    rng = random.Random(0)
    os.makedirs(common.pretrain_data_dir(), exist_ok=True)
    texts = {"train": [], "val": []}
    for s, n in enumerate(SHARD_DOCS):
        split = "val" if s == len(SHARD_DOCS) - 1 else "train"
        shard = []
        for i in range(n):
            length = int(rng.lognormvariate(4.0, 0.9))  # median ~55 bytes, a tail of long documents
            shard.append(f"[{split} {s}.{i}] " + "".join(rng.choice("abcdefgh ") for _ in range(length)))
        pq.write_table(pa.table({"text": shard}), os.path.join(common.pretrain_data_dir(), dataset.shard_name(s)),
                       row_group_size=ROW_GROUP)
        texts[split] += shard
    return texts


def text_of(docs, split, doc_id):
    """The text behind a loader document id (row groups count on across epochs)."""
    group, pos = doc_id
    return docs[split][(group % (len(docs[split]) // ROW_GROUP)) * ROW_GROUP + pos]


def take(loader, n):
    return [(x.clone(), y.clone()) for _, (x, y) in zip(range(n), loader)]


# ---- the shape of every batch


@pytest.mark.parametrize("T", [31, 63, 500])
def test_rows_start_at_bos_are_full_and_targets_are_shifted(docs, tokenizer, T):
    loader = build_train_loader(tokenizer, B=4, T=T, world_size=1, rank=0)
    bos = tokenizer.get_bos_token_id()
    for inputs, targets in take(loader, 10):
        assert inputs.shape == targets.shape == (4, T) and inputs.dtype == targets.dtype == torch.int64
        assert (inputs[:, 0] == bos).all()
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert loader.stats.utilisation == 1.0 and loader.stats.rows_mid_document == 0
    assert 0 < loader.stats.crop_fraction < 1


def test_every_piece_is_its_document_and_only_the_last_piece_is_cropped(docs, tokenizer):
    T = 63
    loader = build_train_loader(tokenizer, B=4, T=T, world_size=1, rank=0, buffer_size=20)
    placed = cropped = overlong = 0
    for _ in range(25):  # more than one epoch of this tiny split
        inputs, targets = next(loader)
        rows = torch.cat([inputs, targets[:, -1:]], dim=1).tolist()  # the full T+1 rows back
        for row, pieces in zip(rows, loader.layout):
            assert sum(p.length for p in pieces) == T + 1
            at = 0
            for k, piece in enumerate(pieces):
                expected = tokenizer.encode(text_of(docs, "train", piece.doc), prepend="<|bos|>")
                assert row[at:at + piece.length] == expected[:piece.length]
                assert piece.doc_length == len(expected)
                if k < len(pieces) - 1:  # it fitted, so it is whole (or cropped to one full row)
                    assert piece.length == min(len(expected), T + 1)
                at += piece.length
                placed += piece.length
                cropped += piece.doc_length - piece.length
                overlong += max(piece.doc_length - (T + 1), 0)
    assert loader.stats.doc_tokens == placed and loader.stats.cropped_tokens == cropped
    assert 0 < loader.stats.overlong_tokens == overlong < cropped


def test_buffer_takes_the_largest_that_fits_ties_by_id():
    buffer = DocumentBuffer()
    for doc_id, length in [((3, 0), 5), ((1, 4), 9), ((2, 1), 5), ((0, 7), 12)]:
        buffer.add(doc_id, [0] * length, length)
    assert buffer.pop_largest_fitting(4) is None
    assert buffer.pop_largest_fitting(8)[0] == (3, 0)   # two of length 5: the larger id, always
    assert buffer.pop_largest_fitting(100)[0] == (0, 7)
    assert buffer.pop_shortest()[0] == (2, 1)
    assert len(buffer) == 1


def test_streaming_rows_are_the_concatenation_chopped(docs, tokenizer):
    T = 47
    loader = StreamingLoader(tokenizer, B=3, T=T, rank=0, world_size=1, split="val")
    stream = [t for text in docs["val"] for t in tokenizer.encode(text, prepend="<|bos|>")]
    rows = [row for x, y in loader for row in torch.cat([x, y[:, -1:]], dim=1).tolist()]
    assert [t for row in rows for t in row] == stream[:len(rows) * (T + 1)]
    assert len(stream) - len(rows) * (T + 1) < 3 * (T + 1)  # only the last, partial batch is dropped
    assert loader.stats.crop_fraction == 0 and loader.stats.utilisation == 1
    assert loader.stats.rows_mid_document > 0


# ---- exact resume


@pytest.mark.parametrize("kind", [BestFitLoader, StreamingLoader])
def test_resume_continues_with_exactly_the_same_batches(docs, tokenizer, kind):
    n, k = 30, 11  # 30 batches of this tiny split run through several epochs
    uninterrupted = kind(tokenizer, B=2, T=63, rank=0, world_size=1)
    before = take(uninterrupted, k)
    state = json.loads(json.dumps(uninterrupted.state_dict()))  # it must survive a JSON checkpoint
    after = take(uninterrupted, n - k)
    resumed = kind(tokenizer, B=2, T=63, rank=0, world_size=1, state=state)
    for (x, y), (x2, y2) in zip(after, take(resumed, n - k), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert resumed.stats == uninterrupted.stats
    assert before[0][0].shape == (2, 63)


@pytest.mark.parametrize("kind", [BestFitLoader, StreamingLoader])
def test_prefetching_changes_neither_the_batches_nor_the_resume_point(docs, tokenizer, kind):
    plain = take(kind(tokenizer, B=2, T=63, rank=0, world_size=1), 12)
    ahead = kind(tokenizer, B=2, T=63, rank=0, world_size=1)
    batches, states = [], []
    for _ in range(12):
        x, y = next(ahead)
        batches.append((x.clone(), y.clone()))
        ahead.prefetch()  # as train_step does after backward
        ahead.prefetch()  # a second call holds the same batch, it does not skip one
        states.append(json.loads(json.dumps(ahead.state_dict())))
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(plain, batches, strict=True))
    # A checkpoint taken while a batch is held resumes with that batch, not the one after it.
    resumed = kind(tokenizer, B=2, T=63, rank=0, world_size=1, state=states[4])
    x, y = next(resumed)
    assert torch.equal(x, plain[5][0]) and torch.equal(y, plain[5][1])


def test_resume_on_real_shards(base_dir, data_pack, tokenizer):
    dataset.download_shards(3)
    loader = build_train_loader(tokenizer, B=2, T=1024, rank=1, world_size=2, num_threads=2)
    take(loader, 4)
    state = loader.state_dict()
    assert len(json.dumps(state)) < 20_000  # small enough for a checkpoint's metadata
    expected = take(loader, 3)
    resumed = build_train_loader(tokenizer, B=2, T=1024, rank=1, world_size=2, num_threads=1, state=state)
    for (x, y), (x2, y2) in zip(expected, take(resumed, 3), strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_resume_with_another_batch_size_warns_and_continues_from_the_same_documents(docs, tokenizer):
    loader = build_train_loader(tokenizer, B=2, T=63, rank=0, world_size=1)
    take(loader, 3)
    state = loader.state_dict()
    with pytest.warns(UserWarning, match="B 2 -> 4"):
        resumed = build_train_loader(tokenizer, B=4, T=63, rank=0, world_size=1, state=state)
    next(resumed)
    buffered = {(group, pos) for group, positions in state["buffer"] for pos in positions}
    placed = {piece.doc for row in resumed.layout for piece in row}
    assert all(doc in buffered or doc >= tuple(state["next_document"]) for doc in placed)
    assert placed & buffered


def test_a_state_for_another_world_size_or_rank_is_refused(docs, tokenizer):
    loader = build_train_loader(tokenizer, B=2, T=31, rank=0, world_size=2)
    next(loader)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="world_size=2.*world_size=4"):
        build_train_loader(tokenizer, B=2, T=31, rank=0, world_size=4, state=state)
    with pytest.raises(ValueError, match="rank=0.*rank=1"):
        build_train_loader(tokenizer, B=2, T=31, rank=1, world_size=2, state=state)
    with pytest.raises(ValueError, match="kind"):
        StreamingLoader(tokenizer, B=2, T=31, rank=0, world_size=2, state=state)


# ---- validation


def test_val_loader_is_deterministic_finite_and_capped(docs, tokenizer):
    first = take(build_val_loader(tokenizer, B=2, T=63, rank=0, world_size=1), 1000)
    second = take(build_val_loader(tokenizer, B=2, T=63, rank=0, world_size=1), 1000)
    assert 3 < len(first) < 1000
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, second, strict=True))
    assert len(take(build_val_loader(tokenizer, B=2, T=63, rank=0, world_size=1, max_batches=2), 1000)) == 2
    seen = {tag for x, _ in first for tag in tags_in(x, tokenizer)}
    assert seen and all(tag.startswith("[val 2.") for tag in seen)


# ---- clear errors


def test_no_shards_says_how_to_download(base_dir, tokenizer):
    with pytest.raises(FileNotFoundError, match="python -m nanochat.dataset"):
        build_train_loader(tokenizer, B=2, T=31, rank=0, world_size=1)


def test_T_too_large_for_the_val_split(docs, tokenizer):
    with pytest.raises(ValueError, match="too few tokens.*Lower B or T"):
        next(build_val_loader(tokenizer, B=8, T=100_000, rank=0, world_size=1))


def test_a_shard_damaged_inside_is_named(docs, tokenizer):
    path = os.path.join(common.pretrain_data_dir(), dataset.shard_name(1))
    data = bytearray(open(path, "rb").read())
    footer = 8 + int.from_bytes(data[-8:-4], "little")  # metadata length + "PAR1": keep it, so the file opens
    data[4:len(data) - footer] = b"\x55" * (len(data) - footer - 4)
    open(path, "wb").write(data)
    loader = build_train_loader(tokenizer, B=2, T=63, rank=0, world_size=1)
    with pytest.raises(RuntimeError, match=r"shard_00001\.parquet"):
        take(loader, 50)


# ---- two ranks under torchrun


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_see_disjoint_documents_that_cover_the_data(docs, tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "dist_loader_worker.py")
    ranks = run_two_ranks(worker, tmp_path / "ranks.json")
    assert [r["rank"] for r in ranks] == [0, 1]
    # the documents the ranks read: together every val document, each exactly once
    read = [tag for r in ranks for tag in r["read_tags"]]
    assert sorted(read) == sorted(text.split("]")[0] + "]" for text in docs["val"])
    # what the loaders packed into rows: no document on both ranks, each rank only what it read
    for key in ("val_tags", "train_tags"):
        rank0, rank1 = (set(r[key]) for r in ranks)
        assert rank0 and rank1 and rank0.isdisjoint(rank1), key
    assert all(set(r["val_tags"]) <= set(r["read_tags"]) for r in ranks)
    assert all(r["val_batches"] > 0 for r in ranks)
