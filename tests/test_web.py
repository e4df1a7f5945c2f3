"""The chat web server, over real HTTP on loopback: streaming, validation, the bounded queue,
disconnects that free their worker, the stats. The sessions are scripted (tests/chat_models.py),
so each test knows what the 'model' will write and how slowly."""
import json
import threading
import time

import httpx
import pytest

from nanochat.ui.session import ChatSession
from nanochat.ui.web import BackgroundServer, create_app
from tests.chat_models import script, tiny_chat_model

@pytest.fixture
def make_server(base_dir):
    model, tokenizer = tiny_chat_model(sequence_len=256)
    servers = []

    def make(workers=1, reply="Paris is the capital.", endless=False, delay=0.0, settings=None, **kwargs):
        sessions = [ChatSession(model, tokenizer, **({"max_tokens": 200} | (settings or {}))) for _ in range(workers)]
        for session in sessions:
            script(session, tokenizer.encode(reply), endless=endless, delay=delay)
        server = BackgroundServer(create_app(sessions, **kwargs))
        server.sessions = sessions
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def ask(text="hi", **settings):
    return {"messages": [{"role": "user", "content": text}], **settings}


def stream_events(client, url, body):
    """POST and yield (seconds since the request, event) as each SSE event arrives."""
    start = time.perf_counter()
    with client.stream("POST", url + "/chat/completions", json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: "):
                yield time.perf_counter() - start, json.loads(line[len("data: "):])


def test_the_page_starts_from_the_servers_sampling_settings(make_server):
    server = make_server(settings={"temperature": 0.25, "top_k": 7})
    with httpx.Client(timeout=30) as client:
        page = client.get(server.url + "/").text
    assert 'id="temperature" type="number" min="0" max="2" step="0.05" value="0.25"' in page
    assert 'id="top_k" type="number" min="0" max="200" step="1" value="7"' in page


def test_the_page_health_and_a_streamed_reply(make_server):
    server = make_server(reply="Paris is the capital of France.", delay=0.03)
    with httpx.Client(timeout=30) as client:
        page = client.get(server.url + "/")
        assert page.status_code == 200 and "<title>nanochat</title>" in page.text
        assert client.get(server.url + "/health").json()["status"] == "ok"
        events = list(stream_events(client, server.url, ask("What is the capital of France?")))
        stats = client.get(server.url + "/stats").json()
    texts = [e for _, e in events if e["type"] == "text"]
    assert "".join(e["text"] for e in texts) == "Paris is the capital of France."
    assert events[-1][1] == {"type": "done", "reason": "stop"}
    first, last = events[0][0], events[-1][0]
    assert last - first > 0.3  # it arrived piece by piece as it was written, not in one lump at the end
    assert stats["requests"] == 1 and stats["tokens"] > len(texts) - 1 and stats["busy"] == 0


BAD_REQUESTS = [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"messages": []}).encode(), 400, "non-empty list"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}] * 2}).encode(), 400, "expected 'assistant'"),
    (json.dumps({"messages": [{"role": "system", "content": "x"}]}).encode(), 400, "expected 'user'"),
    (json.dumps({"messages": [{"role": "user", "content": 5}]}).encode(), 400, "string 'content'"),
    (json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}).encode(),
     400, "last message must be the user's"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 8001}]}).encode(), 400, "at most 8,000"),
    (json.dumps({"messages": [{"role": u, "content": "x" * 7000} for u in ["user", "assistant"] * 2 + ["user"]]}).encode(),
     400, "at most 32,000"),
    (json.dumps({"messages": [{"role": u, "content": "x"} for u in ["user", "assistant"] * 250 + ["user"]]}).encode(),
     400, "at most 500"),
    (json.dumps(ask(temperature=3)).encode(), 400, "temperature must be"),
    (json.dumps(ask(temperature="hot")).encode(), 400, "temperature must be"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "temperature must be"),
    (json.dumps(ask(top_k=500)).encode(), 400, "top_k must be"),
    (json.dumps(ask(top_k=2.5)).encode(), 400, "top_k must be"),
    (json.dumps(ask(max_tokens=0)).encode(), 400, "max_tokens must be"),
    (json.dumps(ask(max_tokens=10**400)).encode(), 400, "max_tokens must be"),
    (b"x" * 300_000, 413, "larger than"),
]


def test_bad_requests_get_a_4xx_that_says_why_and_never_reach_a_model(make_server):
    server = make_server()
    generated = []
    server.sessions[0].engine.generate = lambda *a, **k: generated.append(1) or iter(())
    with httpx.Client(timeout=30) as client:
        for body, status, message in BAD_REQUESTS:
            response = client.post(server.url + "/chat/completions", content=body,
                                   headers={"Content-Type": "application/json"})
            assert response.status_code == status and message in response.json()["error"], (body[:80], response.text)
        assert generated == []
        assert client.get(server.url + "/stats").json()["errors"] == len(BAD_REQUESTS)


