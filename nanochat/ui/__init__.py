"""Ways to talk to a trained model: the terminal (terminal.py), the notebook widget (widget.py) and the
web page (web.py), all driving one chat session (session.py).

What every view shares is kept here, free of torch, so the command line can check its options
without loading it: how a reply is sampled unless told otherwise (also how the chat stages
measure "a reply that ends" as a user would meet it), and what one request may ask for.
"""
from dataclasses import dataclass

TEMPERATURE = 0.6
TOP_K = 50
MAX_TOKENS = 256


def sampling_settings(args) -> dict:
    """`nanochat chat`/`serve`'s sampling options as a ChatSession takes them (top-k 0, "all", is None)."""
    return dict(temperature=args.temperature, top_k=args.top_k or None, max_tokens=args.max_tokens)


@dataclass
class Limits:
    """What one request may ask for (nanochat's chat server used the same bounds)."""
    max_messages: int = 500
    max_message_chars: int = 8_000
    max_total_chars: int = 32_000
    max_body_bytes: int = 256 * 1024
    temperature: tuple[float, float] = (0.0, 2.0)
    top_k: tuple[int, int] = (0, 200)        # 0 = sample from the whole vocabulary
    max_tokens: tuple[int, int] = (1, 4096)
