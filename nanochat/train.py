"""What every training notebook shares (pretraining, midtraining, SFT): the arithmetic and bookkeeping around the loop.

The loop itself stays in the notebook, where a learner reads it:

    for step in range(start_step, horizon.steps + 1):
        ...evaluate / sample / save when due...
        for micro_step in range(accum_steps):          # gradient accumulation
            loss = model(inputs, targets) / accum_steps
            loss.backward()
        set_schedules(optimizer, step, ...)             # lr warmup/warmdown, Muon momentum
        optimizer.step()                                # averages gradients across ranks

This module holds the parts around it: how many micro-steps make the total batch, how
many steps the run has (the horizon), the schedules, tokens/s and MFU, the validation
bits-per-byte, samples from fixed prompts, a logger (console and wandb), the checkpoint
of a whole training state and the history of metrics that the plots are drawn from.
"""
import gc
import json
import math
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from nanochat import checkpoint as ckpt
from nanochat.common import get_rank, get_world_size, print0
from nanochat.dataloader import build_val_loader
from nanochat.dataset import split_files
from nanochat.engine import Engine
from nanochat.evaluation.loss import evaluate_bpb
from nanochat.stages import RESUME_KEYS

# -----------------------------------------------------------------------------
# Batch arithmetic and the horizon


def grad_accum_steps(total_batch_size: int, device_batch_size: int, max_seq_len: int, world_size: int) -> int:
    """Micro-steps per optimizer step, so that every step sees exactly total_batch_size tokens.

    One micro-step on all ranks processes device_batch_size x max_seq_len x world_size
    tokens; the gradients of accum_steps of them are summed before the optimizer steps.
    """
    per_micro_step = device_batch_size * max_seq_len * world_size
    if total_batch_size % per_micro_step:
        raise ValueError(
            f"total_batch_size={total_batch_size:,} tokens is not a multiple of one micro-step's "
            f"{per_micro_step:,} (device_batch_size {device_batch_size} x max_seq_len {max_seq_len} x "
            f"{world_size} rank(s)). Use a multiple, e.g. {per_micro_step * max(1, round(total_batch_size / per_micro_step)):,}.")
    return total_batch_size // per_micro_step


@dataclass(frozen=True)
class Horizon:
    """How long a run is, and which parameter decided it."""
    steps: int
    tokens: int
    flops: float
    reason: str


def training_horizon(num_iterations: int, target_flops: float, target_param_data_ratio: float,
                     num_params: int, flops_per_token: float, total_batch_size: int) -> Horizon:
    """The number of optimizer steps, from the first of these that is set (> 0):

    1. num_iterations            exactly that many steps
    2. target_flops              steps = flops / (flops_per_token x total_batch_size)
    3. target_param_data_ratio   tokens = ratio x parameters (Chinchilla: ~20), steps = tokens / total_batch_size
    """
    flops_per_step = flops_per_token * total_batch_size
    if num_iterations > 0:
        steps, reason = num_iterations, f"num_iterations = {num_iterations:,}"
    elif target_flops > 0:
        steps = max(1, round(target_flops / flops_per_step))
        reason = f"target_flops = {target_flops:.3g}"
    elif target_param_data_ratio > 0:
        steps = max(1, round(target_param_data_ratio * num_params / total_batch_size))
        reason = f"target_param_data_ratio = {target_param_data_ratio:g} tokens per parameter"
    else:
        raise ValueError("no training horizon: set num_iterations, target_flops or target_param_data_ratio to a "
                         "positive value (they are used in that order of precedence)")
    return Horizon(steps=steps, tokens=steps * total_batch_size, flops=steps * flops_per_step, reason=reason)


# -----------------------------------------------------------------------------
# Schedules


def lr_multiplier(step: int, num_steps: int, warmup_ratio: float = 0.0, warmdown_ratio: float = 0.2,
                  final_lr_frac: float = 0.0) -> float:
    """Trapezoid: ramp up linearly over the warmup, hold at 1, ramp down linearly to final_lr_frac at the end."""
    warmup = round(warmup_ratio * num_steps)
    warmdown = round(warmdown_ratio * num_steps)
    if step < warmup:
        return (step + 1) / warmup
    if step <= num_steps - warmdown:
        return 1.0
    progress = (num_steps - step) / warmdown  # 1 at the start of the warmdown, 0 at the last step
    return final_lr_frac + (1.0 - final_lr_frac) * progress


