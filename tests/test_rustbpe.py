"""rustbpe, the Rust BPE trainer: same merges as a pure-Python reference, tiktoken-compatible
ranks, exact round trips, streaming, determinism, and clear errors for bad input."""
import os
import random
import warnings

import pyarrow.parquet as pq
import pytest
import regex
import rustbpe
import tiktoken

from nanochat.checks import bpe as ref

NANOCHAT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
# The same regex written differently, so rustbpe runs it through fancy-regex (the general
# backtracking engine) instead of its fast path for the exact default pattern.
DEFAULT_VIA_FANCY_REGEX = "(?:" + NANOCHAT_PATTERN + ")"

# Pieces that exercise every branch of the split pattern and the boundaries between them.
PIECES = [
    " ", "  ", "   ", "\t", "\n", "\r", "\r\n", "\n\n", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c",
    "a", "Z", "é", "ß", "ſ", "\u212a", "hello", "World", "'s", "'S", "'ll", "'VE", "'re", "'d", "'t", "'m", "'x",
    "0", "7", "123", "2024", "٣", "½", "!", "?!", "...", "-", "'", '"', "(", ")", "@", "#", "$", "_",
    "中", "文字", "日本語", "한국어", "😀", "👍🏽", "🏳️‍🌈", "\u0301", "\u200b", "\ufeff",
]


def random_text(rng: random.Random, n_pieces: int) -> str:
    """Text glued together from PIECES: adversarial for the splitter, still readable."""
    return "".join(rng.choice(PIECES) for _ in range(n_pieces))


def random_unicode(rng: random.Random, n_chars: int) -> str:
    """Any code points at all (no surrogates), biased towards the common planes."""
    chars = []
    for _ in range(n_chars):
        top = rng.choice([0x80, 0x800, 0x3400, 0x10000, 0x110000])
        cp = rng.randrange(top)
        chars.append(chr(cp) if not 0xD800 <= cp < 0xE000 else "?")
    return "".join(chars)


def train(texts, vocab_size, **kwargs) -> rustbpe.Tokenizer:
    tok = rustbpe.Tokenizer()
    tok.train_from_iterator(iter(texts), vocab_size, **kwargs)
    return tok


def decode(tok: rustbpe.Tokenizer, ids: list[int]) -> str:
    vocab = [b for b, _ in tok.get_mergeable_ranks()]
    return b"".join(vocab[i] for i in ids).decode("utf-8")


def merges_of(tok: rustbpe.Tokenizer) -> list[bytes]:
    return [b for b, _ in tok.get_mergeable_ranks()[256:]]


# ---- the split

def test_default_pattern_is_nanochats():
    assert rustbpe.DEFAULT_PATTERN == NANOCHAT_PATTERN
    assert rustbpe.Tokenizer().get_pattern() == NANOCHAT_PATTERN


def test_split_examples():
    assert rustbpe.split_text("Hello   world!!  It's 123456") == \
        ["Hello", "  ", " world", "!!", " ", " It", "'s", " ", "12", "34", "56"]
    assert rustbpe.split_text("a\n\n  b  ") == ["a", "\n\n", " ", " b", "  "]


def test_fast_split_equals_fancy_regex_and_python_regex():
    """The fast path (DFA + lookahead fix-up) must split exactly like the real pattern."""
    rng = random.Random(0)
    texts = [random_text(rng, rng.randint(1, 14)) for _ in range(3000)]
    texts += [" " * n + "x" + "\t" * m + "\u00a0" * k + "y" for n in range(4) for m in range(3) for k in range(3)]
    for i, text in enumerate(texts):
        fast = rustbpe.split_text(text)
        assert fast == ref.split(text, NANOCHAT_PATTERN), repr(text)
        assert "".join(fast) == text
        if i % 10 == 0:  # compiling fancy-regex takes ~2 ms; cargo test checks 20,000 more
            assert fast == rustbpe.split_text(text, DEFAULT_VIA_FANCY_REGEX), repr(text)


