"""The chat session behind every view: whole characters only, tool calls as events, the reply kept
as the training data renders it, stop on request, a full context refused before anything streams."""
import threading

import pytest

from nanochat.ui.session import ChatSession
from tests.chat_models import script, tiny_chat_model

@pytest.fixture
def session(base_dir):
    model, tokenizer = tiny_chat_model(sequence_len=128)
    return ChatSession(model, tokenizer, max_tokens=100)


def test_characters_split_across_tokens_are_never_shown_in_half(session):
    text = "héllo wörld 😀 ok"
    tokens = session.tokenizer.encode(text)
    assert len(tokens) > len(text.encode()) // 2  # several multi-byte characters are split into byte tokens
    script(session, tokens)
    events = list(session.send("hi"))
    pieces = [e.text for e in events if e.kind == "text"]
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)
    assert len(pieces) >= 10  # streamed as it came, not all at the end
    assert events[-1].kind == "done" and events[-1].text == "stop"
    assert session.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}]


def test_tool_calls_are_events_and_the_reply_is_kept_as_content_parts(session):
    tok = session.tokenizer
    special = tok.encode_special
    tokens = (tok.encode("so ") + [special("<|python_start|>")] + tok.encode("12*3") + [special("<|python_end|>"),
              special("<|output_start|>")] + tok.encode("36") + [special("<|output_end|>")] + tok.encode(" ok"))
    script(session, tokens)
    events = []
    for e in session.send("what is 12*3?"):  # text streams token by token: merge it to compare
        if events and e.kind == events[-1][0] == "text":
            events[-1] = ("text", events[-1][1] + e.text)
        else:
            events.append((e.kind, e.text))
    assert events == [("text", "so "), ("tool_call", "12*3"), ("tool_output", "36"), ("text", " ok"), ("done", "stop")]
    parts = [{"type": "text", "text": "so "}, {"type": "python", "text": "12*3"},
             {"type": "python_output", "text": "36"}, {"type": "text", "text": " ok"}]
    assert session.messages[-1] == {"role": "assistant", "content": parts}
    # the next turn's prompt renders the kept reply exactly as the model generated it
    script(session, tok.encode("yes"))
    list(session.send("sure?"))
    prompt = session.engine.prompts[-1]
    assert prompt[:len(tokens) + 20].count(special("<|python_start|>")) == 1
    assert tokens == prompt[prompt.index(special("<|assistant_start|>")) + 1:][:len(tokens)]


def test_stop_ends_the_reply_and_keeps_what_was_written(session):
    script(session, session.tokenizer.encode("la "), endless=True)
    shown = []
    for event in session.send("sing"):
        shown.append(event)
        if len(shown) == 3:
            threading.Thread(target=session.stop).start()  # as a Stop button on another thread would
            threading.Event().wait(0.05)
    assert shown[-1].kind == "done" and shown[-1].text == "stopped"
    assert len(shown) < 20  # it ended soon after the request, not at max_tokens (100)
    written = "".join(e.text for e in shown if e.kind == "text")
    assert written and session.messages[-1]["content"] == written
    script(session, session.tokenizer.encode("ok"))
    assert [e.text for e in session.send("again")][-1] == "stop"  # the next reply is not stopped too


def test_a_reply_that_runs_out_of_tokens_says_so(session):
    session.max_tokens = 5
    script(session, session.tokenizer.encode("la "), endless=True)
    assert list(session.send("sing"))[-1].text == "length"


def test_a_full_context_is_refused_before_anything_streams(session):
    with pytest.raises(ValueError, match="fills the model's 128-token context"):
        next(session.send("Paris " * 200))
    assert session.messages == []  # the message that did not fit is not kept
    session.clear()
    assert session.messages == []
