"""Chat in a browser: `nanochat serve` runs this FastAPI app (uvicorn) in front of a pool of chat sessions.

    nanochat serve                          # http://127.0.0.1:8000, the most trained model
    nanochat serve --workers 2 --queue 16   # two replies at a time, at most 16 waiting

    GET  /                   the chat page (nanochat/ui/chat.html)
    POST /chat/completions   {"messages": [...], "temperature", "top_k", "max_tokens"} -> server-sent events
    GET  /health             {"status": "ok", ...}
    GET  /stats              requests, errors, tokens, tokens/s, queue length, workers busy

The API is stateless: each request carries the whole conversation, ending with the user's
message. A worker (one ChatSession: its own Engine, over one model per GPU, or one model
shared by the CPU workers) takes the request, and the reply streams back as events:

    data: {"type": "text", "text": "Paris"}        (also "tool_call", "tool_output")
    data: {"type": "done", "reason": "stop"}       ("length", "stopped")

Bad input is answered with a 4xx and a message before it reaches a model; when every worker
is busy and the queue is full, 503 with Retry-After. A client that disconnects stops its
reply, which frees its worker at the next token.
"""
import asyncio
import contextlib
import json
import math
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from nanochat.ui import Limits, sampling_settings
from nanochat.ui.session import ChatSession

PAGE = Path(__file__).with_name("chat.html")


class BadRequest(Exception):
    """The request cannot be served as sent; the message says why."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def validate(body: bytes, limits: Limits, defaults: dict) -> dict:
    """The request body -> {messages, temperature, top_k, max_tokens}, or BadRequest saying what is wrong."""
    if len(body) > limits.max_body_bytes:
        raise BadRequest(f"the request body is larger than {limits.max_body_bytes:,} bytes", 413)
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadRequest(f"the body is not valid JSON ({e})")
    if not isinstance(request, dict):
        raise BadRequest("the body must be a JSON object with a 'messages' list")
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {role, content}")
    if len(messages) > limits.max_messages:
        raise BadRequest(f"{len(messages)} messages; at most {limits.max_messages} are allowed")
    total = 0
    for i, message in enumerate(messages):
        expected = "user" if i % 2 == 0 else "assistant"
        if not isinstance(message, dict) or message.get("role") != expected:
            role = message.get("role") if isinstance(message, dict) else None
            raise BadRequest(f"message {i} has role {role!r}, expected {expected!r} (turns alternate, starting with the user)")
        chars = _content_chars(message.get("content"), assistant=expected == "assistant")
        if chars is None:
            raise BadRequest(f"message {i} needs a string 'content'" + (
                " (or, from the assistant, a list of {type: text|python|python_output, text})" if expected == "assistant" else ""))
        if chars > limits.max_message_chars:
            raise BadRequest(f"message {i} has {chars:,} characters; at most {limits.max_message_chars:,} are allowed")
        total += chars
    if total > limits.max_total_chars:
        raise BadRequest(f"the conversation has {total:,} characters; at most {limits.max_total_chars:,} are allowed")
    if messages[-1]["role"] != "user":
        raise BadRequest("the last message must be the user's: it is what the model answers")
    settings = {}
    for name, kind in (("temperature", float), ("top_k", int), ("max_tokens", int)):
        value = request.get(name, defaults[name])
        low, high = getattr(limits, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and isinstance(value, float):  # NaN, infinity, or 3.5 where an integer is meant
            number = math.isfinite(value) and (kind is float or value.is_integer())
        if not number or not low <= value <= high:
            raise BadRequest(f"{name} must be a{'n integer' if kind is int else ' number'} from {low} to {high}, not {value!r}")
        settings[name] = kind(value)
    messages = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str)
                 else [{"type": p["type"], "text": p["text"]} for p in m["content"]]} for m in messages]
    return {"messages": messages, **settings}


def _content_chars(content, assistant: bool) -> int | None:
    """Characters in a message's content; None if it is malformed. An assistant's reply may come
    back as content parts, so its tool calls render as the model wrote them."""
    if isinstance(content, str):
        return len(content)
    if not assistant or not isinstance(content, list):
        return None
    if not all(isinstance(p, dict) and p.get("type") in ("text", "python", "python_output")
               and isinstance(p.get("text"), str) for p in content):
        return None
    return sum(len(p["text"]) for p in content)


class Pool:
    """The workers (chat sessions) and the bounded queue of requests waiting for one."""

    def __init__(self, sessions: list[ChatSession], max_queue: int):
        self.free: asyncio.Queue | None = None  # made inside the server's event loop (start())
        self.sessions, self.max_queue = sessions, max_queue
        self.waiting = 0
        self.busy = 0

    def start(self) -> None:
        self.free = asyncio.Queue()
        for session in self.sessions:
            self.free.put_nowait(session)


class Stats:
    """Counters for /stats (updated from the event loop and the worker threads)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = self.errors = self.rejected = self.tokens = 0
        self.generating_seconds = 0.0
        self.started = time.time()

    def add(self, **counts) -> None:
        with self.lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)


