"""The tokenizer: training through rustbpe, saving/loading, specials, chat rendering and masks."""
import os

import pytest
import torch

from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, Tokenizer, get_token_bytes, get_tokenizer, reference_encoding, train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. " * 20,
    "def add(a, b):\n    return a + b\n\n" * 10,
    "Numbers: 12345 678 90, and 3.14159 with 2+2=4. " * 10,
    "Ünïcödé, 日本語のテキスト, emoji 🙂🚀 and tabs\tand  spaces. " * 10,
]


@pytest.fixture
def tok(base_dir) -> Tokenizer:
    return train_tokenizer(iter(CORPUS), vocab_size=256 + len(SPECIAL_TOKENS) + 64)


def by_name(tok, *names):
    return [tok.encode_special(n) for n in names]


def test_pattern_is_the_same_string_in_rust_and_python():
    import rustbpe

    assert rustbpe.DEFAULT_PATTERN == SPLIT_PATTERN


def test_train_save_load_roundtrip(tok, base_dir):
    assert tok.get_vocab_size() == 256 + len(SPECIAL_TOKENS) + 64
    for name in ("tokenizer.tiktoken", "tokenizer.json", "token_bytes.pt"):
        assert os.path.isfile(os.path.join(base_dir, "tokenizer", name))
    loaded = get_tokenizer()
    text = "The lazy fox returns a + b, 日本語 🙂 12345"
    assert loaded.encode(text) == tok.encode(text) and loaded.decode(loaded.encode(text)) == text
    assert loaded.fingerprint() == tok.fingerprint()
    assert len(tok.encode("The quick brown fox")) < len("The quick brown fox".encode())  # merges were learned


def test_a_tokenizer_retrained_in_the_same_place_loads_as_the_new_one(tok, base_dir):
    assert get_tokenizer().get_vocab_size() == tok.get_vocab_size()  # loaded once: a cache would keep this one
    bigger = train_tokenizer(iter(CORPUS), vocab_size=tok.get_vocab_size() + 32)
    loaded = get_tokenizer()
    assert loaded.get_vocab_size() == bigger.get_vocab_size() and loaded.fingerprint() == bigger.fingerprint()


def test_token_bytes_counts_raw_bytes_and_zero_for_specials(tok):
    token_bytes = get_token_bytes()
    assert token_bytes.dtype == torch.int32 and len(token_bytes) == tok.get_vocab_size()
    assert token_bytes[:256].tolist() == [1] * 256
    for token_id in by_name(tok, *SPECIAL_TOKENS):
        assert token_bytes[token_id] == 0
    ids = tok.encode("日本語 🙂 quick brown")
    assert sum(token_bytes[i].item() for i in ids) == len("日本語 🙂 quick brown".encode())


def test_encode_batch_prepend_append_and_specials_in_text(tok):
    bos = tok.get_bos_token_id()
    assert bos == tok.encode_special("<|bos|>") and bos == 256 + 64
    batch = tok.encode(["hello", "world"], prepend="<|bos|>", append=bos)
    assert batch == [[bos] + tok.encode("hello") + [bos], [bos] + tok.encode("world") + [bos]]
    assert bos not in tok.encode("text that mentions <|bos|>")  # data can never emit a special
    with pytest.raises(TypeError):
        tok.encode(42)


def test_missing_tokenizer_says_how_to_train(base_dir):
    with pytest.raises(FileNotFoundError, match="01_tokenizer"):
        get_tokenizer()


def test_vocab_too_small_is_a_clear_error(base_dir):
    with pytest.raises(ValueError, match="at least 265"):
        train_tokenizer(iter(CORPUS), vocab_size=100)


def test_render_conversation_masks_multiturn_with_tool_call(tok):
    conversation = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me compute."},
            {"type": "python", "text": "2+2"},
            {"type": "python_output", "text": "4"},
            {"type": "text", "text": "It is 4."},
        ]},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You're welcome."},
    ]}
    ids, mask = tok.render_conversation(conversation)
    S = lambda name: tok.encode_special(name)
    E = tok.encode
    expected = [
        ([S("<|bos|>"), S("<|user_start|>")] + E("Be brief.\n\nWhat is 2+2?") + [S("<|user_end|>"), S("<|assistant_start|>")], 0),
        (E("Let me compute.") + [S("<|python_start|>")] + E("2+2") + [S("<|python_end|>")], 1),
        ([S("<|output_start|>")] + E("4") + [S("<|output_end|>")], 0),
        (E("It is 4.") + [S("<|assistant_end|>")], 1),
        ([S("<|user_start|>")] + E("Thanks") + [S("<|user_end|>"), S("<|assistant_start|>")], 0),
        (E("You're welcome.") + [S("<|assistant_end|>")], 1),
    ]
    assert ids == [t for part, _ in expected for t in part]
    assert mask == [m for part, m in expected for _ in part]
    short_ids, short_mask = tok.render_conversation(conversation, max_tokens=10)
    assert short_ids == ids[:10] and short_mask == mask[:10]


def test_render_for_completion_and_bad_turn_order(tok):
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    prompt = tok.render_for_completion(conversation)
    ids, _ = tok.render_conversation(conversation)
    assert prompt == ids[: len(prompt)] and prompt[-1] == tok.encode_special("<|assistant_start|>")
    with pytest.raises(ValueError, match="alternate"):
        tok.render_conversation([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    with pytest.raises(ValueError, match="last message"):
        tok.render_for_completion([{"role": "user", "content": "a"}])


def test_show_tokens_is_html_per_token(tok):
    ids = tok.encode("a <b> & c")
    page = tok.show_tokens(ids, mask=[1] * len(ids))
    assert page.count("<span") == len(ids) and "&lt;" in page and "<b>" not in page


def test_reference_encodings_through_the_mirror(base_dir, data_pack, monkeypatch, tmp_path):
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    gpt2 = reference_encoding("gpt2")
    gpt4 = reference_encoding("cl100k_base")
    assert gpt2.n_vocab == 50257 and gpt4.n_vocab == 100277
    assert gpt2.decode(gpt2.encode("hello world")) == "hello world"
    with pytest.raises(ValueError, match="unknown reference encoding"):
        reference_encoding("gpt5")
