"""Before paying for a GPU run: check the code paths the speedrun takes on this GPU, in a few minutes.

    python bench/gpu_check.py            # on the GPU node: d20 at the speedrun's device batch, compiled, bf16
    python bench/gpu_check.py --small    # anywhere (the tests run it on a CPU, ~40 s idle): the same code, tiny

Each check is a row of the table at the end (ok, FAIL, or skipped and why):
  training    a few optimizer steps of the speedrun's model at its device batch (32 x 2048),
              torch.compile'd: tokens/s, MFU, and the peak memory against the GPU's and against
              the estimate that `nanochat run --dry-run` prints (nanochat/memory.py)
  loss        the chunked loss against the plain one, as the profile runs them (compiled): which is faster
  fa3         FlashAttention-3 against PyTorch's SDPA on the same bf16 inputs: outputs and
              gradients agree, and the time of each (skipped where FA3 is not installed)
  notebooks   notebooks 03 (the model) and 09 (the engine) run in bf16 with papermill, so
              their own assertions are the checks, against a random model of the same depth
  decode      the Engine's tokens/s at batch 1 and 8 (KV cache, greedy)
It exits with status 1 if any check failed. A random model learns nothing here: this checks that
the code runs, fits and is fast, not what it learns.
"""
import argparse
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from nanochat import common, gpt
from nanochat.checkpoint import save_checkpoint
from nanochat.engine import Engine
from nanochat.gpt import GPTConfig, build_model, config_for_depth
from nanochat.memory import peak_memory, training_memory
from nanochat.tokenizer import Tokenizer
from nanochat.train import Throughput, peak_flops

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
GIB = 1024 ** 3


class Skip(Exception):
    """A check that cannot run here (the reason is its message)."""


def sync(device) -> None:
    """Wait for the GPU, so a clock reads finished work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train_steps(args, fused_loss: bool = True) -> tuple[Throughput, list[float]]:
    """args.steps timed training steps (after one that compiles) on random tokens: the meter and the losses."""
    config = config_for_depth(args.depth, vocab_size=args.vocab, sequence_len=args.seq_len)
    torch.manual_seed(0)
    model = build_model(config, args.device)
    model.fused_loss = fused_loss
    optimizer = model.setup_optimizers()
    train_model = torch.compile(model, dynamic=False) if args.compile else model
    inputs, targets = torch.randint(0, args.vocab, (2, args.batch, args.seq_len), device=args.device)
    peak, _ = peak_flops(args.device)
    meter = Throughput(args.batch * args.seq_len, model.estimate_flops(), peak, skip_steps=1, device=args.device)
    losses = []
    for step in range(args.steps + 1):  # the first step compiles, and is not timed
        meter.start()
        loss = train_model(inputs, targets)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        meter.stop(step)
        losses.append(loss.item())
    return meter, losses


def check_training(args) -> str:
    """Compiled training steps at the profile's device batch: speed, and memory against the plan."""
    config = config_for_depth(args.depth, vocab_size=args.vocab, sequence_len=args.seq_len)
    meter, losses = train_steps(args)
    if not all(math.isfinite(x) for x in losses):
        raise AssertionError(f"the loss is not finite: {losses}")
    used, used_text = peak_memory(args.device)
    on_cuda = torch.device(args.device).type == "cuda"  # the plan's 2 GiB allowance is CUDA's context and buffers
    planned = training_memory(config, args.batch, args.seq_len, 1, args.compile, **({} if on_cuda else {"allowance": 0})).total
    text = (f"d{args.depth} at {args.batch} x {args.seq_len}, {'compiled' if args.compile else 'eager'}: "
            f"{meter.tokens_per_second():,.0f} tok/s" + (f", MFU {meter.mfu():.0%}" if meter.mfu() else "")
            + f"; peak {used_text}; the dry-run planned {planned / GIB:.1f} GiB")
    if args.memory_budget_gib is not None and used > args.memory_budget_gib * GIB:
        raise AssertionError(f"{text}: more than the budget of {args.memory_budget_gib} GiB")
    return text


