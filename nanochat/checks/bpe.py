"""A small, slow, obviously correct byte-level BPE in pure Python: the reference the checks and tests compare with.

The textbook algorithm: split each text into chunks with the regex, then repeat
"count every adjacent pair in every chunk, merge the most frequent one" until the
vocabulary is full. rustbpe computes the same merges far faster (parallel counting,
incremental pair updates, a heap), so on small corpora the two must agree exactly.

The tie rule is part of the contract: among pairs with the same count, the smallest
pair (a, b) of token ids wins.
"""
from collections import Counter

import regex  # the PyPI `regex` module: \p{L} classes and possessive quantifiers, like Rust's

Pair = tuple[int, int]


def split(text: str, pattern: str) -> list[str]:
    """The chunks BPE trains on; merges never cross a chunk boundary."""
    return regex.findall(pattern, text)


def count_pairs(words: dict[tuple[int, ...], int]) -> Counter:
    """How often each adjacent pair occurs, weighting each distinct word by its count."""
    counts = Counter()
    for ids, n in words.items():
        for pair in zip(ids, ids[1:]):
            counts[pair] += n
    return counts


def merge(ids: tuple[int, ...], pair: Pair, new_id: int) -> tuple[int, ...]:
    """Replace each occurrence of pair, scanning left to right, by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return tuple(out)


def train(texts, vocab_size: int, pattern: str) -> list[Pair]:
    """The merges (in order) that grow 256 byte tokens into vocab_size tokens."""
    chunk_counts = Counter(chunk for text in texts for chunk in split(text, pattern))
    # each distinct chunk once, as a tuple of byte values, with how often it occurs
    words = {tuple(chunk.encode("utf-8")): n for chunk, n in chunk_counts.items()}
    merges = []
    for new_id in range(256, vocab_size):
        counts = count_pairs(words)
        if not counts:
            break  # every chunk is a single token: nothing left to merge
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        words = {merge(ids, best, new_id): n for ids, n in words.items()}
        merges.append(best)
    return merges


def token_bytes(merges: list[Pair]) -> list[bytes]:
    """The bytes of every token id: single bytes, then each merge's concatenation."""
    vocab = [bytes([b]) for b in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def encode(text: str, merges: list[Pair], pattern: str) -> list[int]:
    """Token ids of text: in each chunk, apply the earliest-learned merge present, repeatedly."""
    rank = {pair: 256 + i for i, pair in enumerate(merges)}
    ids_out = []
    for chunk in split(text, pattern):
        ids = tuple(chunk.encode("utf-8"))
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, float("inf")))
            if pair not in rank:
                break
            ids = merge(ids, pair, rank[pair])
        ids_out.extend(ids)
    return ids_out
