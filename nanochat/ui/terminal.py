"""Chat with a trained model in the terminal.

    nanochat chat                          # the most trained model there is (rl > sft > mid > base)
    nanochat chat --phase base --depth 4   # a particular one
    nanochat chat --prompt "Why is the sky blue?" --temperature 0   # one answer, then exit

A thin view over nanochat/ui/session.py (the session the widget and web page share): each
turn the session renders the conversation with the chat tokens, the Engine writes the
assistant's turn with its KV cache and the calculator tool, and this prints the reply as it
streams. The arguments are declared in nanochat/cli.py. Type `clear` to start a new
conversation, `quit` to leave.
"""
import contextlib
import sys
from typing import Iterable

from nanochat.ui import sampling_settings
from nanochat.ui.session import ChatSession, Event


def write_reply(events: Iterable[Event], out) -> str:
    """Write a streamed reply as it comes, tool calls as [expression = result]; return what was shown."""
    shown, open_call = [], False

    def write(text):
        shown.append(text)
        out.write(text)
        out.flush()

    for event in events:
        if open_call and event.kind != "tool_output":
            write("]")  # the tool gave no output (it refused): close the bracket anyway
            open_call = False
        if event.kind == "text":
            write(event.text)
        elif event.kind == "tool_call":
            write(f"[{event.text}")
            open_call = True
        elif event.kind == "tool_output":
            write(f" = {event.text}]")
            open_call = False
    write("\n")
    return "".join(shown)


def chat(args) -> int:
    """`nanochat chat`: one answer (--prompt) or a conversation until `quit`; returns the exit code."""
    with contextlib.redirect_stdout(sys.stderr):  # stdout is for the replies alone
        session, meta = ChatSession.load(args.phase, args.depth, args.step, device=args.device,
                                         seed=args.seed, **sampling_settings(args))
    print(f"nanochat chat: {meta['phase']} model d{meta['config']['n_layer']} (step {meta['step']}) from "
          f"{meta['folder']}" + ("; a base model has not learned to chat, expect it to ramble"
                                 if meta["phase"] == "base" else ""), file=sys.stderr)
    if args.prompt is not None:
        write_reply(session.send(args.prompt), sys.stdout)
        return 0
    print("Type a message; `clear` starts over, `quit` (or Ctrl-D) leaves.", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if line in ("quit", "exit"):
            return 0
        if line == "clear":
            session.clear()
            continue
        if not line:
            continue
        print("assistant> ", end="", flush=True)
        try:
            write_reply(session.send(line), sys.stdout)
        except ValueError as e:  # the conversation fills the context
            print(f"\n{e}")