def create_app(sessions: list[ChatSession], max_queue: int = 16, limits: Limits | None = None) -> FastAPI:
    """The app over these sessions (one per worker): tests pass their own, `nanochat serve` loads models."""
    limits = limits or Limits()
    pool, stats = Pool(sessions, max_queue), Stats()
    defaults = {"temperature": sessions[0].temperature, "top_k": sessions[0].top_k or 0,
                "max_tokens": sessions[0].max_tokens}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        pool.start()  # the queue of free workers belongs to the server's event loop
        yield

    app = FastAPI(title="nanochat", docs_url=None, redoc_url=None, lifespan=lifespan)

    # the page starts from the server's sampling settings (`nanochat serve --temperature ...`)
    page_html = PAGE.read_text().replace("__TEMPERATURE__", str(defaults["temperature"])).replace(
        "__TOP_K__", str(defaults["top_k"]))

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return page_html

    @app.get("/health")
    async def health():
        return {"status": "ok", "workers": len(pool.sessions)}

    @app.get("/stats")
    async def get_stats():
        with stats.lock:
            rate = stats.tokens / stats.generating_seconds if stats.generating_seconds else 0.0
            return {"requests": stats.requests, "errors": stats.errors, "rejected_busy": stats.rejected,
                    "tokens": stats.tokens, "tokens_per_s": round(rate, 1), "queue": pool.waiting,
                    "workers": len(pool.sessions), "busy": pool.busy, "uptime_s": round(time.time() - stats.started)}

    @app.post("/chat/completions")
    async def completions(request: Request):
        stats.add(requests=1)
        try:
            declared = request.headers.get("content-length", "0")
            if not declared.isdigit():
                raise BadRequest(f"Content-Length must be a number of bytes, not {declared!r}")
            if int(declared) > limits.max_body_bytes:  # refuse before reading it
                raise BadRequest(f"the request body is larger than {limits.max_body_bytes:,} bytes", 413)
            job = validate(await _read_body(request, limits.max_body_bytes), limits, defaults)
        except BadRequest as e:
            stats.add(errors=1)
            return JSONResponse({"error": str(e)}, status_code=e.status)
        if pool.free.empty() and pool.waiting >= pool.max_queue:
            stats.add(rejected=1)
            return JSONResponse({"error": "every worker is busy and the queue is full; retry in a few seconds"},
                                status_code=503, headers={"Retry-After": "5"})
        pool.waiting += 1
        try:
            session = await pool.free.get()
        finally:
            pool.waiting -= 1
        # The reply starts now, not when the response starts streaming: if the client is already gone,
        # it still runs to its end and frees its worker, instead of holding it forever.
        events, finished = _start_reply(session, job, pool, stats)
        return StreamingResponse(_forward(events, finished, session, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, read up to `limit` bytes (a client may send more than its Content-Length says)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BadRequest(f"the request body is larger than {limit:,} bytes", 413)
    return bytes(body)


def _start_reply(session: ChatSession, job: dict, pool: Pool, stats: Stats):
    """Generate one reply on a thread; its events go to an asyncio queue (None last), then it frees its worker."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    finished = threading.Event()  # this reply is over: the session may already be serving the next one
    session.messages = job["messages"][:-1]
    session.temperature, session.top_k, session.max_tokens = job["temperature"], job["top_k"] or None, job["max_tokens"]

    def generate():
        start = time.perf_counter()
        try:
            for event in session.send(job["messages"][-1]["content"]):
                loop.call_soon_threadsafe(events.put_nowait, {"type": event.kind, **(
                    {"reason": event.text} if event.kind == "done" else {"text": event.text})})
        except Exception as e:  # a full context, or a bug: the client hears of it, the server goes on
            loop.call_soon_threadsafe(events.put_nowait, {"type": "error", "error": str(e)})
            stats.add(errors=1)
        finally:
            stats.add(tokens=session.reply_tokens, generating_seconds=time.perf_counter() - start)
            finished.set()
            loop.call_soon_threadsafe(events.put_nowait, None)
            loop.call_soon_threadsafe(release)  # the worker is free once its reply has really ended

    def release():
        pool.busy -= 1
        pool.free.put_nowait(session)

    pool.busy += 1
    threading.Thread(target=generate, daemon=True).start()
    return events, finished


async def _forward(events: asyncio.Queue, finished: threading.Event, session: ChatSession, request: Request):
    """The reply's events as server-sent events; if the client disconnects, stop the reply."""
    try:
        while (event := await events.get()) is not None:
            yield f"data: {json.dumps(event)}\n\n"
            if await request.is_disconnected():
                break
    finally:
        # The client left (the server cancels this generator) or the reply ended. Nothing here may
        # await: a cancelled task would be cancelled again at the await, and the worker never freed.
        if not finished.is_set():  # (once finished, the session may be another request's: hands off)
            session.stop()


class BackgroundServer:
    """An app served by uvicorn on a thread of this process (a free port): for tests, benchmarks, notebooks."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.url = f"http://{host}:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError(f"the web server did not start on {self.url}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def serve(args) -> int:
    """`nanochat serve`: load the model (one per GPU, else one shared by --workers), then run uvicorn."""
    import torch
    import uvicorn

    from nanochat.checkpoint import load_model
    from nanochat.common import autodetect_device

    device = args.device or autodetect_device()
    settings = sampling_settings(args)
    if device == "cuda" and torch.cuda.device_count() > 1:
        devices = [f"cuda:{i}" for i in range(min(args.workers or torch.cuda.device_count(), torch.cuda.device_count()))]
        loaded = [load_model(args.phase, args.depth, args.step, device=d) for d in devices]
        sessions = [ChatSession(model, tokenizer, **settings) for model, tokenizer, _ in loaded]
        meta = loaded[0].meta
    else:  # one model, shared: inference does not change it, and each session has its own Engine
        model, tokenizer, meta = load_model(args.phase, args.depth, args.step, device=device)
        sessions = [ChatSession(model, tokenizer, **settings) for _ in range(args.workers or 1)]
    print(f"nanochat serve: the {meta['phase']} model d{meta['config']['n_layer']} (step {meta['step']}), "
          f"{len(sessions)} worker(s) on {device}; open http://{args.host}:{args.port}/")
    uvicorn.run(create_app(sessions, max_queue=args.queue), host=args.host, port=args.port, log_level="warning")
    return 0