def freeze_setup_objects() -> None:
    """Call once the first step has run: Python's garbage collector stops rescanning what setup made.

    The cyclic collector walks every tracked object of the oldest generation on a full
    collection: the model's modules, the loader's buffers, compiled code, tens of
    thousands of objects that live for the whole run. nanochat measured such collections
    at ~500 ms each during training. gc.freeze() moves everything alive now into a
    permanent generation the collector skips; objects made later are collected as usual.
    """
    gc.collect()
    gc.freeze()


def set_schedules(optimizer, step: int, num_steps: int, muon_momentum_fn=None, **lr_kwargs) -> float:
    """Set every group's lr for this step (initial_lr x multiplier) and Muon's momentum; returns the multiplier."""
    multiplier = lr_multiplier(step, num_steps, **lr_kwargs)
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * multiplier
        if group["kind"] == "muon" and muon_momentum_fn is not None:
            group["momentum"] = muon_momentum_fn(step)
    return multiplier


# -----------------------------------------------------------------------------
# Throughput and MFU

# Dense bf16 tensor-core peak per GPU, from the vendors' datasheets (without sparsity).
GPU_PEAK_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,   # SXM (checked after the PCIe and NVL names, which also contain "H100")
    "H200": 989e12,
    "GB200": 2500e12,
    "B200": 2250e12,
    "A100": 312e12,
    "L4": 121e12,
}
_cpu_peak_cache: dict = {}


def measure_cpu_matmul_flops(size: int = 1024, repeats: int = 10) -> float:
    """FLOP/s of an fp32 (size x size) matmul on this CPU: the best this machine does, our stand-in for a 'peak'."""
    if size not in _cpu_peak_cache:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm up the threads and caches
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        _cpu_peak_cache[size] = 2 * size**3 / best
    return _cpu_peak_cache[size]


def peak_flops(device) -> tuple[float | None, str]:
    """(peak FLOP/s of one device, where the number comes from). None when we do not know the GPU."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAK_FLOPS.items():  # "H100 PCIe" is checked before "H100"
            if key in name:
                return flops, f"{name}: {flops / 1e12:.0f} TFLOP/s bf16 (datasheet)"
        return None, f"{name}: peak unknown (add it to nanochat.train.GPU_PEAK_FLOPS)"
    if device.type == "cpu":
        flops = measure_cpu_matmul_flops()
        return flops, f"CPU: {flops / 1e9:.0f} GFLOP/s, an estimate (measured fp32 1024x1024 matmul, not a datasheet peak)"
    return None, f"{device.type}: peak unknown"


class Throughput:
    """Tokens/s and MFU over the run's steps, leaving out the first few (compilation, warm-up)."""

    def __init__(self, tokens_per_step: int, flops_per_token: float, peak_flops_per_device: float | None,
                 world_size: int = 1, skip_steps: int = 3, elapsed: float = 0.0, timed_steps: int = 0,
                 device="cpu", clock=time.perf_counter):
        self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
        self.peak = None if peak_flops_per_device is None else peak_flops_per_device * world_size
        self.skip_steps = skip_steps
        self.elapsed, self.timed_steps = elapsed, timed_steps  # carried over a resume
        self.last_dt = float("nan")
        self.device_type = torch.device(device).type
        self.clock = clock  # a test passes a fake one: no wall-clock assumptions
        self._start = None

    def _synchronize(self) -> None:
        """GPU work is asynchronous: wait for it, or we would time the kernel launches."""
        if self.device_type == "cuda":
            torch.cuda.synchronize()
        elif self.device_type == "mps":
            torch.mps.synchronize()

    def start(self) -> None:
        """Call right before a step.

        No synchronisation here, only in stop(): one per step. Whatever ran between two
        steps (the last stop(), logging, an evaluation or a save, each of which waits for
        its results) has left the GPU idle, so the clock starts with nothing queued.
        """
        self._start = self.clock()

    def stop(self, step: int) -> None:
        """Call right after a step (the step number it just took)."""
        self._synchronize()
        self.last_dt = self.clock() - self._start
        if step >= self.skip_steps:
            self.elapsed += self.last_dt
            self.timed_steps += 1

    def tokens_per_second(self, last: bool = False) -> float:
        """All ranks' tokens per second, of the last step or averaged over the timed steps (the last
        step's when a short run has no timed steps yet)."""
        dt = self.last_dt if last or not self.timed_steps else self.elapsed / self.timed_steps
        return self.tokens_per_step / dt if dt > 0 else float("nan")

    def mfu(self, last: bool = False) -> float | None:
        """Model FLOPs utilisation: achieved training FLOP/s / peak FLOP/s of all devices (None if no peak)."""
        if self.peak is None:
            return None
        return self.tokens_per_second(last) * self.flops_per_token / self.peak


