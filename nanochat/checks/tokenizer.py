"""Checks for 01_tokenizer: one merge, training BPE on a paragraph, encoding with learned merges."""
import random

import regex

from nanochat.checks import bpe
from nanochat.checks.verdict import Checker, mistake_named
from nanochat.tokenizer import SPLIT_PATTERN, Tokenizer

PARAGRAPH = (
    "The tokenizer is the first thing a language model sees and the last thing anyone thinks about. "
    "It turns text into a short list of numbers, and the shorter the list, the more text fits in the "
    "model's context and the less compute each sentence costs. Byte-pair encoding starts from the 256 "
    "bytes and merges the most frequent pair again and again: th, then the, then ' the', until the "
    "vocabulary is full. Numbers like 2024 or 3.14159 and words like naïve or 東京 are bytes too.\n\n"
    "Then the same merges, applied in the order they were learned, encode any new text."
)


def _wrong_overlap(ids, pair, new_id):
    """A merge that scans right to left: on (1, 1, 1) it gives (1, 256), not (256, 1)."""
    return list(bpe.merge(tuple(ids[::-1]), pair[::-1], new_id)[::-1])


def check_merge(merge) -> None:
    """merge(ids, pair, new_id) -> a new list with every occurrence of pair replaced, left to right."""
    c = Checker(merge)
    rng = random.Random(0)
    cases = [([1, 2, 3, 1, 2], (1, 2), 256, "a pair that occurs twice"),
             ([1, 1, 1], (1, 1), 256, "an overlapping run (1, 1, 1) with pair (1, 1)"),
             ([1, 1, 1, 1], (1, 1), 300, "(1, 1, 1, 1) with pair (1, 1)"),
             ([5, 6, 7], (7, 5), 256, "a pair that does not occur"),
             ([4, 2], (4, 2), 259, "a pair that is the whole list"),
             ([], (1, 2), 256, "an empty list"),
             ([rng.randrange(4) for _ in range(60)], (2, 3), 260, "60 random ids in 0..3, pair (2, 3)")]
    for ids, pair, new_id, case in cases:
        original = list(ids)
        got = c.call(list(ids), pair, new_id, case=case)
        expected = list(bpe.merge(tuple(ids), pair, new_id))
        c.expect(list(got) if isinstance(got, tuple) else got, expected, f"{case}: ids={ids}, pair={pair}, new_id={new_id}",
                 hint=lambda g: mistake_named(g, {
                     "the scan must go left to right and skip past a merged pair (on 1 1 1: 256 1)":
                         _wrong_overlap(ids, pair, new_id)},
                     "walk i from the left: if (ids[i], ids[i+1]) == pair, emit new_id and jump i by 2, else emit ids[i]"))
    c.passed("overlapping runs, absent pairs, empty input, random lists")


def _chunk_count(piece: bytes) -> int:
    return len(regex.findall(SPLIT_PATTERN, piece.decode("utf-8", errors="replace")))


def check_train_bpe(train_bpe) -> None:
    """train_bpe(text, vocab_size) -> the merges [(a, b), ...] that grow 256 bytes into vocab_size tokens."""
    c = Checker(train_bpe)
    for text, vocab_size, case in [("aaabdaaabac", 259, "'aaabdaaabac' (the Wikipedia example), 3 merges"),
                                   ("hi hi hi", 300, "'hi hi hi' with room for 44 merges (only 2 are possible)"),
                                   (PARAGRAPH, 256 + 60, "the paragraph in nanochat/checks/tokenizer.py, 60 merges")]:
        got = c.call(text, vocab_size, case=case)
        expected = bpe.train([text], vocab_size, SPLIT_PATTERN)
        got = [tuple(pair) for pair in got] if isinstance(got, list) else got
        c.require(isinstance(got, list), case, f"expected a list of (a, b) pairs, got {type(got).__name__}")
        vocab, ref_vocab = bpe.token_bytes(got), bpe.token_bytes(expected)
        for i, pair in enumerate(got):
            ref_pair = expected[i] if i < len(expected) else None
            if pair != ref_pair:
                new = vocab[256 + i] if all(t < len(vocab) for t in pair) else b"?"
                wanted = f"{ref_pair} = {ref_vocab[256 + i]!r}" if ref_pair else "no more merges"
                hint = (f"{new!r} crosses a chunk boundary of the GPT-4 split: split the text with "
                        f"regex.findall(SPLIT_PATTERN, text) first and never merge across chunks"
                        if _chunk_count(new) > 1 else
                        "stop when no pair is left to merge (every chunk is a single token)" if ref_pair is None else
                        "count pairs over all chunks (each distinct chunk weighted by how often it occurs); "
                        "on a tie in count the smallest pair (a, b) wins; new ids are 256, 257, ... in order")
                c.fail(case, f"merge #{i} (token {256 + i}): expected {wanted}, got {pair} = {new!r}", hint)
        c.require(len(got) == len(expected), case, f"expected {len(expected)} merges, got {len(got)}",
                  "make vocab_size - 256 merges, unless no pair is left")
        c.cases += 1
    c.passed("the textbook example, running out of pairs, 60 merges of a paragraph with digits and non-ASCII")


def check_encode(encode) -> None:
    """encode(text, merges) -> token ids, the same as tiktoken built from those merges."""
    c = Checker(encode)
    merges = bpe.train([PARAGRAPH], 256 + 80, SPLIT_PATTERN)
    tiktoken_encoding = small_tokenizer().enc  # built from the ranks of these same 80 merges
    for text, case in [("the", "'the'"), ("", "the empty string"),
                       ("Then the merges encode the text.", "a sentence of known words"),
                       ("naïve 東京 3.14159 🙂", "non-ASCII text, digits and an emoji (byte fallback)"),
                       (PARAGRAPH, "the whole paragraph")]:
        got = c.call(text, merges, case=case)
        expected = tiktoken_encoding.encode_ordinary(text)
        c.expect(list(got) if isinstance(got, tuple) else got, expected, f"{case} (80 merges learned on the paragraph)",
                 "split into chunks first; in each chunk, repeatedly merge the pair with the lowest merge index "
                 "(the earliest learned), not the most frequent one or the leftmost one")
    c.passed("known and unknown words, empty text, multi-byte characters, a whole paragraph; same ids as tiktoken")


_small = {}


def small_tokenizer() -> Tokenizer:
    """A tokenizer of 80 merges learned on PARAGRAPH, with the special tokens: for the chat checks."""
    if "tokenizer" not in _small:
        merges = bpe.train([PARAGRAPH], 256 + 80, SPLIT_PATTERN)
        ranks = {token: rank for rank, token in enumerate(bpe.token_bytes(merges))}
        _small["tokenizer"] = Tokenizer.from_ranks(ranks, SPLIT_PATTERN, name="small")
    return _small["tokenizer"]
