"""RL's bottleneck, sampling: completions/s and tokens/s, batched on one KV cache against one at a time.

    python bench/rollout.py                        # d6, vocab 32768, a 64-token prompt, 16 samples of 128 tokens
    python bench/rollout.py --depth 4 --samples 8 --repeats 5

A GRPO step (notebook 08) samples --samples replies to each prompt. Batched, the Engine
prefills the prompt once and decodes all replies together: one forward pass per new token
for the whole group. One at a time, every reply pays its own prefill and its own pass per
token. Both draw the same number of tokens (the replies never stop early: the model is
untrained and the stop tokens are switched off), so the ratio is the speed-up of batching.

A measurement, not a test: it prints the median and the min-max of --repeats runs of each.
"""
import argparse
import statistics
import time

import torch

from nanochat.common import autodetect_device
from nanochat.engine import Engine
from nanochat.gpt import build_model, config_for_depth
from nanochat.tokenizer import Tokenizer


def time_rollouts(engine: Engine, prompt: list[int], samples: int, tokens: int, batched: bool) -> float:
    """Seconds to draw `samples` replies of `tokens` tokens, in one batch or one by one."""
    start = time.perf_counter()
    if batched:
        engine.generate_batch(prompt, num_samples=samples, max_tokens=tokens, temperature=1.0, top_k=50)
    else:
        for i in range(samples):
            engine.generate_batch(prompt, num_samples=1, max_tokens=tokens, temperature=1.0, top_k=50, seed=i)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per reply")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=autodetect_device())
    args = parser.parse_args()

    torch.manual_seed(0)
    config = config_for_depth(args.depth, vocab_size=args.vocab, sequence_len=args.prompt_tokens + args.tokens)
    model = build_model(config, args.device).eval()
    tokenizer = Tokenizer.bytes_only()  # only its special tokens are used
    engine = Engine(model, tokenizer, tool=None)
    engine.stop_tokens = set()  # every reply runs its full length, so both ways draw the same tokens
    prompt = [tokenizer.get_bos_token_id()] + torch.randint(0, 256, (args.prompt_tokens - 1,)).tolist()
    print(f"d{args.depth} ({model.num_params() / 1e6:.1f}M parameters) on {args.device}: {args.samples} replies of "
          f"{args.tokens} tokens to a {args.prompt_tokens}-token prompt, {args.repeats} repeats each")
    with torch.inference_mode():
        time_rollouts(engine, prompt, 2, 4, batched=True)  # warm up the allocator and kernels
        results = {}
        for batched in (True, False):
            runs = [time_rollouts(engine, prompt, args.samples, args.tokens, batched) for _ in range(args.repeats)]
            results[batched] = runs
            name = "batched" if batched else "one at a time"
            median = statistics.median(runs)
            print(f"{name:>14}: {args.samples / median:7.2f} completions/s, {args.samples * args.tokens / median:8.0f} "
                  f"tokens/s (median of {args.repeats}: {median:.2f} s, min {min(runs):.2f}, max {max(runs):.2f})")
    speedup = statistics.median(results[False]) / statistics.median(results[True])
    print(f"batching is {speedup:.1f}x faster "
          f"(min-max {min(results[False]) / max(results[True]):.1f}-{max(results[False]) / min(results[True]):.1f}x)")


if __name__ == "__main__":
    main()
