"""Chat with a model inside a notebook: an ipywidgets view over nanochat/ui/session.py.

    from nanochat.ui.session import ChatSession
    from nanochat.ui.widget import ChatWidget
    ChatWidget(ChatSession(model, tokenizer))        # the last line of a cell shows it

Type and press Enter; the reply streams in. The reply is generated on a background thread,
because a widget's callbacks run on the kernel's main thread: a generation loop there would
keep the Stop click from being handled until the reply had finished anyway. Everything the
model writes is HTML-escaped before it is shown: a reply containing a <script> tag reads as
text. Tool calls show apart from the text, as `12*3 → 36`.
"""
import html
import threading

import ipywidgets as widgets

from nanochat.ui.session import ChatSession, add_part

STYLE = """<style>
.nanochat-log { max-height: 420px; overflow-y: auto; font-family: system-ui, sans-serif; }
.nanochat-turn { margin: 4px 0; padding: 6px 10px; border-radius: 8px; white-space: pre-wrap; }
.nanochat-user { background: #e8f0fe; }
.nanochat-assistant { background: #f1f3f4; }
.nanochat-tool { font-family: monospace; background: #fff3cd; padding: 0 4px; border-radius: 4px; }
</style>"""


def reply_html(parts: list[dict]) -> str:
    """An assistant reply as safe HTML: text escaped, each tool call (and its output) in a tool span."""
    out, in_call = [], False
    for part in parts:
        text = html.escape(part["text"])
        if part["type"] == "python_output" and in_call:
            out.append(f" → {text}</span>")
            in_call = False
            continue
        if in_call:  # the call got no output (the tool refused it)
            out.append("</span>")
            in_call = False
        if part["type"] == "python":
            out.append(f'<span class="nanochat-tool">{text}')
            in_call = True
        else:
            out.append(text)
    return "".join(out) + ("</span>" if in_call else "")


def as_parts(content) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


class ChatWidget:
    """The conversation, an input box (Enter sends), Stop, Clear, Regenerate, temperature and top-k."""

    def __init__(self, session: ChatSession):
        self.session = session
        self.log = widgets.HTML()
        self.input = widgets.Text(placeholder="Message the model, then Enter", continuous_update=False,
                                  layout=widgets.Layout(width="100%"))
        self.stop_button = widgets.Button(description="Stop", disabled=True)
        self.clear_button = widgets.Button(description="Clear")
        self.regenerate_button = widgets.Button(description="Regenerate")
        self.temperature = widgets.FloatSlider(value=session.temperature, min=0.0, max=2.0, step=0.05,
                                               description="temperature")
        self.top_k = widgets.IntSlider(value=session.top_k or 0, min=0, max=200, description="top-k (0 = all)")
        self.status = widgets.Label()
        for widget, name in [(self.log, "log"), (self.input, "input"), (self.stop_button, "stop"),
                             (self.clear_button, "clear"), (self.regenerate_button, "regenerate"),
                             (self.status, "status")]:
            widget.add_class(f"nanochat-{name}")  # stable selectors for the browser test
        self.input.observe(self._on_enter, names="value")
        self.stop_button.on_click(lambda _: self.session.stop())
        self.clear_button.on_click(lambda _: self.clear())
        self.regenerate_button.on_click(lambda _: self.regenerate())
        buttons = widgets.HBox([self.stop_button, self.clear_button, self.regenerate_button])
        self.box = widgets.VBox([widgets.HTML(STYLE), self.log, self.input, buttons,
                                 widgets.HBox([self.temperature, self.top_k]), self.status])
        self._thread = None
        self._history_html = ""  # the finished turns, rendered once
        self._render()

    def _repr_mimebundle_(self, **kwargs):
        return self.box._repr_mimebundle_(**kwargs)

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def send(self, text: str) -> None:
        """Start streaming the reply to `text` on a background thread (ignored while a reply is streaming)."""
        text = text.strip()
        if not text or self.busy:
            return
        self.session.temperature = self.temperature.value
        self.session.top_k = self.top_k.value or None
        self._thread = threading.Thread(target=self._stream, args=(text,), daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the reply being streamed is finished (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)

    def clear(self) -> None:
        if not self.busy:
            self.session.clear()
            self._history_html = ""
            self.status.value = ""
            self._render()

    def regenerate(self) -> None:
        """Drop the last reply and ask again, with the current temperature and top-k."""
        messages = self.session.messages
        if self.busy or len(messages) < 2:
            return
        messages.pop()                      # the assistant's reply
        question = messages.pop()["content"]  # the user's message, sent again below
        self._history_html = self._turns_html(messages)
        self.send(question)

    def _on_enter(self, change) -> None:
        if change["new"] and not self.busy:
            text = change["new"]
            self.input.value = ""
            self.send(text)

    def _stream(self, text: str) -> None:
        """Runs on the background thread: feed the session's events into the log as they come."""
        self.stop_button.disabled, self.input.disabled = False, True
        self.status.value = "generating…"
        parts = []
        try:
            for event in self.session.send(text):
                if event.kind == "done":
                    self.status.value = {"stop": "", "length": "(the reply reached max tokens)",
                                         "stopped": "(stopped)"}[event.text]
                else:
                    add_part(parts, event)
                    self._render(text, parts)
        except ValueError as e:  # the conversation fills the model's context
            self.status.value = str(e)
        finally:
            self._history_html = self._turns_html(self.session.messages)
            self._render()
            self.stop_button.disabled, self.input.disabled = True, False

    def _turns_html(self, messages: list[dict]) -> str:
        return "".join(self._turn(m["role"], m["content"]) for m in messages)

    def _turn(self, role: str, content) -> str:
        body = html.escape(content) if role == "user" else reply_html(as_parts(content))
        return f'<div class="nanochat-turn nanochat-{role}">{body}</div>'

    def _render(self, pending_user: str | None = None, pending_parts: list[dict] | None = None) -> None:
        """The finished turns plus the reply being streamed."""
        live = ""
        if pending_user is not None:
            live = self._turn("user", pending_user) + self._turn("assistant", pending_parts or [])
        self.log.value = f'<div class="nanochat-log-inner">{self._history_html}{live}</div>'

