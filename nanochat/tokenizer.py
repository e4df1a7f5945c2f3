"""The tokenizer: trained by rustbpe (Rust), run by tiktoken, plus chat rendering.

Training and inference are split on purpose. Training a BPE vocabulary is a one-off job
that wants a fast, parallel trainer (`rustbpe`, this repo's Rust crate). Encoding happens
billions of times during training and serving, and tiktoken already does that well, so the
learned merges are handed to a `tiktoken.Encoding` and the trainer is never used again.

On disk (base_dir/tokenizer/):
    tokenizer.tiktoken   the mergeable ranks, tiktoken's own format (base64 token, rank)
    tokenizer.json       split pattern, special tokens, vocab size
    token_bytes.pt       for every token id, how many UTF-8 bytes it stands for (0 = special)
"""
import base64
import hashlib
import html
import json
import os
from typing import Iterable

import tiktoken
import torch

from nanochat import common, hub

# The GPT-4 split pattern, with one change made by nanochat: numbers are split into
# groups of at most 2 digits (GPT-4 uses 3), which spends fewer vocab slots on numbers.
# Pieces never merge across these boundaries. Must equal rustbpe.DEFAULT_PATTERN.
SPLIT_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""

# Every document starts with <|bos|>. The rest frame a conversation: who speaks, and
# when the assistant calls the Python tool and reads its output.
SPECIAL_TOKENS = [
    "<|bos|>",
    "<|user_start|>", "<|user_end|>",
    "<|assistant_start|>", "<|assistant_end|>",
    "<|python_start|>", "<|python_end|>",
    "<|output_start|>", "<|output_end|>",
]


