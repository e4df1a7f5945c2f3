"""Chat with a trained model in the terminal.

    nanochat chat                          # the most trained model there is (rl > sft > mid > base)
    nanochat chat --phase base --depth 4   # a particular one
    nanochat chat --prompt "Why is the sky blue?" --temperature 0   # one answer, then exit

Each turn renders the whole conversation with the chat tokens (tokenizer.render_for_completion),
lets the Engine write the assistant's turn with its KV cache and the calculator tool, and
prints the reply as it is generated. Type `clear` to start a new conversation, `quit` to leave.
"""
import argparse
import contextlib
import os
import sys

from nanochat.checkpoint import PHASES, build_model_from_checkpoint, find_checkpoint
from nanochat.common import autodetect_device, get_base_dir
from nanochat.engine import Engine
from nanochat.tokenizer import get_tokenizer

# How a tool call reads in the terminal: <|python_start|>12*3<|python_end|><|output_start|>36<|output_end|>
# shows as [12*3 = 36].
TOOL_MARKS = {"<|python_start|>": "[", "<|python_end|>": "", "<|output_start|>": " = ", "<|output_end|>": "]"}


def most_trained_phase(base_dir: str) -> str:
    """The last phase with a complete checkpoint (rl, then sft, mid, base): the model most ready to chat."""
    for phase in reversed(PHASES):
        try:
            find_checkpoint(base_dir, phase)
            return phase
        except FileNotFoundError:
            continue
    raise FileNotFoundError(f"no checkpoint under {os.path.join(base_dir, 'checkpoints')}: train a model first "
                            f"(notebooks/05_pretrain.ipynb, or `nanochat run --profile tiny`), or set "
                            f"NANOCHAT_BASE_DIR to the base dir of a finished run")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nanochat chat", description="Chat with a trained model in the terminal.")
    parser.add_argument("--phase", choices=PHASES, help="which model (default: the most trained there is)")
    parser.add_argument("--depth", type=int, help="model depth (default: the largest of that phase)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the last)")
    parser.add_argument("--prompt", help="ask one question, print the answer and exit")
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=256, help="longest reply, in tokens")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", help="cuda, mps or cpu (default: the best there is)")
    args = parser.parse_args(argv)

    base_dir = get_base_dir()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # stdout is for the replies alone
            phase = args.phase or most_trained_phase(base_dir)
            model, meta = build_model_from_checkpoint(phase, args.depth, args.step,
                                                      device=args.device or autodetect_device())
    except FileNotFoundError as e:
        print(f"nanochat chat: {e}", file=sys.stderr)
        return 2
    model.eval()
    tokenizer = get_tokenizer()
    engine = Engine(model, tokenizer)
    print(f"nanochat chat: {phase} model d{meta['config']['n_layer']} (step {meta['step']}) from {base_dir}"
          + ("; a base model has not learned to chat, expect it to ramble" if phase == "base" else ""),
          file=sys.stderr)

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


if __name__ == "__main__":
    sys.exit(main())
