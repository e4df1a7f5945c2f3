"""Benchmark: tokenizer training speed and memory, ours next to two peers.

    python bench/tokenizer_train.py            # 10 and 50 MB, vocab 8192 and 32768
    python bench/tokenizer_train.py --quick    # 10 MB, vocab 8192 only

Trains on the first N MB (UTF-8 bytes) of the course's pretraining shards with
  ours   this repo's rustbpe (the installed extension),
  pypi   rustbpe 0.1.0 from PyPI (Karpathy's), the one we compare against,
  hf     Hugging Face tokenizers' BpeTrainer with the same split regex.
Both rustbpes are imported as `rustbpe`, so the peers are pip-installed into private
folders (--cache-dir) and every training runs in a fresh subprocess whose PYTHONPATH picks
the right one. Each subprocess loads the text, then times only the training call, and
reports its peak RSS. We print medians over --repeats runs, ratios to PyPI rustbpe, and
how much of PyPI rustbpe's vocabulary each trainer also learned.

This is a measurement, not a test: it asserts nothing and takes a few minutes.
"""
import argparse
import glob
import json
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = {"pypi": "rustbpe==0.1.0", "hf": "tokenizers==0.23.3"}
TRAINERS = ["ours", "pypi", "hf"]
# nanochat's split (GPT-4's with numbers in groups of 1-2 digits); every trainer gets it.
PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""


# ---- inside a worker subprocess

def load_texts(data_pack: str, megabytes: float) -> list[str]:
    """Documents from the training shards, in order, until they reach `megabytes` of UTF-8."""
    import pyarrow.parquet as pq

    shards = sorted(glob.glob(os.path.join(data_pack, "pretrain", "shard_*.parquet")))[:-1]  # last = val
    if not shards:
        sys.exit(f"No pretraining shards in {data_pack}/pretrain: pass --data-pack <folder of the course data pack>.")
    texts, size = [], 0
    for shard in shards:
        parquet = pq.ParquetFile(shard)
        for group in range(parquet.num_row_groups):
            for text in parquet.read_row_group(group, columns=["text"]).column("text").to_pylist():
                texts.append(text)
                size += len(text.encode("utf-8"))
                if size >= megabytes * 1e6:
                    return texts
    sys.exit(f"The shards in {data_pack} hold only {size / 1e6:.1f} MB of text, {megabytes} MB were asked for.")


def gpt2_byte_decoder() -> dict[str, int]:
    """HF's ByteLevel shows each byte as a printable character; this maps them back.

    Printable Latin-1 bytes stand for themselves; the other bytes (controls, space, ...)
    are shifted to code points 256, 257, ... in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    decoder = {chr(b): b for b in printable}
    decoder.update({chr(256 + i): b for i, b in enumerate(shifted)})
    return decoder


def train_rustbpe(texts: list[str], vocab_size: int) -> list[bytes]:
    """Train whichever rustbpe PYTHONPATH put first; the vocabulary as bytes."""
    import rustbpe

    tokenizer = rustbpe.Tokenizer()
    tokenizer.train_from_iterator(iter(texts), vocab_size, pattern=PATTERN)
    return [token for token, _ in tokenizer.get_mergeable_ranks()]


def train_hf(texts: list[str], vocab_size: int) -> list[bytes]:
    """HF tokenizers: the same regex split, then byte-level BPE; the vocabulary as bytes."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tokenizer.train_from_iterator(texts, trainer)
    decoder = gpt2_byte_decoder()
    return [bytes(decoder[c] for c in token) for token in tokenizer.get_vocab()]


def worker(args) -> None:
    """Load the text, time one training, write {seconds, rss...} and the vocabulary."""
    texts = load_texts(args.data_pack, args.mb)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    train = train_hf if args.worker == "hf" else train_rustbpe
    start = time.perf_counter()
    vocab = train(texts, args.vocab)
    seconds = time.perf_counter() - start
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    module = sys.modules["tokenizers" if args.worker == "hf" else "rustbpe"].__file__
    with open(args.result, "wb") as f:
        pickle.dump({"seconds": seconds, "rss_before": rss_before, "rss_peak": rss_peak,
                     "vocab": vocab, "module": module}, f)


# ---- the driver

def install_peer(name: str, cache_dir: str) -> str:
    """pip-install a peer into its own folder once (it would shadow our rustbpe otherwise)."""
    requirement = PEERS[name]
    target = os.path.join(cache_dir, requirement.replace("==", "-"))
    package = requirement.split("==")[0]
    if not os.path.exists(os.path.join(target, package, "__init__.py")):
        print(f"installing {requirement} into {target}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", target, requirement],
                       check=True)
    return target