class Tokenizer:
    """A tiktoken Encoding with our special tokens, and the conversation format on top."""

    def __init__(self, encoding: tiktoken.Encoding):
        self.enc = encoding
        self.bos_token_id = self.encode_special("<|bos|>")

    # ---- construction, saving, loading

    @classmethod
    def from_ranks(cls, mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN, name: str = "nanochat"):
        """Wrap learned ranks; the special tokens get the ids right after the last merge."""
        n = len(mergeable_ranks)
        special = {token: n + i for i, token in enumerate(SPECIAL_TOKENS)}
        return cls(tiktoken.Encoding(name=name, pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=special))

    @classmethod
    def bytes_only(cls):
        """256 byte tokens and the specials, no merges: needs no training, and ids decode to the exact text
        (for tests and benchmarks, where what matters is the plumbing, not the compression)."""
        return cls.from_ranks({bytes([i]): i for i in range(256)})

    def save(self, directory: str) -> None:
        """Write the three files (each atomically: temp name, then rename)."""
        ranks = sorted(self.enc._mergeable_ranks.items(), key=lambda kv: kv[1])
        lines = "".join(f"{base64.b64encode(token).decode()} {rank}\n" for token, rank in ranks)
        meta = {"pattern": self.enc._pat_str, "special_tokens": self.enc._special_tokens, "vocab_size": self.get_vocab_size()}
        common.atomic_write(os.path.join(directory, "tokenizer.tiktoken"), lines)
        common.atomic_write(os.path.join(directory, "tokenizer.json"), json.dumps(meta, indent=2))
        with common.atomic_file(os.path.join(directory, "token_bytes.pt")) as f:
            torch.save(self.token_bytes(), f)

    @classmethod
    def load(cls, directory: str):
        """Load a saved tokenizer; a clear error when it is not there."""
        ranks_path = os.path.join(directory, "tokenizer.tiktoken")
        if not os.path.exists(ranks_path):
            raise FileNotFoundError(
                f"No tokenizer at {directory}.\n  Train one first: run notebooks/01_tokenizer.ipynb "
                f"(or `nanochat run --only 01`), or set NANOCHAT_BASE_DIR to where one was trained."
            )
        meta = json.load(open(os.path.join(directory, "tokenizer.json")))
        # read the ranks ourselves: tiktoken's loader caches a file by its path (in /tmp/data-gym-cache),
        # so a tokenizer retrained in the same base dir would load as the old one
        with open(ranks_path, "rb") as f:
            ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in f if line.strip())}
        enc = tiktoken.Encoding(name="nanochat", pat_str=meta["pattern"], mergeable_ranks=ranks, special_tokens=meta["special_tokens"])
        return cls(enc)

    # ---- vocabulary

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def encode_special(self, name: str) -> int:
        return self.enc.encode_single_token(name)

    def id_to_token(self, token_id: int) -> str:
        return self.enc.decode_single_token_bytes(token_id).decode("utf-8", errors="replace")

    def token_bytes(self) -> torch.Tensor:
        """Bytes per token id (int32), 0 for specials: the denominator of bits-per-byte."""
        special_ids = set(self.enc._special_tokens.values())
        sizes = [0 if i in special_ids else len(self.enc.decode_single_token_bytes(i)) for i in range(self.get_vocab_size())]
        return torch.tensor(sizes, dtype=torch.int32)

    def fingerprint(self) -> str:
        """A short hash of the vocabulary, stored in checkpoints to catch a tokenizer swap."""
        h = hashlib.sha256()
        for token, rank in sorted(self.enc._mergeable_ranks.items(), key=lambda kv: kv[1]):
            h.update(token + rank.to_bytes(4, "little"))
        h.update(json.dumps(self.enc._special_tokens, sort_keys=True).encode())
        return h.hexdigest()[:16]

    # ---- encoding and decoding

    def _as_id(self, token: int | str | None) -> int | None:
        return self.encode_special(token) if isinstance(token, str) else token

    def encode(self, text: str | list[str], prepend: int | str | None = None, append: int | str | None = None,
               num_threads: int = 8) -> list[int] | list[list[int]]:
        """Text -> ids (a list of texts -> a list of id lists, encoded in parallel).

        Special-token strings inside the text are encoded as plain text: only the
        program, never the data, can emit a special token. prepend/append take an id
        or a special token's name, e.g. prepend="<|bos|>".
        """
        first, last = self._as_id(prepend), self._as_id(append)
        head = [first] if first is not None else []
        tail = [last] if last is not None else []
        if isinstance(text, str):
            return head + self.enc.encode_ordinary(text) + tail
        if not isinstance(text, list):
            raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")
        return [head + ids + tail for ids in self.enc.encode_ordinary_batch(text, num_threads=num_threads)]

    __call__ = encode

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    # ---- conversations

    def render_conversation(self, conversation, max_tokens: int = 2048) -> tuple[list[int], list[int]]:
        """A chat -> (ids, mask). mask[i] = 1 where the model is trained to produce ids[i].

        The model learns to write what the assistant writes (its text, its tool calls,
        and the <|assistant_end|> that hands the turn back), never what the user or the
        tool says. A system message is folded into the first user turn.
        """
        messages = _normalise_messages(conversation)
        ids, mask = [], []

        def add(tokens: list[int], supervised: int):
            ids.extend(tokens)
            mask.extend([supervised] * len(tokens))

        special = self.encode_special
        add([self.bos_token_id], 0)
        for i, message in enumerate(messages):
            expected = "user" if i % 2 == 0 else "assistant"
            if message["role"] != expected:
                raise ValueError(f"message {i} is from {message['role']!r}, expected {expected!r}: turns must alternate user/assistant")
            content = message["content"]
            if expected == "user":
                if not isinstance(content, str):
                    raise ValueError(f"user message {i} must be a string")
                add([special("<|user_start|>")] + self.encode(content) + [special("<|user_end|>")], 0)
                continue
            add([special("<|assistant_start|>")], 0)
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                tokens = self.encode(part["text"])
                if part["type"] == "text":
                    add(tokens, 1)
                elif part["type"] == "python":  # the model writes the tool call
                    add([special("<|python_start|>")] + tokens + [special("<|python_end|>")], 1)
                elif part["type"] == "python_output":  # the tool writes this, not the model
                    add([special("<|output_start|>")] + tokens + [special("<|output_end|>")], 0)
                else:
                    raise ValueError(f"unknown content part type {part['type']!r} in message {i}")
            add([special("<|assistant_end|>")], 1)
        return ids[:max_tokens], mask[:max_tokens]

    def render_for_completion(self, conversation) -> list[int]:
        """A chat ending in an assistant turn -> the ids that prompt the model to write that turn."""
        messages = _normalise_messages(conversation)
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError("render_for_completion expects the last message to be the assistant's (it is dropped)")
        ids, _ = self.render_conversation({"messages": messages[:-1]}, max_tokens=10**9)
        return ids + [self.encode_special("<|assistant_start|>")]

    def show_tokens(self, ids: list[int], mask: list[int] | None = None) -> str:
        """HTML with every token on a coloured background (mask 1 = underlined), for notebooks."""
        colors = ["#fde2e4", "#e2ece9", "#dfe7fd", "#fff1c1", "#e8dff5", "#d7f9f1"]
        spans = []
        for i, token_id in enumerate(ids):
            text = html.escape(self.id_to_token(token_id)).replace("\n", "\\n")
            style = f"background:{colors[i % len(colors)]};padding:1px 0;border-radius:2px"
            if mask is not None and mask[i]:
                style += ";text-decoration:underline;text-decoration-color:#c00"
            spans.append(f'<span title="{token_id}" style="{style}">{text}</span>')
        return f'<div style="font-family:monospace;line-height:1.8;white-space:pre-wrap">{"".join(spans)}</div>'