def check_loss_path(args) -> str:
    """The chunked loss (nanochat/fused_loss.py) against the plain one, each as the profile runs it.

    Under torch.compile, Inductor fuses the plain softcap + cross-entropy itself, so on a GPU
    either may be faster; the model uses the chunked one by default (it also never holds the
    full logits). This measures which wins on this GPU.
    """
    speeds = {}
    for fused in (True, False):
        meter, losses = train_steps(args, fused_loss=fused)
        speeds["chunked" if fused else "plain"] = meter.tokens_per_second()
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
    ratio = speeds["chunked"] / speeds["plain"]
    return (f"{'compiled' if args.compile else 'eager'}: chunked {speeds['chunked']:,.0f} tok/s, plain "
            f"{speeds['plain']:,.0f} tok/s: the chunked loss runs at {ratio:.2f}x the plain one's speed")


def check_fa3(args) -> str:
    """FA3 and SDPA on the same inputs: the same attention, and which is faster."""
    if gpt._fa3_func is None:
        raise Skip("flash_attn_interface is not installed (pip install the FlashAttention-3 wheel for Hopper)")
    if not gpt.USE_FA3:
        raise Skip("FA3 is installed but this is not a Hopper (sm90) GPU: the model uses SDPA")
    B, T, H, D = 4, args.seq_len, 10, 128
    q, k, v = (torch.randn(B, T, H, D, device=args.device, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    paths = {"fa3": lambda: gpt.causal_attention(q, k, v),
             "sdpa": lambda: gpt.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)}
    outputs, seconds = {}, {}
    for name, attention in paths.items():
        for repeat in range(4):  # the first is a warm-up
            q.grad = k.grad = v.grad = None
            sync(args.device)
            start = time.perf_counter()
            y = attention()
            y.float().square().sum().backward()
            sync(args.device)
            if repeat:
                seconds.setdefault(name, []).append(time.perf_counter() - start)
        outputs[name] = (y.detach().float(), q.grad.float())
    gap = max((a - b).abs().max().item() / b.abs().max().item() for a, b in zip(outputs["fa3"], outputs["sdpa"]))
    text = (f"max relative difference {gap:.1e} (output and dq); forward+backward at {B} x {T}: "
            f"FA3 {1000 * min(seconds['fa3']):.1f} ms, SDPA {1000 * min(seconds['sdpa']):.1f} ms")
    if gap > 2e-2:
        raise AssertionError(text)
    return text


def random_base_dir(args, folder: Path) -> None:
    """A base dir that notebook 09 can load: a byte-level tokenizer and a random base model."""
    tokenizer = Tokenizer.bytes_only()
    (folder / "tokenizer").mkdir(parents=True)
    tokenizer.save(str(folder / "tokenizer"))
    config = config_for_depth(args.depth, vocab_size=tokenizer.get_vocab_size(), sequence_len=args.seq_len)
    torch.manual_seed(0)
    model = build_model(config, "cpu", torch.float32)
    save_checkpoint(str(folder / "checkpoints" / "base" / f"d{args.depth}"), 1, model.state_dict(), None,
                    {"config": asdict(config), "tokenizer": tokenizer.fingerprint()})


def check_notebooks(args) -> str:
    """Notebooks 03 and 09 in bf16, under papermill: their assertions decide."""
    import papermill

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        random_base_dir(args, folder)
        old = os.environ.get("NANOCHAT_BASE_DIR")
        os.environ["NANOCHAT_BASE_DIR"] = str(folder)  # the kernels inherit it
        seconds = {}
        try:
            for name in ("03_model", "09_engine"):
                start = time.perf_counter()
                papermill.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(folder / f"{name}.ipynb"),
                                           parameters={"dtype": "bfloat16", "device_type": args.device}
                                           if name == "09_engine" else {"dtype": "bfloat16"},
                                           kernel_name="python3", progress_bar=False, cwd=str(NOTEBOOKS),
                                           extra_arguments=["--IPKernelApp.log_level=ERROR"])  # no TCP warning
                seconds[name] = time.perf_counter() - start
            printed = (folder / "09_engine.ipynb").read_text()
            if "in torch.bfloat16" not in printed:  # 09 names the dtype it loaded the model in
                raise AssertionError("notebook 09 did not run in bf16: the dtype parameter did not reach it")
        finally:
            if old is None:
                os.environ.pop("NANOCHAT_BASE_DIR")
            else:
                os.environ["NANOCHAT_BASE_DIR"] = old
    return "every assertion held in bf16: " + ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())


