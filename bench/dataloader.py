"""How fast the loader makes batches, against how fast training eats them.

    python bench/dataloader.py                  # shards + tokenizer from NANOCHAT_BASE_DIR
    python bench/dataloader.py --shards 3 --seconds 3 --no-train

For T = 512 and 2048 and 1 and 2 tokenizer threads, it times the best-fit loader (and the
streaming loader, for comparison) over the train split: the first batch (which fills
the document buffer), then tokens/s in steady state, including all reading and
tokenizing, and the fraction of document tokens cropped. Then it times a few real
training steps of the cpu profile's model (depth, sequence length and batch from
nanochat/profiles/cpu.toml, Muon + AdamW) and prints how many times faster the loader
is. The loader should be at least 20x faster than training, so that it never sets the pace.

Shards come through nanochat.hub (point HF_ENDPOINT at `python -m nanochat.mirror` when
offline). The tokenizer is base_dir/tokenizer (notebook 01); without one, a temporary one
is trained on the shards with the cpu profile's vocabulary size.
"""
import argparse
import itertools
import os
import tempfile
import time

import torch

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from nanochat.dataloader import BestFitLoader, PackingStats, StreamingLoader
from nanochat.dataset import download_shards, iter_row_groups
from nanochat.tokenizer import get_tokenizer, train_tokenizer

PROFILE = os.path.join(os.path.dirname(__file__), "..", "nanochat", "profiles", "cpu.toml")
TOKENS_PER_BATCH = 16384  # B x T: B=32 at T=512, B=8 at T=2048


def load_tokenizer(vocab_size: int):
    """The course tokenizer if notebook 01 has trained one, else a temporary one of the cpu profile's size."""
    try:
        return get_tokenizer(), "base_dir/tokenizer"
    except FileNotFoundError:
        def text(max_chars=10_000_000):
            seen = 0
            for _, docs in iter_row_groups("train"):
                for doc in docs:
                    yield doc
                    seen += len(doc)
                    if seen >= max_chars:
                        return
        return train_tokenizer(text(), vocab_size, directory=tempfile.mkdtemp()), f"temporary, vocab {vocab_size}"


def time_loader(kind, tokenizer, T: int, threads: int, seconds: float, settle_documents: int = 1000) -> dict:
    """First-batch latency, then steady-state tokens/s (B*T per batch) for `seconds`.

    Steady state: after the loader has placed settle_documents documents (best-fit's
    default buffer turned over once), because a fresh buffer is packed differently.
    """
    B = TOKENS_PER_BATCH // T
    t0 = time.perf_counter()
    loader = kind(tokenizer, B, T, "cpu", split="train", rank=0, world_size=1, num_threads=threads)
    next(loader)
    first = time.perf_counter() - t0
    while loader.stats.documents < settle_documents:
        next(loader)
    loader.stats = PackingStats()
    batches, t0 = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - t0) < seconds:
        next(loader)
        batches += 1
    return {"first_s": first, "tokens_per_s": batches * B * T / elapsed,
            "crop": loader.stats.crop_fraction, "util": loader.stats.utilisation}


def time_training(vocab_size: int, steps: int) -> tuple[float, str]:
    """Tokens/s of real training steps (forward, backward, optimizer) of the cpu profile's model."""
    from nanochat.gpt import build_model, config_for_depth

    params = tomllib.load(open(PROFILE, "rb"))["stages"]["05_pretrain"]["parameters"]
    depth, T, B = params["depth"], params["max_seq_len"], params["device_batch_size"]
    model = build_model(config_for_depth(depth, vocab_size=vocab_size, sequence_len=T), "cpu")
    optimizer = model.setup_optimizers()
    inputs, targets = torch.randint(0, vocab_size, (2, B, T))
    for step in range(steps + 1):  # step 0 warms up and is not timed
        if step == 1:
            t0 = time.perf_counter()
        model(inputs, targets).backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    rate = steps * B * T / (time.perf_counter() - t0)
    return rate, f"d{depth}, {model.num_params() / 1e6:.1f}M params, B={B}, T={T}, vocab {vocab_size}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=3, help="shards to download (the last is val)")
    parser.add_argument("--seconds", type=float, default=4.0, help="steady-state timing per configuration")
    parser.add_argument("--train-steps", type=int, default=3, help="timed training steps")
    parser.add_argument("--no-train", action="store_true", help="skip timing the training step")
    args = parser.parse_args()

    profile = tomllib.load(open(PROFILE, "rb"))
    download_shards(args.shards)
    tokenizer, where = load_tokenizer(profile["stages"]["01_tokenizer"]["parameters"]["vocab_size"])
    print(f"tokenizer: {where} ({tokenizer.get_vocab_size()} tokens); {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; {TOKENS_PER_BATCH} tokens per batch\n")

    print(f"{'loader':<10}{'T':>6}{'threads':>9}{'first batch':>13}{'tokens/s':>12}{'cropped':>9}{'util':>7}")
    results = {}
    for kind, T, threads in itertools.product((BestFitLoader, StreamingLoader), (512, 2048), (1, 2)):
        r = results[kind.kind, T, threads] = time_loader(kind, tokenizer, T, threads, args.seconds)
        print(f"{kind.kind:<10}{T:>6}{threads:>9}{r['first_s']:>12.2f}s{r['tokens_per_s']:>12,.0f}"
              f"{r['crop']:>9.1%}{r['util']:>7.0%}")

    if args.no_train:
        return
    train_rate, model = time_training(tokenizer.get_vocab_size(), args.train_steps)
    slowest = min(r["tokens_per_s"] for (kind, _, _), r in results.items() if kind == "bestfit")
    print(f"\ntraining ({model}): {train_rate:,.0f} tokens/s over {args.train_steps} steps")
    print(f"slowest best-fit loader: {slowest:,.0f} tokens/s = {slowest / train_rate:,.0f}x training "
          f"({'ok' if slowest >= 20 * train_rate else 'TOO SLOW'}: the bar is 20x)")


if __name__ == "__main__":
    main()