def _normalise_messages(conversation) -> list[dict]:
    """Accept {"messages": [...]} or a bare list; fold a leading system message into the first user turn."""
    messages = conversation["messages"] if isinstance(conversation, dict) else conversation
    messages = [dict(m) for m in messages]
    if messages and messages[0]["role"] == "system":
        if len(messages) < 2 or messages[1]["role"] != "user":
            raise ValueError("a system message must be followed by a user message")
        messages[1]["content"] = messages[0]["content"] + "\n\n" + messages[1]["content"]
        messages = messages[1:]
    return messages


def train_tokenizer(texts: Iterable[str], vocab_size: int, directory: str | None = None) -> Tokenizer:
    """Learn a BPE vocabulary of vocab_size tokens (specials included) and save it (default: base_dir/tokenizer)."""
    import rustbpe

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + {len(SPECIAL_TOKENS)} specials), got {vocab_size}")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(texts, vocab_size - len(SPECIAL_TOKENS), pattern=SPLIT_PATTERN)
    tokenizer = Tokenizer.from_ranks(dict(trainer.get_mergeable_ranks()), trainer.get_pattern())
    tokenizer.save(directory or common.tokenizer_dir())
    return tokenizer


def get_tokenizer() -> Tokenizer:
    """The tokenizer the tokenizer stage trained (base_dir/tokenizer)."""
    return Tokenizer.load(common.tokenizer_dir())


def get_token_bytes(device: str | torch.device = "cpu") -> torch.Tensor:
    """token_bytes.pt (bytes per token id) on a device, for bits-per-byte."""
    path = os.path.join(common.tokenizer_dir(), "token_bytes.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {path}: train the tokenizer first (notebooks/01_tokenizer.ipynb).")
    return torch.load(path, map_location=device)


# ---- reference tokenizers (GPT-2, GPT-4) for comparison

# The files tiktoken needs for each encoding, with the sha256 tiktoken itself checks.
REFERENCE_FILES = {
    "gpt2": [("gpt-2/encodings/main/vocab.bpe", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
             ("gpt-2/encodings/main/encoder.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")],
    "r50k_base": [("encodings/r50k_base.tiktoken", "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")],
    "cl100k_base": [("encodings/cl100k_base.tiktoken", "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7")],
    "o200k_base": [("encodings/o200k_base.tiktoken", "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d")],
}


def reference_encoding(name: str) -> tiktoken.Encoding:
    """A tiktoken encoding (gpt2 = GPT-2, cl100k_base = GPT-4, ...) fetched through nanochat.hub.

    The files are stored where tiktoken looks for them (TIKTOKEN_CACHE_DIR, by default
    base_dir/tiktoken, named by the sha1 of tiktoken's own URL), so tiktoken's own
    constructor builds the encoding and checks the hashes; only the download host moves
    (NANOCHAT_TIKTOKEN_BASE_URL).
    """
    if name not in REFERENCE_FILES:
        raise ValueError(f"unknown reference encoding {name!r}; choose from {sorted(REFERENCE_FILES)}")
    cache_dir = os.environ.setdefault("TIKTOKEN_CACHE_DIR", common.tiktoken_cache_dir())
    for path, sha256 in REFERENCE_FILES[name]:
        canonical_url = f"{hub.DEFAULT_TIKTOKEN_BASE_URL}/{path}"
        cache_key = hashlib.sha1(canonical_url.encode()).hexdigest()
        hub.download(hub.tiktoken_url(path), os.path.join(cache_dir, cache_key), sha256=sha256, desc=os.path.basename(path))
    return tiktoken.get_encoding(name)
