"""Chat with a trained model in the terminal.

    nanochat chat                          # the most trained model there is (rl > sft > mid > base)
    nanochat chat --phase base --depth 4   # a particular one
    nanochat chat --prompt "Why is the sky blue?" --temperature 0   # one answer, then exit

Each turn renders the whole conversation with the chat tokens (render_for_completion), lets
the Engine write the assistant's turn with its KV cache and the calculator tool, and prints
the reply as it is generated. The arguments are declared in nanochat/cli.py. Type `clear` to start a new conversation, `quit` to leave.
"""
import contextlib
import sys

from nanochat import common
from nanochat.checkpoint import load_model
from nanochat.engine import Engine

# How a tool call reads in the terminal: <|python_start|>12*3<|python_end|><|output_start|>36<|output_end|>
# shows as [12*3 = 36].
TOOL_MARKS = {"<|python_start|>": "[", "<|python_end|>": "", "<|output_start|>": " = ", "<|output_end|>": "]"}


def render_reply(tokenizer, ids: list[int]) -> str:
    """Generated ids -> display text, with tool calls shown as [expression = result]."""
    specials = {tokenizer.encode_special(name): mark for name, mark in TOOL_MARKS.items()}
    pieces, text_ids = [], []
    for token in ids:
        if token in specials:
            pieces.append(tokenizer.decode(text_ids) + specials[token])
            text_ids = []
        else:
            text_ids.append(token)
    return "".join(pieces) + tokenizer.decode(text_ids)


def stream_reply(engine, tokenizer, messages: list[dict], max_tokens: int, temperature: float, top_k: int | None,
                 seed: int, out=None) -> str:
    """Write the assistant's next turn to `out` (default stdout) as it is generated; return its text."""
    out = out or sys.stdout
    prompt = tokenizer.render_for_completion({"messages": messages + [{"role": "assistant", "content": ""}]})
    context = engine.model.config.sequence_len
    max_tokens = min(max_tokens, context - len(prompt))
    if max_tokens <= 0:
        raise ValueError(f"the conversation has {len(prompt)} tokens and fills the model's {context}-token context: "
                         f"type `clear` to start a new one")
    ids, shown = [], ""
    for column, _ in engine.generate(prompt, num_samples=1, max_tokens=max_tokens, temperature=temperature,
                                     top_k=top_k, seed=seed):
        if column[0] in engine.stop_tokens:
            break
        ids.append(column[0])
        text = render_reply(tokenizer, ids)
        if not text.endswith("\ufffd"):  # wait for the rest of a character split across tokens
            out.write(text[len(shown):])
            out.flush()
            shown = text
    text = render_reply(tokenizer, ids)
    out.write(text[len(shown):] + "\n")
    return text


def chat(args) -> int:
    """`nanochat chat`: one answer (--prompt) or a conversation until `quit`; returns the exit code."""
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the replies alone
        model, tokenizer, meta = load_model(args.phase, args.depth, args.step,
                                            device=args.device or common.autodetect_device())
    model.eval()
    engine = Engine(model, tokenizer)
    print(f"nanochat chat: {meta['phase']} model d{meta['config']['n_layer']} (step {meta['step']}) from "
          f"{meta['folder']}" + ("; a base model has not learned to chat, expect it to ramble"
                                 if meta["phase"] == "base" else ""), file=sys.stderr)

    reply = dict(max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    if args.prompt is not None:
        stream_reply(engine, tokenizer, [{"role": "user", "content": args.prompt}], **reply)
        return 0
    print("Type a message; `clear` starts over, `quit` (or Ctrl-D) leaves.", file=sys.stderr)
    messages = []
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line in ("quit", "exit"):
            return 0
        if line == "clear":
            messages = []
            continue
        if not line:
            continue
        messages.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        try:
            answer = stream_reply(engine, tokenizer, messages, **reply)
        except ValueError as e:
            print(f"\n{e}")
            messages.pop()
            continue
        messages.append({"role": "assistant", "content": answer})
        reply["seed"] += 1  # a new turn, new randomness