def run_once(trainer: str, mb: float, vocab: int, args, peer_dirs: dict[str, str]) -> dict:
    """One training in a fresh Python process; its measurements."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if trainer in peer_dirs:
        env["PYTHONPATH"] = peer_dirs[trainer]
    with tempfile.TemporaryDirectory() as tmp:
        result_path = os.path.join(tmp, "result.pkl")
        command = [sys.executable, os.path.abspath(__file__), "--worker", trainer, "--mb", str(mb),
                   "--vocab", str(vocab), "--data-pack", args.data_pack, "--result", result_path]
        subprocess.run(command, env=env, check=True, timeout=1800)
        with open(result_path, "rb") as f:
            result = pickle.load(f)
    expected_home = peer_dirs.get(trainer)
    if expected_home and not result["module"].startswith(expected_home):
        sys.exit(f"{trainer}: imported {result['module']}, expected a module under {expected_home}")
    if trainer == "ours" and any(result["module"].startswith(d) for d in peer_dirs.values()):
        sys.exit(f"ours: imported the peer's module {result['module']}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="only 10 MB with vocab 8192")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (the median is shown)")
    parser.add_argument("--data-pack", default=os.path.join(REPO, "..", "shared", "data"),
                        help="the course data pack (holds pretrain/shard_*.parquet)")
    parser.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "nanochat-bench"),
                        help="where the peers are pip-installed")
    parser.add_argument("--trainers", default=",".join(TRAINERS), help="comma-separated subset of " + ",".join(TRAINERS))
    # worker mode (used by the driver itself)
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    parser.add_argument("--mb", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.data_pack = os.path.abspath(args.data_pack)
    if args.worker:
        return worker(args)

    trainers = args.trainers.split(",")
    peer_dirs = {name: install_peer(name, args.cache_dir) for name in trainers if name in PEERS}
    configs = [(10, 8192)] if args.quick else [(10, 8192), (10, 32768), (50, 8192), (50, 32768)]
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.repeats} runs per cell, data {args.data_pack}")

    # One untimed warm-up per trainer (the first process on a cold machine is much slower).
    for trainer in trainers:
        run_once(trainer, 1, 1024, args, peer_dirs)
    # Interleave trainers within each repeat, so slow drifts of the machine hit all alike.
    results = {}
    for repeat in range(args.repeats):
        for mb, vocab in configs:
            for trainer in trainers:
                result = run_once(trainer, mb, vocab, args, peer_dirs)
                results.setdefault((mb, vocab, trainer), []).append(result)
                print(f"  run {repeat + 1}/{args.repeats}: {mb} MB, vocab {vocab}, {trainer}: "
                      f"{result['seconds']:.2f} s, peak RSS {result['rss_peak']:.0f} MiB", flush=True)
    print_table(results, configs, trainers)


def print_table(results: dict, configs: list, trainers: list[str]) -> None:
    """Median time and peak memory per cell, with ratios to PyPI rustbpe and vocab overlap."""
    header = (f"{'data':>6} {'vocab':>6} {'trainer':>8} {'time s (min-max)':>21} {'x pypi':>7} "
              f"{'peak RSS MiB':>13} {'x pypi':>7} {'RSS before':>11} {'tokens':>7} {'vocab overlap':>14}")
    print("\n" + header + "\n" + "-" * len(header))
    for mb, vocab in configs:
        pypi = results.get((mb, vocab, "pypi"))
        for trainer in trainers:
            runs = results[(mb, vocab, trainer)]
            seconds = statistics.median(r["seconds"] for r in runs)
            rss = statistics.median(r["rss_peak"] for r in runs)
            rss_before = statistics.median(r["rss_before"] for r in runs)
            spread = f"{seconds:.2f} ({min(r['seconds'] for r in runs):.2f}-{max(r['seconds'] for r in runs):.2f})"
            time_ratio = rss_ratio = overlap = "-"
            if pypi:
                time_ratio = f"{seconds / statistics.median(r['seconds'] for r in pypi):.2f}"
                rss_ratio = f"{rss / statistics.median(r['rss_peak'] for r in pypi):.2f}"
                theirs = set(pypi[0]["vocab"])
                overlap = f"{100 * len(set(runs[0]['vocab']) & theirs) / len(theirs):.2f}%"
            print(f"{mb:>4}MB {vocab:>6} {trainer:>8} {spread:>21} {time_ratio:>7} "
                  f"{rss:>13.0f} {rss_ratio:>7} {rss_before:>11.0f} {len(runs[0]['vocab']):>7} {overlap:>14}")
    print("\ntime: the training call only (text already loaded); peak RSS: the whole worker process;"
          "\nRSS before: after loading the text; vocab overlap: share of PyPI rustbpe's tokens also learned.")


if __name__ == "__main__":
    main()
