"""One chat session: the conversation, the model's streamed reply, the tool calls, a stop button.

The terminal (`nanochat chat`) drives this; so will the notebook widget and the web server,
so all three behave alike. A reply streams as events:

    Event("text", "Paris is")          a piece of the reply's text, whole characters only
    Event("tool_call", "12*3")         the model called the calculator with this expression
    Event("tool_output", "36")         ...and the tool answered this (forced into the text, not sampled)
    Event("done", "stop" | "length" | "stopped")   why the reply ended

Text is decoded incrementally: each token's bytes go through an incremental UTF-8 decoder,
which holds back the first bytes of a character split across tokens until the rest arrives,
so a view never shows half a character and no token is decoded twice (re-decoding the whole
reply at every token would be quadratic in its length). The assistant's turn is kept as
content parts (text, python, python_output), exactly as the training data renders it, so the
next turn's prompt looks like what the model learned from.
"""
import codecs
import threading
from dataclasses import dataclass
from typing import Iterator

from nanochat.engine import Engine
from nanochat.ui import MAX_TOKENS, TEMPERATURE, TOP_K

TOOL_TOKENS = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")


@dataclass
class Event:
    kind: str   # "text", "tool_call", "tool_output" or "done"
    text: str


class ChatSession:
    """A conversation with one model; send() streams the assistant's reply and remembers it."""

    def __init__(self, model, tokenizer, temperature: float = TEMPERATURE, top_k: int | None = TOP_K,
                 max_tokens: int = MAX_TOKENS, seed: int = 42):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.engine = Engine(model, tokenizer)
        self.temperature, self.top_k, self.max_tokens, self.seed = temperature, top_k, max_tokens, seed
        self.messages: list[dict] = []
        self.reply_tokens = 0  # tokens generated for the last reply (tool output included)
        self._stop = threading.Event()
        self._marks = {tokenizer.encode_special(name): name for name in TOOL_TOKENS}

    @classmethod
    def load(cls, phase: str | None = None, depth: int | None = None, step: int | None = None,
             device: str | None = None, **settings) -> tuple["ChatSession", dict]:
        """The most trained model there is (or the one asked for), tokenizer checked; returns (session, meta)."""
        from nanochat.checkpoint import load_model
        from nanochat.common import autodetect_device

        model, tokenizer, meta = load_model(phase, depth, step, device=device or autodetect_device())
        return cls(model, tokenizer, **settings), meta

    def clear(self) -> None:
        """Start a new conversation."""
        self.messages = []

    def stop(self) -> None:
        """Ask the reply being streamed to end after the current token (safe from another thread)."""
        self._stop.set()

    def send(self, text: str) -> Iterator[Event]:
        """Add the user's message, stream the assistant's reply as events, then keep the reply.

        Raises ValueError (before anything streams) when the conversation already fills the
        model's context. A reply that was stopped or ran out of tokens is kept as it is."""
        self.messages.append({"role": "user", "content": text})
        prompt = self.tokenizer.render_for_completion({"messages": self.messages + [{"role": "assistant", "content": ""}]})
        context = self.model.config.sequence_len
        budget = min(self.max_tokens, context - len(prompt))
        if budget <= 0:
            self.messages.pop()
            raise ValueError(f"the conversation has {len(prompt)} tokens and fills the model's {context}-token "
                             f"context: clear it to start a new one")
        self._stop.clear()
        self.reply_tokens = 0
        parts, reason = [], "length"
        for event in self._stream(prompt, budget):
            if event.kind == "done":
                reason = event.text
            else:
                add_part(parts, event)
                yield event
        self.messages.append({"role": "assistant", "content": _simplify(parts)})
        self.seed += 1  # a new turn, new randomness
        yield Event("done", reason)

    def _stream(self, prompt: list[int], budget: int) -> Iterator[Event]:
        """Generate token by token, turning tokens into text deltas and tool events."""
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        section, pending = "text", []  # where we are (text, a tool call, its output) and its undelivered text
        for column, _ in self.engine.generate(prompt, num_samples=1, max_tokens=budget, temperature=self.temperature,
                                              top_k=self.top_k, seed=self.seed):
            token = column[0]
            self.reply_tokens += 1
            if token in self.engine.stop_tokens:
                yield from _flush_text(decoder, section)
                yield Event("done", "stop")
                return
            mark = self._marks.get(token)
            if mark is None:
                piece = decoder.decode(self.tokenizer.enc.decode_single_token_bytes(token))
                if section == "text" and piece:
                    yield Event("text", piece)
                elif piece:
                    pending.append(piece)
            else:
                tail = decoder.decode(b"", final=True)  # a tool mark ends whatever was being written
                if mark in ("<|python_start|>", "<|output_start|>"):
                    if tail and section == "text":
                        yield Event("text", tail)
                    section, pending = ("tool_call" if mark == "<|python_start|>" else "tool_output"), []
                else:
                    yield Event(section, "".join(pending) + tail)
                    section, pending = "text", []
            if self._stop.is_set():
                yield from _flush_text(decoder, section)
                yield Event("done", "stopped")
                return
        yield from _flush_text(decoder, section)
        yield Event("done", "length")


def _flush_text(decoder, section: str) -> Iterator[Event]:
    """The last bytes the decoder held back (an unfinished character shows as U+FFFD)."""
    tail = decoder.decode(b"", final=True)
    if tail and section == "text":
        yield Event("text", tail)


def add_part(parts: list[dict], event: Event) -> None:
    """Append an event to the assistant's content parts (consecutive text merges)."""
    kind = {"text": "text", "tool_call": "python", "tool_output": "python_output"}[event.kind]
    if kind == "text" and parts and parts[-1]["type"] == "text":
        parts[-1]["text"] += event.text
    else:
        parts.append({"type": kind, "text": event.text})


def _simplify(parts: list[dict]):
    """A reply that is only text is stored as a plain string, as in the chat datasets."""
    if all(part["type"] == "text" for part in parts):
        return "".join(part["text"] for part in parts)
    return parts