def test_fast_split_equals_fancy_regex_on_every_character_class():
    """Every code point below U+3400 (and a sample above) in the contexts that matter."""
    cps = list(range(0x3400)) + list(range(0x3400, 0x110000, 97))
    chars = [chr(cp) for cp in cps if not 0xD800 <= cp < 0xE000]
    text = "".join(f"a{c}{c}b {c}1 x{c} {c}{c}'s" for c in chars)
    assert rustbpe.split_text(text) == rustbpe.split_text(text, DEFAULT_VIA_FANCY_REGEX)


# ---- training: identical to the reference

CORPORA = {
    "english": ["The cat sat on the mat. The dog didn't; it'd rather sleep.",
                "We'll see what THEY'RE doing: they've gone to the market, haven't they?",
                "Tokenizers turn text into integers, and the integers into text again."] * 3,
    "emoji": ["I ❤️ 🐍 and 😀😀😀!", "👍🏽👍🏽 great 🎉🎉 party 🏳️‍🌈", "🐍🐍 snakes 🐍 everywhere 😀"] * 4,
    "cjk": ["我爱自然语言处理。自然语言很有趣！", "日本語のテキストです。東京は大きい。", "한국어 문장입니다. 안녕하세요 세계"] * 3,
    "digits": ["Call 555-1234 on 2024-01-02 at 10:30; pay $1,234.56 or 99.9%.",
               " ".join(str(n) for n in random.Random(1).sample(range(100000), 300))],
    "whitespace": ["a  b   c\t\td\n\n\ne \u00a0\u00a0f\u3000\u3000g", "    def f(x):\n        return x\n\n\n",
                   "x" + " " * 40 + "y\r\n\r\n  \t z   ", "\n".join(" " * i + "line" for i in range(20))],
    "ties": ["ab cd ef gh ij", "ba dc fe hg ji", "abab cdcd", "zz yy xx"],
    "repeated": ["the same sentence again and again. "] * 200,
    "random": [random_text(random.Random(2), 400) for _ in range(5)],
}


