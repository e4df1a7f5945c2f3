"""The chat server under load: many concurrent streaming clients, then a burst of bad requests.

    python bench/serve.py                       # 32 clients, 2 workers, a random depth-2 model
    python bench/serve.py --clients 64 --workers 4 --max-tokens 64
    python bench/serve.py --phase sft           # a trained model from the base dir instead

Starts `nanochat serve`'s app on loopback in this process, fires --clients requests at once
(each streams its reply; the queue holds them all), and prints time to first token (p50, p95),
the whole-request time, the server's tokens/s, errors, and the process's memory before and
after. Then 100 bad requests (malformed JSON, out-of-range settings, oversized and random
bodies): every one must get a 4xx, and the server must still answer. A measurement, not a test.
"""
import argparse
import json
import os
import random
import statistics
import threading
import time

import httpx
import psutil
import torch

from nanochat.gpt import build_model, config_for_depth
from nanochat.tokenizer import train_tokenizer
from nanochat.ui.session import ChatSession
from nanochat.ui.web import BackgroundServer, create_app


def tiny_model():
    """A random depth-2 model over a small tokenizer: what matters here is the serving, not the words."""
    import tempfile
    os.environ.setdefault("NANOCHAT_BASE_DIR", tempfile.mkdtemp(prefix="nanochat-bench-"))
    tokenizer = train_tokenizer(["The capital of France is Paris. Twelve times three is 36. " * 200], vocab_size=512)
    torch.manual_seed(0)
    return build_model(config_for_depth(2, vocab_size=tokenizer.get_vocab_size(), sequence_len=512)).eval(), tokenizer


def one_client(url: str, body: dict, out: list) -> None:
    """Stream one reply; record (time to first event, total time, events) or the error."""
    start = time.perf_counter()
    first, count = None, 0
    try:
        with httpx.Client(timeout=600) as client:
            with client.stream("POST", url + "/chat/completions", json=body) as response:
                response.raise_for_status()
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        first = first or time.perf_counter() - start
                        count += 1
                        if json.loads(line[6:])["type"] == "error":
                            raise RuntimeError(line)
        out.append((first, time.perf_counter() - start, count))
    except Exception as e:  # noqa: BLE001 (reported)
        out.append(e)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--phase", help="load this trained model (default: a random depth-2 model)")
    args = parser.parse_args()
    if args.phase:
        from nanochat.checkpoint import load_model
        model, tokenizer, _ = load_model(args.phase)
    else:
        model, tokenizer = tiny_model()
    sessions = [ChatSession(model, tokenizer, max_tokens=args.max_tokens) for _ in range(args.workers)]
    server = BackgroundServer(create_app(sessions, max_queue=args.clients))
    process = psutil.Process()
    memory_before = process.memory_info().rss
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": args.max_tokens}
    results = []
    threads = [threading.Thread(target=one_client, args=(server.url, body, results)) for _ in range(args.clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    errors = [r for r in results if isinstance(r, Exception)]
    done = [r for r in results if not isinstance(r, Exception)]
    stats = httpx.get(server.url + "/stats").json()
    print(f"{args.clients} concurrent clients, {args.workers} workers, {args.max_tokens} tokens each, in {wall:.1f} s")
    print(f"  completed {len(done)}, errors {len(errors)}" + (f": {errors[0]!r}" if errors else ""))
    if done:
        firsts, totals = [r[0] for r in done], [r[1] for r in done]
        print(f"  time to first token  p50 {statistics.median(firsts):.2f} s   p95 {percentile(firsts, 0.95):.2f} s"
              "   (the later clients wait in the queue)")
        print(f"  whole request        p50 {statistics.median(totals):.2f} s   p95 {percentile(totals, 0.95):.2f} s")
    print(f"  server: {stats['tokens']} tokens, {stats['tokens_per_s']} tokens/s per worker while generating")
    print(f"  memory: {memory_before / 2**20:.0f} MiB before, {process.memory_info().rss / 2**20:.0f} MiB after")

    rng = random.Random(0)
    bad = [b"{not json", b"[]", json.dumps({"messages": []}).encode(), b"x" * 300_000,
           json.dumps({**body, "temperature": 9}).encode(), json.dumps({**body, "top_k": -1}).encode(),
           json.dumps({**body, "max_tokens": 10**9}).encode(),
           json.dumps({"messages": [{"role": "user", "content": "x" * 9000}]}).encode()]
    bad += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000))) for _ in range(100 - len(bad))]
    with httpx.Client(timeout=60) as client:
        statuses = [client.post(server.url + "/chat/completions", content=b).status_code for b in bad]
        alive = client.get(server.url + "/health").status_code == 200
    print(f"  100 bad requests: {sum(400 <= s < 500 for s in statuses)} got a 4xx, "
          f"{sum(s >= 500 for s in statuses)} a 5xx; the server {'still answers' if alive else 'is DOWN'}")
    server.stop()


if __name__ == "__main__":
    main()