def check_decode(args) -> str:
    """How fast the Engine writes, one row and eight rows at a time."""
    tokenizer = Tokenizer.bytes_only()
    config = config_for_depth(args.depth, vocab_size=tokenizer.get_vocab_size(), sequence_len=args.seq_len)
    model = build_model(config, args.device).eval()
    engine = Engine(model, tokenizer, tool=None)
    engine.stop_tokens = set()  # a random model may write <|bos|> at once; run to max_tokens
    prompt = tokenizer.encode("The capital of France is", prepend=tokenizer.get_bos_token_id())
    rates = {}
    for rows in (1, 8):
        engine.generate_batch(prompt, num_samples=rows, max_tokens=4, temperature=0.0)  # warm-up
        sync(args.device)
        start = time.perf_counter()
        engine.generate_batch(prompt, num_samples=rows, max_tokens=args.decode_tokens, temperature=0.0)
        sync(args.device)
        rates[rows] = rows * args.decode_tokens / (time.perf_counter() - start)
    return f"{args.decode_tokens} new tokens: batch 1 {rates[1]:,.0f} tok/s, batch 8 {rates[8]:,.0f} tok/s"


CHECKS = {"training": check_training, "loss": check_loss_path, "fa3": check_fa3, "notebooks": check_notebooks, "decode": check_decode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tiny size that runs anywhere in a minute or two")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: the best there is)")
    parser.add_argument("--depth", type=int, help="model depth (default 20, --small 2)")
    parser.add_argument("--batch", type=int, help="rows per step (default 32, the speedrun's; --small 2)")
    parser.add_argument("--seq-len", type=int, help="tokens per row (default 2048; --small 256)")
    parser.add_argument("--vocab", type=int, help="vocabulary of the training check (default 65536; --small 4096)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps after the first")
    parser.add_argument("--decode-tokens", type=int, default=128, help="tokens per row in the decode check")
    parser.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                        help="eager training steps (default: compiled, except --small on a CPU)")
    parser.add_argument("--memory-budget-gib", type=float, default=None,
                        help="fail the training check above this peak (default: no budget; an OOM fails anyway)")
    parser.add_argument("--only", default=",".join(CHECKS), help="comma-separated subset of " + ",".join(CHECKS))
    args = parser.parse_args()
    small = dict(depth=2, batch=2, seq_len=256, vocab=4096) if args.small else dict(depth=20, batch=32, seq_len=2048,
                                                                                      vocab=65536)
    for name, value in small.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.device = args.device or common.autodetect_device()
    if args.compile is None:
        args.compile = not (args.small and args.device == "cpu")  # compiling on a CPU takes a minute
    chosen = [name for name in args.only.split(",") if name]
    if unknown := [name for name in chosen if name not in CHECKS]:
        parser.error(f"unknown check(s) {unknown}; the checks are {','.join(CHECKS)}")

    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    print(f"gpu_check: torch {torch.__version__} on {name}; d{args.depth}, batch {args.batch} x {args.seq_len}")
    rows = []
    for check in chosen:
        print(f"  {check} ...", flush=True)
        start = time.perf_counter()
        try:
            status, text = "ok", CHECKS[check](args)
        except Skip as e:
            status, text = "skipped", str(e)
        except Exception as e:  # noqa: BLE001 - every failure is a row of the table, and the exit status
            traceback.print_exc()
            status, text = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        rows.append((check, status, f"{text} ({time.perf_counter() - start:.0f} s)"))
        if torch.device(args.device).type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    width = max(len(check) for check, _, _ in rows)
    print("\n" + "\n".join(f"{check:<{width}}  {status:<7}  {text}" for check, status, text in rows))
    failed = [check for check, status, _ in rows if status == "FAIL"]
    print(f"\n{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "\nall checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
