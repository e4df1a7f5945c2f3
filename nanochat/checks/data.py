"""Checks for 02_data: which row groups a rank reads, packing one row best-fit, a batch of inputs and targets."""
import random

import torch

from nanochat.checks.verdict import Checker, mistake_named
from nanochat.dataloader import DocumentBuffer


def check_rank_row_groups(rank_row_groups) -> None:
    """rank_row_groups(start, rank, world_size, count) -> the first `count` row-group indices >= start this rank reads."""
    c = Checker(rank_row_groups)
    for start, rank, world, count in [(0, 0, 1, 5), (0, 1, 4, 3), (0, 3, 4, 3), (8, 2, 8, 2), (5, 0, 4, 3),
                                      (5, 1, 4, 3), (5, 2, 4, 3), (13, 7, 8, 2)]:
        case = f"start={start}, rank={rank}, world_size={world}, count={count}"
        got = c.call(start, rank, world, count, case=case)
        first = start + (rank - start) % world  # the first index >= start with index % world_size == rank
        expected = [first + k * world for k in range(count)]
        c.expect(list(got), expected, case, lambda g: mistake_named(g, {
            "a rank's indices are those with index % world_size == rank; starting at start + rank breaks that "
            "when start is not a multiple of world_size (a resumed run would read another rank's data)":
                [start + rank + k * world for k in range(count)]},
            "rank r reads every index i >= start with i % world_size == r, in increasing order"))
    c.require(sorted(i for r in range(4) for i in c.call(5, r, 4, 3, case="all 4 ranks from start=5")) == list(range(5, 17)),
              "all 4 ranks from start=5", "together the ranks should read 5..16, each index exactly once")
    c.passed("one rank, several ranks, resuming from a start that is not a multiple of world_size")


def reference_pack_row(docs: list[list[int]], row_len: int, pad_id: int | None = None) -> tuple[list[int], list[list[int]]]:
    """The loader's best-fit packing of one row, through its own DocumentBuffer: (row, documents left).

    pad_id None: crop the shortest document when nothing fits (pretraining); else pad instead (SFT).
    """
    buffer = DocumentBuffer()
    for i, doc in enumerate(docs):
        buffer.add((0, i), doc, len(doc))
    row = []
    while len(row) < row_len:
        found = buffer.pop_largest_fitting(row_len - len(row))
        if found is None and pad_id is not None:
            row += [pad_id] * (row_len - len(row))
            break
        found = found or buffer.pop_shortest()
        row.extend(found[1][:row_len - len(row)])
    return row, [docs[pos] for _, pos in sorted(buffer.docs)]


def _first_fit(docs, row_len):
    row, left = [], []
    for doc in docs:
        (row.extend(doc) if len(row) + len(doc) <= row_len else left.append(doc))
    return row, left


def check_pack_row(pack_row) -> None:
    """pack_row(docs, row_len) -> (row of exactly row_len ids, the documents not used, in their order)."""
    c = Checker(pack_row)
    rng = random.Random(0)

    def docs_of(lengths):
        return [[100 * (i + 1) + j for j in range(n)] for i, n in enumerate(lengths)]

    cases = [([3, 9, 5], 8, "lengths 3, 9, 5 and row_len 8: the 5 then the 3 fill it exactly"),
             ([2, 7, 4, 6], 12, "lengths 2, 7, 4, 6 and row_len 12: largest that fits is 7, then 4, then nothing fits 1"),
             ([20, 30], 10, "lengths 20, 30 and row_len 10: nothing fits at all"),
             ([6], 6, "one document exactly as long as the row"),
             (rng.sample(range(1, 60), 12), 64, "12 random lengths, row_len 64")]
    for lengths, row_len, case in cases:  # lengths are distinct: no tie rule needed
        docs = docs_of(lengths)
        got = c.call([list(d) for d in docs], row_len, case=case)
        expected = reference_pack_row(docs, row_len)
        c.require(isinstance(got, tuple) and len(got) == 2, case, f"expected a pair (row, docs_left), got {type(got).__name__}")
        row, left = got
        c.require(len(row) == row_len, case, f"the row has {len(row)} ids, expected exactly {row_len}",
                  "when no document fits the space left, crop the shortest one into it (the row is always full)")
        c.expect(list(row), expected[0], case, lambda g: mistake_named(g, {
            "that is first-fit (documents in arrival order): take the LARGEST document that still fits":
                (_first_fit(docs, row_len)[0] + [0] * row_len)[:row_len]},
            "repeat: take the largest document with length <= space left; when none fits, crop the shortest"))
        c.expect(sorted(map(list, left)), sorted(expected[1]), f"{case}: the documents left over",
                 "a cropped document is used up (its tail is dropped); every other unused one stays, whole")
    c.passed("exact fits, crops, nothing that fits, random documents")


def check_batch_from_rows(batch_from_rows) -> None:
    """batch_from_rows(rows) -> (inputs, targets): (B, T) int64 tensors from B rows of T+1 ids."""
    c = Checker(batch_from_rows)
    for rows, case in [([[1, 2, 3, 4]], "one row [1, 2, 3, 4]"),
                       ([[5, 6, 7], [8, 9, 10]], "two rows of 3 ids"),
                       ([list(range(i, i + 17)) for i in range(4)], "4 rows of 17 ids")]:
        got = c.call([list(r) for r in rows], case=case)
        full = torch.tensor(rows, dtype=torch.long)
        c.require(isinstance(got, tuple) and len(got) == 2, case, "expected a pair (inputs, targets)")
        inputs, targets = got
        for name, value, expected in [("inputs", inputs, full[:, :-1]), ("targets", targets, full[:, 1:])]:
            c.require(isinstance(value, torch.Tensor) and value.dtype == torch.long, case,
                      f"{name} should be an int64 tensor, got {getattr(value, 'dtype', type(value).__name__)}",
                      "torch.tensor(rows, dtype=torch.long)")
            c.expect(value, expected, f"{case}: {name}", "a row of T+1 ids gives T predictions: inputs are ids "
                     "0..T-1, targets ids 1..T (each target is the token after its input)")
    c.passed("one row, several rows; dtype, shape and the shift by one")
