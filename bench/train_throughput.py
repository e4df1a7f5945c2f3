"""Training speed of one GPT size: step time, tokens/s and MFU, eager against torch.compile.

    python bench/train_throughput.py                        # d6, T=512, B=8, vocab 32768; four modes
    python bench/train_throughput.py --modes eager-plain,eager --steps 3   # what the fused loss saves
    python bench/train_throughput.py --modes eager-plain,eager --profile 2  # and where each step's time goes

Modes: eager or torch.compile, each with the loss fused and chunked (nanochat/fused_loss.py,
the default) or "-plain" (full logits, then F.cross_entropy). A step is what the pretraining notebook does: forward with targets (the loss), backward,
optimizer.step() (Muon for the blocks' matrices, AdamW for the embedding and lm_head),
zero_grad. The inputs are random token ids made once before timing: a step's cost depends
on the shapes (B, T, vocab), not on which tokens fill them, so no data or tokenizer is needed.

Each mode runs in a fresh Python process, so its peak RSS is its own and neither mode
inherits the other's warm allocator or compiled kernels. The first step is timed on its
own: it allocates the optimizer state and, under torch.compile(dynamic=False), traces and
compiles the forward and the backward, which costs far more than a step. The first --warmup
steps (the first one included) are left out of the mean over the --steps timed steps.
Inductor's on-disk cache points at a fresh temporary folder (unless --warm-cache), so
the first compiled step is a cold compile, as on a new machine.

MFU = achieved FLOP/s / peak FLOP/s, with model.estimate_flops() training FLOPs per token.
On a GPU the peak is the datasheet's bf16 number; on a CPU it is a measured fp32 matmul
rate (nanochat.train.peak_flops), so MFU there is an estimate.

This is a measurement, not a test: it asserts nothing. At the defaults (2 x 12 steps) it
took 7 to 13 minutes in three runs on a 2-core CPU that other jobs were partly sharing.
Other work on the cores slows every number down, and torch's threads then wait for each
other, so a busy machine can cost far more than 2x (try --threads 1 there).
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile

import torch

from nanochat.common import autodetect_device
from nanochat.gpt import build_model, config_for_depth
from nanochat.train import Throughput, peak_flops

# "-plain": the loss through the full logits and F.cross_entropy (model.fused_loss = False),
# to measure what the chunked head + softcap + cross-entropy of nanochat/fused_loss.py saves.
MODES = ["eager-plain", "eager", "compile-plain", "compile"]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


# ---- inside a worker subprocess: one mode

def run_mode(args) -> dict:
    """Build the model, take warmup + steps training steps in one mode, return the timings."""
    mode, device = args.worker, args.device
    torch.manual_seed(0)
    model = build_model(config_for_depth(args.depth, vocab_size=args.vocab, sequence_len=args.seq_len), device)
    model.fused_loss = not mode.endswith("-plain")
    optimizer = model.setup_optimizers()  # every group starts at its initial_lr; a benchmark needs no schedule
    # The compiled module shares the model's parameters, so the optimizer built on `model` updates both.
    train_model = torch.compile(model, dynamic=False) if mode.startswith("compile") else model
    inputs, targets = torch.randint(0, args.vocab, (2, args.batch, args.seq_len), device=device)  # (B, T) each
    meter = Throughput(args.batch * args.seq_len, model.estimate_flops(), args.peak_flops,
                       world_size=1, skip_steps=args.warmup, device=device)

    # The same batch every step: the loss falls as the model memorises it, which does not change the speed.
    total, step_seconds = args.warmup + args.steps, []
    for step in range(total):
        meter.start()
        loss = train_model(inputs, targets)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
        meter.stop(step)
        step_seconds.append(meter.last_dt)
        if step == 0:
            what = "first step, compiling" if mode.startswith("compile") else "first step"
        else:
            what = "warm-up" if step < args.warmup else "timed"
        print(f"  {mode:>13} step {step + 1:>2}/{total}: {meter.last_dt:7.2f} s  loss {loss.item():.3f}  ({what})",
              flush=True)

    timed = step_seconds[args.warmup:]
    on_cuda = torch.device(device).type == "cuda"
    breakdown = profile_steps(train_model, model, optimizer, inputs, targets, args.profile) if args.profile else None
    return {"breakdown": breakdown,"mode": mode, "first_s": step_seconds[0], "mean_ms": 1000 * meter.elapsed / meter.timed_steps,
            "min_ms": 1000 * min(timed), "max_ms": 1000 * max(timed), "median_ms": 1000 * statistics.median(timed),
            "tokens_per_s": meter.tokens_per_second(), "mfu": meter.mfu(),
            "achieved_flops": meter.tokens_per_second() * meter.flops_per_token,
            "peak_rss_mib": peak_rss_mib(),
            "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None,
            "params": model.num_params(), "flops_per_token": model.estimate_flops(),
            "threads": torch.get_num_threads()}


# Where the time goes: operators grouped by what they are. "matmul" is the dense products of the
# linear layers and the head; attention's fused kernel is its own group (its FLOPs are also matmuls,
# but it is one opaque kernel, not the per-layer products that set the MFU).
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "aten::addbmm"}
ATTENTION_PREFIX = "aten::_scaled_dot_product"


def profile_steps(train_model, model, optimizer, inputs, targets, steps: int) -> dict:
    """Run `steps` training steps under torch.profiler: the share of operator time by kind, and the top other ops."""
    from torch.profiler import ProfilerActivity, profile

    on_cuda = inputs.is_cuda
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            loss = train_model(inputs, targets)
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
        if on_cuda:
            torch.cuda.synchronize()
    # Self time: each operator's own time, without the operators it called, so nothing counts twice.
    attr = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    times = {event.key: getattr(event, attr) for event in prof.key_averages() if getattr(event, attr) > 0}
    total = sum(times.values())
    matmul = sum(t for name, t in times.items() if name in MATMUL_OPS)
    attention = sum(t for name, t in times.items() if name.startswith(ATTENTION_PREFIX))
    others = sorted(((t, name) for name, t in times.items()
                     if name not in MATMUL_OPS and not name.startswith(ATTENTION_PREFIX)), reverse=True)
    return {"matmul": matmul / total, "attention": attention / total, "seconds_per_step": total / 1e6 / steps,
            "top": [(name, t / total) for t, name in others[:10]]}


def print_breakdown(results: dict) -> None:
    """Per mode: the share of operator time in matmuls and attention, then the ten largest other operators."""
    for mode, r in results.items():
        b = r["breakdown"]
        print(f"\n{mode}: {b['seconds_per_step']:.2f} s of operator time a step; matmul {b['matmul']:.0%}, "
              f"attention {b['attention']:.0%}, everything else {1 - b['matmul'] - b['attention']:.0%}; the largest others:")
        for name, share in b["top"]:
            print(f"  {share:6.1%}  {name}")


# ---- the driver

def run_worker(mode: str, args, peak: float | None) -> dict:
    """One mode in a fresh Python process (its progress lines go straight to our terminal); its results."""
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        if mode.startswith("compile") and not args.warm_cache:
            # A cold compile: no kernels or graphs left over from an earlier run.
            env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "inductor")
            env["TRITON_CACHE_DIR"] = os.path.join(tmp, "triton")
        result_path = os.path.join(tmp, "result.json")
        command = [sys.executable, os.path.abspath(__file__), "--worker", mode, "--result", result_path,
                   "--depth", str(args.depth), "--seq-len", str(args.seq_len), "--batch", str(args.batch),
                   "--vocab", str(args.vocab), "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--device", args.device, "--peak-flops", str(peak), "--profile", str(args.profile)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        finished = subprocess.run(command, env=env)
        if finished.returncode != 0:
            sys.exit(f"The {mode} run failed (exit code {finished.returncode}); its error is printed above.")
        with open(result_path) as f:
            return json.load(f)


def print_table(results: list[dict], peak_source: str) -> None:
    """One row per mode, then what the numbers were measured on."""
    header = (f"{'mode':<13} {'first step s':>12} {'mean step ms (min-max)':>24} {'median ms':>10} "
              f"{'tokens/s':>9} {'GFLOP/s':>8} {'MFU':>6} {'peak RSS MiB':>13}")
    on_cuda = results[0]["peak_cuda_mib"] is not None
    if on_cuda:
        header += f" {'peak CUDA MiB':>14}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        spread = f"{r['mean_ms']:,.0f} ({r['min_ms']:,.0f}-{r['max_ms']:,.0f})"
        mfu = "-" if r["mfu"] is None else f"{r['mfu']:.1%}"
        row = (f"{r['mode']:<13} {r['first_s']:>12.2f} {spread:>24} {r['median_ms']:>10,.0f} "
               f"{r['tokens_per_s']:>9,.0f} {r['achieved_flops'] / 1e9:>8,.1f} {mfu:>6} {r['peak_rss_mib']:>13,.0f}")
        if on_cuda:
            row += f" {r['peak_cuda_mib']:>14,.0f}"
        print(row)
    print("\ntokens/s, GFLOP/s and MFU are from the mean step; a median far below it means some steps were slowed down")
    print(f"MFU against {peak_source}")
    if any(r["mfu"] is not None and r["mfu"] > 1 for r in results):
        print("MFU above 100%: the peak was measured while the machine was busier than during the steps; "
              "rerun on a quiet machine")


def print_comparison(results: dict) -> None:
    """How much faster compiled steps are, and after how many steps the compile time has paid for itself."""
    eager, compiled = results["eager"], results["compile"]
    speedup = eager["mean_ms"] / compiled["mean_ms"]
    print(f"compile / eager: {speedup:.2f}x the tokens/s in steady state")
    saved_per_step = (eager["mean_ms"] - compiled["mean_ms"]) / 1000
    extra_first_step = compiled["first_s"] - eager["first_s"]
    if saved_per_step > 0:
        # The compiled run is behind by extra_first_step seconds and catches up saved_per_step per step.
        payoff = max(1, math.ceil(extra_first_step / saved_per_step))
        print(f"compiling costs {extra_first_step:.1f} s more on the first step and saves {saved_per_step:.2f} s "
              f"a step after: it has paid for itself after {payoff} step{'s' if payoff > 1 else ''}")
    else:
        print("compiled steps are not faster here: compiling never pays off at this size")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=6, help="model depth (width 64 x depth, rounded to whole heads)")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens per row, T")
    parser.add_argument("--batch", type=int, default=8, help="rows per step, B (device batch size)")
    parser.add_argument("--vocab", type=int, default=32768, help="vocabulary size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per mode (the mean is shown)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them, the first step included")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ",".join(MODES))
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best there is)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: one per core); 1 helps when other work shares the cores")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after the timed steps, profile STEPS more: the share of time in matmuls, and the top other ops")
    parser.add_argument("--warm-cache", action="store_true",
                        help="keep Inductor's usual on-disk cache (the first compiled step may then skip compiling)")
    # worker mode (used by the driver itself)
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--peak-flops", type=lambda s: None if s == "None" else float(s), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error(f"--warmup must be at least 1 (the first step is never part of the mean), got {args.warmup}")
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes must be a comma-separated subset of {','.join(MODES)}, got {args.modes!r}")
    args.device = args.device or autodetect_device()
    if args.threads:
        torch.set_num_threads(args.threads)  # here, so the CPU peak below is measured with the same threads

    if args.worker:
        result = run_mode(args)
        with open(args.result, "w") as f:
            json.dump(result, f)
        return

    peak, peak_source = peak_flops(args.device)  # measured once, here, so every mode is held to the same peak
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    print(f"torch {torch.__version__} on {args.device}; {os.cpu_count()} CPUs, {torch.get_num_threads()} threads, "
          f"load average {load:.1f}")
    if load > 0.5 * os.cpu_count():
        # Two processes sharing the cores slow each other far more than 2x: torch's threads wait for each other.
        print("warning: the load average is high, other work may be running; if so every number below is low and noisy")
    print(f"d{args.depth}, T={args.seq_len}, B={args.batch}, vocab {args.vocab}: {args.batch * args.seq_len:,} tokens "
          f"a step; {args.warmup} warm-up + {args.steps} timed steps per mode; modes {','.join(modes)}\n")

    results = {}
    for mode in modes:
        print(f"{mode}:", flush=True)
        results[mode] = run_worker(mode, args, peak)

    first = next(iter(results.values()))
    print_table(list(results.values()), peak_source)
    print(f"model: {first['params']:,} parameters, {first['flops_per_token']:,} training FLOPs/token; "
          f"torch {torch.__version__}, {first['threads']} threads"
          + ("" if "compile" not in results or args.warm_cache else "; cold Inductor cache"))
    if "eager" in results and "compile" in results:
        print_comparison(results)
    if args.profile:
        print_breakdown(results)


if __name__ == "__main__":
    main()
