"""Stand-ins for tests: models for grading (one that always says the reference answer, one that
guesses) and a scripted engine for the chat views (it 'generates' given tokens).

Both have what the graders use of a model: model(idx) -> logits (B, T, V), with a KV cache
for the Engine (the token ids themselves are stored as keys, so a row's whole history is
known at every step), and model.config.sequence_len.
"""
import time

import torch

from nanochat.gpt import GPTConfig, KVCache


class HistoryModel(torch.nn.Module):
    """Base: remembers every row's tokens; subclasses choose each row's next token from its history."""

    def __init__(self, tokenizer, sequence_len: int = 4096):
        super().__init__()
        self.tokenizer = tokenizer
        self.config = GPTConfig(sequence_len=sequence_len, vocab_size=tokenizer.get_vocab_size(),
                                n_layer=1, n_head=1, n_kv_head=1, n_embd=2)
        self.assistant_start = tokenizer.encode_special("<|assistant_start|>")

    def new_kv_cache(self, batch_size, max_len):
        return KVCache(self.config, batch_size, max_len, "cpu", torch.float32)

    def forward(self, idx, kv_cache=None):
        B, T = idx.shape
        if kv_cache is not None:
            ids = idx.float()[:, None, :, None].expand(B, 1, T, 2)  # (B, Hkv=1, T, D=2): a token's key is its id
            keys, _ = kv_cache.insert_kv(0, ids, ids)
            kv_cache.advance(T)
            histories = keys[:, 0, :, 0].long().tolist()
            logits = torch.zeros(B, T, self.config.vocab_size)
            for b in range(B):
                logits[b, -1] = self.next_logits(histories[b])
            return logits
        # no cache (multiple choice, right-padded rows): the reply's first token after each prompt
        logits = torch.zeros(B, T, self.config.vocab_size)
        for b, row in enumerate(idx.tolist()):
            if self.assistant_start in row:
                k = row.index(self.assistant_start)
                logits[b, k] = self.next_logits(row[:k + 1])
        return logits

    def next_logits(self, history: list[int]) -> torch.Tensor:
        raise NotImplementedError


class OracleModel(HistoryModel):
    """Says the reference reply of every conversation it was shown (skipping what the tool writes)."""

    def __init__(self, tokenizer, conversations, sequence_len: int = 4096):
        super().__init__(tokenizer, sequence_len)
        special = tokenizer.encode_special
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")
        self.assistant_end = special("<|assistant_end|>")
        self.scripts = {}
        for conversation in conversations:
            prompt = tokenizer.render_for_completion(conversation)
            ids, _ = tokenizer.render_conversation(conversation, max_tokens=10**9)
            self.scripts[tuple(prompt)] = self.without_tool_output(ids[len(prompt):])

    def without_tool_output(self, ids: list[int]) -> list[int]:
        """What the model itself writes: the engine forces <|output_start|> ... <|output_end|>."""
        said, inside = [], False
        for token in ids:
            if token == self.output_start:
                inside = True
            if not inside:
                said.append(token)
            if token == self.output_end:
                inside = False
        return said

    def next_logits(self, history):
        k = history.index(self.assistant_start)
        script = self.scripts[tuple(history[:k + 1])]
        said = len(self.without_tool_output(history[k + 1:]))
        logits = torch.zeros(self.config.vocab_size)
        logits[script[said] if said < len(script) else self.assistant_end] = 10.0
        return logits


class GuessingModel(HistoryModel):
    """Uniformly random logits, the same for the same history (so 1 rank and 2 ranks guess alike)."""

    def next_logits(self, history):
        seed = hash(tuple(history)) % (2**31)
        return torch.randn(self.config.vocab_size, generator=torch.Generator().manual_seed(seed))


class ScriptedEngine:
    """Stands in for the Engine: 'generates' the given tokens, one per step, as Engine.generate yields them."""

    def __init__(self, tokens, stop_tokens, endless=False, delay=0.0):
        self.tokens, self.stop_tokens, self.endless, self.delay = tokens, stop_tokens, endless, delay
        self.prompts = []

    def generate(self, prompt, num_samples, max_tokens, temperature, top_k, seed):
        self.prompts.append(prompt)
        for step in range(max_tokens):
            if step >= len(self.tokens) and not self.endless:
                return
            time.sleep(self.delay)  # a real model takes a while per token
            yield [self.tokens[step % len(self.tokens)]], [1]


def script(session, tokens, endless=False, delay=0.0):
    """Make the session's next reply these tokens (then <|assistant_end|>, unless endless)."""
    end = session.tokenizer.encode_special("<|assistant_end|>")
    session.engine = ScriptedEngine(tokens + ([] if endless else [end]), {end}, endless, delay)


CHAT_TEXT = ["The capital of France is Paris. " * 20, "One plus one is two, and 12*3 is 36. " * 20]


def tiny_chat_model(sequence_len: int):
    """A depth-1 random model over a 300-token tokenizer trained (into the base dir) on ASCII text,
    so accents and emoji stay raw bytes: for the chat views' tests, which check plumbing, not words."""
    from nanochat.gpt import build_model, config_for_depth
    from nanochat.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(CHAT_TEXT, vocab_size=300)
    torch.manual_seed(0)
    return build_model(config_for_depth(1, vocab_size=tokenizer.get_vocab_size(), sequence_len=sequence_len)), tokenizer
