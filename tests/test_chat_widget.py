"""The notebook chat widget, driven in-process: Enter sends, the reply streams on a background thread,
Stop stops it mid-reply, Clear and Regenerate, tool calls shown apart, model output escaped."""
import time

import pytest

from nanochat.ui.session import ChatSession
from nanochat.ui.widget import ChatWidget
from tests.chat_models import script, tiny_chat_model

@pytest.fixture
def widget(base_dir):
    model, tokenizer = tiny_chat_model(sequence_len=256)
    return ChatWidget(ChatSession(model, tokenizer, max_tokens=100))


def test_enter_sends_and_the_reply_shows_escaped(widget):
    script(widget.session, widget.session.tokenizer.encode("<script>alert(1)</script> & ok"))
    widget.input.value = "hi <b>there</b>"  # what pressing Enter does to a Text(continuous_update=False)
    widget.wait(10)
    log = widget.log.value
    assert "hi &lt;b&gt;there&lt;/b&gt;" in log and "<b>" not in log
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; ok" in log and "<script>" not in log
    assert widget.input.value == "" and not widget.input.disabled and widget.stop_button.disabled
    assert widget.session.messages[-1]["content"] == "<script>alert(1)</script> & ok"


def test_stop_works_while_a_reply_is_streaming(widget):
    script(widget.session, widget.session.tokenizer.encode("la "), endless=True, delay=0.02)
    widget.send("sing")
    time.sleep(0.3)
    assert widget.busy and not widget.stop_button.disabled  # streaming on its thread; this one is free
    shown_mid_reply = widget.log.value
    assert "la" in shown_mid_reply  # the reply appears while it is written
    widget.stop_button.click()
    widget.wait(5)
    assert not widget.busy and widget.status.value == "(stopped)"
    reply = widget.session.messages[-1]["content"]
    assert 0 < len(widget.session.tokenizer.encode(reply)) < 100  # stopped early, not at max tokens


def test_a_second_message_while_busy_is_ignored(widget):
    script(widget.session, widget.session.tokenizer.encode("la "), endless=True, delay=0.02)
    widget.send("one")
    widget.send("two")
    widget.stop_button.click()
    widget.wait(5)
    assert [m["content"] for m in widget.session.messages if m["role"] == "user"] == ["one"]


def test_tool_calls_show_apart_from_the_text(widget):
    tok = widget.session.tokenizer
    special = tok.encode_special
    script(widget.session, tok.encode("so ") + [special("<|python_start|>")] + tok.encode("12*3")
           + [special("<|python_end|>"), special("<|output_start|>")] + tok.encode("36")
           + [special("<|output_end|>")] + tok.encode(" ok"))
    widget.send("12 times 3?")
    widget.wait(10)
    assert 'so <span class="nanochat-tool">12*3 → 36</span> ok' in widget.log.value


def test_clear_regenerate_and_the_sampling_controls(widget):
    tok = widget.session.tokenizer
    script(widget.session, tok.encode("first"))
    widget.temperature.value, widget.top_k.value = 0.0, 0
    widget.send("hello")
    widget.wait(10)
    assert widget.session.temperature == 0.0 and widget.session.top_k is None  # 0 = no top-k
    script(widget.session, tok.encode("second"))
    widget.regenerate_button.click()
    widget.wait(10)
    assert [m["content"] for m in widget.session.messages] == ["hello", "second"]
    assert "first" not in widget.log.value and "second" in widget.log.value
    widget.clear_button.click()
    assert widget.session.messages == [] and "hello" not in widget.log.value