def train_step(model, optimizer, loader, accum_steps: int, step: int, num_steps: int, schedule: dict,
               muon_momentum_fn=None, train_model=None) -> tuple[float, float]:
    """One optimizer step, as notebook 05 spells it out: accum_steps micro-steps, the schedules, the update.

    The chat stages (06-08) call this instead of repeating 05's loop body. Each micro-step's
    loss is divided by accum_steps, so the summed gradients are a mean. (With masked targets
    each micro-batch's loss is already a mean over its own supervised tokens, so micro-batches
    with few supervised tokens weigh a little more: the simple choice nanochat makes too.)
    Returns (the step's loss averaged over ranks, the learning-rate multiplier used).
    """
    train_model = train_model or model
    loss_sum = None
    for _ in range(accum_steps):
        inputs, targets = next(loader)
        loss = train_model(inputs, targets) / accum_steps
        loss.backward()
        loader.prefetch()  # the next batch, packed while the GPU still runs this backward
        loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
    lr_mult = set_schedules(optimizer, step, num_steps, muon_momentum_fn=muon_momentum_fn, **schedule)
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return mean_across_ranks(loss_sum), lr_mult


def epoch_steps(tokenizer, task, tokens_per_step: int, sample: int = 256) -> int:
    """About how many optimizer steps one pass over a task's conversations takes, from a sample of them.

    Rendering every conversation of a large mixture only to count its tokens would cost
    minutes, so the mean length of `sample` evenly spaced conversations stands in for it.
    """
    picks = range(0, len(task), max(1, len(task) // sample))
    mean_tokens = sum(len(tokenizer.render_conversation(task[i], 10**9)[0]) for i in picks) / len(picks)
    return max(1, math.ceil(mean_tokens * len(task) / tokens_per_step))


@torch.no_grad()
def evaluate_loss(model, loader, max_batches: int | None = None) -> float:
    """Mean loss (nats per supervised token) over a held-out loader, summed over all ranks' batches."""
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=model.device)  # (sum of token losses, supervised tokens)
    try:
        for i, (inputs, targets) in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            losses = model(inputs, targets, loss_reduction="none")  # (B, T), 0 where the target is -1
            total += torch.stack([losses.sum().double(), (targets != -1).sum().double()])
    finally:
        model.train()
    if dist.is_initialized():
        dist.all_reduce(total)
    return (total[0] / total[1].clamp(min=1)).item()


# -----------------------------------------------------------------------------
# Evaluation and samples


_val_batches: dict = {}  # {key: the val batches}: the last set only, so memory stays one set


def val_batches(tokenizer, device_batch_size: int, max_seq_len: int, eval_tokens: int, device) -> list:
    """This rank's batches of the first eval_tokens tokens of the val split, tokenized once per process.

    A long run evaluates every few hundred steps; packing ~10M tokens of text anew each time
    would cost seconds of GPU idle time on every rank. The batches are kept (on the device,
    16 bytes per token) and reused while nothing they depend on changes, the val shard included.
    """
    per_step = device_batch_size * max_seq_len * get_world_size()
    steps = max(1, eval_tokens // per_step)
    shards = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in split_files("val")]
    key = (tokenizer.fingerprint(), device_batch_size, max_seq_len, steps, str(device), get_rank(),
           get_world_size(), tuple(shards))
    if key not in _val_batches:
        _val_batches.clear()
        loader = build_val_loader(tokenizer, device_batch_size, max_seq_len, device, max_batches=steps)
        _val_batches[key] = list(loader)
    return _val_batches[key]


def evaluate_val_bpb(model, tokenizer, device_batch_size: int, max_seq_len: int, eval_tokens: int, device,
                     token_bytes: torch.Tensor) -> float:
    """Bits per byte on the first eval_tokens tokens of the val split (all ranks together; every rank calls it)."""
    batches = val_batches(tokenizer, device_batch_size, max_seq_len, eval_tokens, device)
    model.eval()
    try:
        return evaluate_bpb(model, iter(batches), len(batches), token_bytes)
    finally:
        model.train()


SAMPLE_PROMPTS = [
    "The capital of France is",
    "The chemical symbol of gold is",
    "If yesterday was Friday, then tomorrow will be",
    "The opposite of hot is",
    "The planets of the solar system are:",
    "My favorite color is",
    "If 5*x + 3 = 13, then x is",
]


def sample_completions(model, tokenizer, prompts=SAMPLE_PROMPTS, max_tokens: int = 16, temperature: float = 0.0,
                       seed: int = 0) -> list[str]:
    """Continuations of fixed prompts (greedy by default): the same prompts at every step, so progress is visible."""
    engine = Engine(model, tokenizer, tool=None)  # KV cache; a base model has no tools
    model.eval()
    samples = []
    try:
        for prompt in prompts:
            ids = tokenizer.encode(prompt, prepend=tokenizer.get_bos_token_id())
            sequences, _ = engine.generate_batch(ids, max_tokens=max_tokens, temperature=temperature, seed=seed)
            samples.append(prompt + tokenizer.decode(sequences[0][len(ids):]))
    finally:
        model.train()
    return samples


def mean_across_ranks(value: torch.Tensor) -> float:
    """The mean of a scalar over all ranks (the loss every rank computed on its own batch)."""
    value = value.detach().float().clone()
    if dist.is_initialized():
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value.item()


# -----------------------------------------------------------------------------
# History, logging


class History:
    """Every metric the run logged, as {name: [(step, value), ...]}: plots are drawn from it and it is saved with checkpoints."""

    def __init__(self, series: dict | None = None):
        self.series = {name: [tuple(point) for point in points] for name, points in (series or {}).items()}

    def add(self, step: int, **metrics) -> None:
        """Record metrics at a step (a value already recorded at that step is replaced: a resumed run re-evaluates)."""
        for name, value in metrics.items():
            points = self.series.setdefault(name, [])
            if points and points[-1][0] == step:
                points.pop()
            points.append((step, value))

    def steps(self, name: str) -> list[int]:
        return [step for step, _ in self.series.get(name, [])]

    def values(self, name: str) -> list:
        return [value for _, value in self.series.get(name, [])]

    def last(self, name: str, default=None):
        return self.series[name][-1][1] if self.series.get(name) else default

    def state_dict(self) -> dict:
        return {name: [list(point) for point in points] for name, points in self.series.items()}


class RunLogger:
    """Console lines every log_every steps; everything to wandb as well when a run name is given ('dummy' = off).

    Only rank 0 prints or talks to wandb. wandb is imported only when asked for.
    """

    def __init__(self, run: str, project: str, config: dict, log_every: int = 10):
        self.log_every = max(1, log_every)
        self.wandb = None
        if run != "dummy" and get_rank() == 0:
            try:
                import wandb
            except ImportError as e:
                raise ImportError(f"run={run!r} asks for wandb logging, but wandb is not installed: pip install wandb "
                                  f"(or set run='dummy' to log to the console only)") from e
            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb = wandb.init(project=project, name=run, config=config)

    def log(self, step: int, metrics: dict, line: str | None = None, force: bool = False) -> None:
        """Send metrics to wandb; print `line` if this is a console step (or force)."""
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if line is not None and (force or step % self.log_every == 0):
            print0(line)

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def is_due(step: int, every: int, last_step: bool) -> bool:
    """Is a periodic task (eval, CORE, samples, save) due now? every > 0: each `every` steps and at the end; 0: only at the end; -1: never."""
    if every < 0:
        return False
    return last_step or (every > 0 and step % every == 0)


# -----------------------------------------------------------------------------
# Checkpoints of a whole training state


def save_training_state(folder: str, step: int, model, optimizer, loader, meta: dict, keep: int = 0) -> None:
    """Everything needed to continue exactly: weights, this rank's optimizer shard and loader position, meta.

    Every rank calls it. meta carries the config, the history and the throughput counters.
    loader is None when the data position is a function of the step alone (RL's prompts).
    keep > 0 keeps only the last `keep` checkpoints in folder (0: all of them).
    """
    ckpt.save_checkpoint(folder, step, model.state_dict(), optimizer.state_dict(), meta,
                         loader_state=None if loader is None else loader.state_dict(), rank=get_rank())
    if get_rank() == 0 and (deleted := ckpt.prune_checkpoints(folder, keep, newest=step)):
        print0(f"removed the checkpoint(s) of step {', '.join(map(str, deleted))}: keeping the last {keep}")


def resumable_step(folder: str, params: dict) -> int:
    """The last complete step in folder saved by a run with these same parameters, or -1 (start fresh).

    What `auto_resume` means: a killed run continues where it stopped, but a checkpoint left by
    a run with other parameters (another learning rate, batch or horizon) is never taken for it.
    """
    wanted = {k: v for k, v in params.items() if k not in RESUME_KEYS}
    for step in reversed(ckpt.complete_steps(folder)):
        with open(os.path.join(folder, f"meta_{step:06d}.json")) as f:
            saved = json.load(f).get("params", {})
        if {k: v for k, v in saved.items() if k not in RESUME_KEYS} == wanted:
            print0(f"auto_resume: continuing from step {step}, the last complete checkpoint of this run in {folder}")
            return step
        print0(f"auto_resume: step {step} in {folder} was saved by a run with other parameters: starting fresh")
        return -1
    print0(f"auto_resume: no checkpoint in {folder}: starting fresh")
    return -1


def load_training_state(folder: str, step: int, model, optimizer, device) -> tuple[dict, dict | None]:
    """Load a save_training_state() into model and optimizer; return (meta, this rank's loader state)."""
    loaded = ckpt.load_checkpoint(folder, step, device, load_optimizer=True, rank=get_rank(),
                                  expected_config=model.config)
    model.load_state_dict(loaded.model_state)
    optimizer.load_state_dict(loaded.optimizer_state)
    return loaded.meta, loaded.loader_state


# -----------------------------------------------------------------------------
# Plots


def plot_history(history: History, flops_per_step: float, lr_schedule: list[float] | None = None,
                 train_key: str = "train/loss", val_key: str = "val/bpb"):
    """Loss and val bpb against steps and against training FLOPs, and the LR schedule. Returns the figure."""
    import matplotlib.pyplot as plt

    panels = 3 if lr_schedule is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    # A train loss is logged during step s, so after s + 1 steps of FLOPs; a val bpb at step s, after s steps.
    by_step = (axes[0], "step", lambda s: s, lambda s: s)
    by_flops = (axes[1], "training FLOPs", lambda s: (s + 1) * flops_per_step, lambda s: s * flops_per_step)
    for ax, xlabel, train_x, val_x in (by_step, by_flops):
        points = [(train_x(s), v) for s, v in history.series.get(train_key, [])]
        ax.plot(*zip(*points), lw=0.8, alpha=0.8)
        ax.set(xlabel=xlabel, ylabel="train loss (nats/token)", title=f"loss against {xlabel}")
        if xlabel != "step":  # log FLOPs, but linear below one step's worth, so the untrained model (0 FLOPs) shows
            ax.set_xscale("symlog", linthresh=flops_per_step)
        val_points = [(val_x(s), v) for s, v in history.series.get(val_key, [])]
        if val_points:
            twin = ax.twinx()
            twin.plot(*zip(*val_points), "o-", color="C1")
            twin.set_ylabel("val bits per byte", color="C1")
    if lr_schedule is not None:
        axes[2].plot(lr_schedule)
        axes[2].set(xlabel="step", ylabel="lr multiplier", title="learning-rate schedule", ylim=(0, 1.05))
    fig.tight_layout()
    return fig