def test_a_full_queue_answers_503_and_a_disconnect_frees_its_worker(make_server):
    server = make_server(workers=1, reply="la ", endless=True, delay=0.02, max_queue=1)
    first = httpx.Client(timeout=30)
    response = first.send(first.build_request("POST", server.url + "/chat/completions", json=ask()),
                          stream=True)
    lines = response.iter_lines()
    assert next(line for line in lines if line.startswith("data: "))  # the only worker is streaming
    waiting = threading.Thread(target=lambda: httpx.post(server.url + "/chat/completions", timeout=60,
                                                         json=ask(max_tokens=3)))
    waiting.start()  # the second request waits in the queue (of one)
    with httpx.Client(timeout=30) as client:
        deadline = time.time() + 10
        while client.get(server.url + "/stats").json()["queue"] < 1:
            assert time.time() < deadline
            time.sleep(0.05)
        third = client.post(server.url + "/chat/completions", json=ask())
        assert third.status_code == 503 and third.headers["Retry-After"] and "queue is full" in third.json()["error"]
        response.close()  # the first client goes away mid-reply...
        first.close()
        waiting.join(30)  # ...its worker is freed, and the queued request is served
        assert not waiting.is_alive()
        stats = client.get(server.url + "/stats").json()
        assert stats["busy"] == 0 and stats["queue"] == 0 and stats["rejected_busy"] == 1
        assert server.sessions[0].reply_tokens <= 3  # the queued request's reply ran to its own max_tokens
        assert stats["tokens"] < 150  # the abandoned reply stopped when its client left, far short of its 200


def test_tool_calls_stream_as_events_and_a_conversation_can_continue(make_server):
    server = make_server(reply="ok")
    tok = server.sessions[0].tokenizer
    special = tok.encode_special
    script(server.sessions[0], [special("<|python_start|>")] + tok.encode("12*3") + [special("<|python_end|>"),
           special("<|output_start|>")] + tok.encode("36") + [special("<|output_end|>")] + tok.encode(" so 36"))
    with httpx.Client(timeout=30) as client:
        events = [e for _, e in stream_events(client, server.url, ask("12*3?"))]
        assert {"type": "tool_call", "text": "12*3"} in events and {"type": "tool_output", "text": "36"} in events
        parts = [{"type": "python", "text": "12*3"}, {"type": "python_output", "text": "36"},
                 {"type": "text", "text": " so 36"}]
        script(server.sessions[0], tok.encode("yes"))
        body = {"messages": [{"role": "user", "content": "12*3?"}, {"role": "assistant", "content": parts},
                             {"role": "user", "content": "sure?"}]}
        events = [e for _, e in stream_events(client, server.url, body)]
    assert "".join(e.get("text", "") for e in events) == "yes"
    prompt = server.sessions[0].engine.prompts[-1]
    assert prompt.count(special("<|python_start|>")) == 1  # the earlier reply's tool call, rendered as generated


def test_32_concurrent_clients_then_100_bad_requests_and_it_still_serves(make_server):
    import os
    import random

    import psutil

    server = make_server(workers=4, reply="Paris is the capital of France.", delay=0.002, max_queue=64)
    process = psutil.Process(os.getpid())
    rss_before = process.memory_info().rss
    results, failures = [], []

    def client(i):
        try:
            with httpx.Client(timeout=60) as c:
                events = [e for _, e in stream_events(c, server.url, ask(f"question {i}"))]
            results.append("".join(e.get("text", "") for e in events))
        except Exception as e:  # noqa: BLE001 (counted, then asserted none)
            failures.append(repr(e))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == [] and results == ["Paris is the capital of France."] * 32

    rng = random.Random(0)
    bad = [body for body, _, _ in BAD_REQUESTS] * 5
    bad += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000))) for _ in range(100 - len(bad))]
    with httpx.Client(timeout=30) as c:
        statuses = [c.post(server.url + "/chat/completions", content=body).status_code for body in bad[:100]]
        assert len(statuses) == 100 and all(400 <= s < 500 for s in statuses), statuses
        events = [e for _, e in stream_events(c, server.url, ask())]
        assert events[-1]["type"] == "done"  # still serving
        stats = c.get(server.url + "/stats").json()
    assert stats["requests"] == 32 + 100 + 1 and stats["errors"] == 100 and stats["busy"] == 0
    assert process.memory_info().rss - rss_before < 200 * 2**20  # bounded: no growth per request to speak of