@pytest.mark.parametrize("name", sorted(CORPORA))
def test_merges_identical_to_reference(name):
    texts = CORPORA[name]
    vocab_size = 256 + 150
    expected = ref.train(texts, vocab_size, NANOCHAT_PATTERN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tok = train(texts, vocab_size)
    assert merges_of(tok) == ref.token_bytes(expected)[256:]
    ran_out = len(expected) < vocab_size - 256
    assert any("only supports" in str(w.message) for w in caught) == ran_out


def test_merges_identical_to_reference_on_real_text(data_pack):
    docs = shard_docs(data_pack)[:15]
    expected = ref.train(docs, 256 + 200, NANOCHAT_PATTERN)
    assert merges_of(train(docs, 256 + 200)) == ref.token_bytes(expected)[256:]


def test_custom_pattern_goes_through_fancy_regex():
    pattern = r"\w+|[^\w\s]+|\s+"
    texts = CORPORA["english"] + CORPORA["digits"]
    tok = train(texts, 256 + 100, pattern=pattern)
    assert tok.get_pattern() == pattern
    assert merges_of(tok) == ref.token_bytes(ref.train(texts, 256 + 100, pattern))[256:]
    assert tok.encode("hello world, 2024") == ref.encode("hello world, 2024", ref.train(texts, 256 + 100, pattern), pattern)


def test_ties_go_to_the_smallest_pair():
    # every pair occurs exactly once: the merges come out in byte order of the pairs
    # (" ", "b") = (32, 98) < ("b", "a") = (98, 97) < ("d", "c") = (100, 99), so " b" first;
    # then ("d", "c") beats (" b", "a") = (256, 97)
    tok = train(["dc ba"], 256 + 2)
    assert merges_of(tok) == [b" b", b"dc"]


# ---- the vocabulary and encoding

def test_ranks_are_bytes_then_concatenated_merges():
    tok = train(CORPORA["english"], 256 + 50)
    ranks = tok.get_mergeable_ranks()
    assert [r for _, r in ranks] == list(range(256 + 50)) and tok.vocab_size == 256 + 50
    assert [b for b, _ in ranks[:256]] == [bytes([i]) for i in range(256)]
    assert len({b for b, _ in ranks}) == len(ranks), "every token is distinct"
    assert all(len(b) >= 2 for b, _ in ranks[256:])


def test_encode_matches_reference_and_round_trips():
    texts = CORPORA["english"] + CORPORA["emoji"] + CORPORA["cjk"] + CORPORA["random"]
    merges = ref.train(texts, 256 + 300, NANOCHAT_PATTERN)
    tok = train(texts, 256 + 300)
    rng = random.Random(3)
    samples = texts + [random_text(rng, 50) for _ in range(50)] + [random_unicode(rng, 200) for _ in range(50)]
    for text in samples:
        ids = tok.encode(text)
        assert ids == ref.encode(text, merges, NANOCHAT_PATTERN)
        assert decode(tok, ids) == text


def shard_docs(data_pack: str) -> list[str]:
    """The first 1024 documents of the first pretraining shard."""
    first_row_group = pq.ParquetFile(os.path.join(data_pack, "pretrain", "shard_00000.parquet")).read_row_group(0, columns=["text"])
    return first_row_group.column("text").to_pylist()


def test_tiktoken_gives_the_same_ids(data_pack):
    docs = shard_docs(data_pack)
    tok = train(docs[:300], 2048)
    enc = tiktoken.Encoding(name="rustbpe-test", pat_str=tok.get_pattern(),
                            mergeable_ranks=dict(tok.get_mergeable_ranks()), special_tokens={})
    rng = random.Random(4)
    held_out = docs[300:400] + [random_text(rng, 80) for _ in range(100)] + [random_unicode(rng, 300) for _ in range(100)]
    for text in held_out:
        ids = tok.encode(text)
        assert ids == enc.encode_ordinary(text)
        assert decode(tok, ids) == text
    # a real vocabulary compresses real held-out text (measured: 2.8 bytes per token)
    text = "".join(docs[300:400])
    assert len(text.encode()) / len(tok.encode(text)) > 2.5


# ---- streaming and determinism

def test_streams_a_generator_in_batches():
    texts = [random_text(random.Random(i), 30) for i in range(100)]
    consumed = []

    def generate():
        for text in texts:
            consumed.append(text)
            yield text

    streamed = rustbpe.Tokenizer()
    streamed.train_from_iterator(generate(), 256 + 100, buffer_size=16)
    assert len(consumed) == 100, "the whole generator was read"
    at_once = train(texts, 256 + 100, buffer_size=10_000)
    assert streamed.get_mergeable_ranks() == at_once.get_mergeable_ranks()


def test_training_is_deterministic():
    texts = CORPORA["random"] + CORPORA["english"]
    first, second = train(texts, 256 + 200), train(texts, 256 + 200, buffer_size=3)
    assert first.get_mergeable_ranks() == second.get_mergeable_ranks()


def test_vocab_too_large_stops_early_with_a_warning():
    with pytest.warns(UserWarning, match="only supports 3 merges"):
        tok = train(["abc abc"], 1000)
    assert merges_of(tok) == [b"ab", b"abc", b" abc"] and tok.vocab_size == 259
    assert tok.encode("abc") == [257]
    with pytest.warns(UserWarning):  # a huge request must not try to reserve room for it
        assert train(["abc abc"], 2**32 - 1).vocab_size == 259


def test_vocab_size_256_learns_nothing():
    tok = train(["hello"], 256)
    assert tok.vocab_size == 256 and tok.encode("hi") == [104, 105]


# ---- errors

def test_vocab_size_below_256_is_a_value_error():
    with pytest.raises(ValueError, match="at least 256"):
        train(["hello"], 255)


def test_invalid_regex_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match=r"invalid split pattern.*\(unclosed"):
        train(["hello"], 300, pattern="(unclosed")


def test_non_str_item_is_a_type_error_naming_index_and_type():
    with pytest.raises(TypeError, match="item 2 of the iterator is a bytes, expected str"):
        train(["a", "b", b"c", "d"], 300)


def test_non_iterable_and_bad_buffer_size():
    with pytest.raises(TypeError):
        rustbpe.Tokenizer().train_from_iterator(42, 300)
    with pytest.raises(ValueError, match="buffer_size"):
        train(["hello"], 300, buffer_size=0)


def test_errors_raised_by_the_iterator_propagate():
    def broken():
        yield "fine"
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        rustbpe.Tokenizer().train_from_iterator(broken(), 300)
