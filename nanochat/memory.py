"""Memory per GPU of a training step, estimated from the model's shape: will a profile fit?

    weights (fp32) + gradients (fp32) + this rank's optimizer state
    + what the forward saves for the backward (activations, bf16 weight copies)
    + the loss's working set (one chunk of logits) + a fixed allowance (CUDA context, allocator slack)

Activations dominate. Per token, each layer keeps a * C + b * Ckv bytes (C the width, Ckv the
key/value width), plus d * C outside the layers; bench/activation_memory.py measured a, b, d
on CPU for eager and compiled bf16 forwards. torch.compile's partitioner, the same on CPU and
CUDA, recomputes elementwise ops in the backward rather than saving their outputs, which is
why compiling saves memory as well as time. The attention kernel keeps q, k, v, its output and
a log-sum-exp, never the T x T scores, so there is no T^2 term.
"""
from dataclasses import dataclass

import torch

from nanochat.fused_loss import DEFAULT_CHUNK_ROWS

# bytes per token = L * (a * C + b * Ckv) + d * C, bf16 compute (bench/activation_memory.py: six shapes,
# fitted within 0.1% eager and 2.3% compiled; torch 2.13 on CPU)
ACTIVATION_COEFFS = {"eager": (36.1, 8.05, 9.94), "compiled": (29.7, 5.58, 9.5)}
CUDA_ALLOWANCE = 2 * 1024 ** 3    # CUDA context, NCCL buffers, allocator fragmentation: an allowance, not measured
# bytes, datasheets (A100: the 80 GB one); longer names first, as "H100" is inside "H100 NVL"
GPU_MEMORY = {"H100 NVL": 94e9, "H100": 80e9, "H200": 141e9, "GB200": 186e9, "B200": 180e9, "A100": 80e9, "L4": 24e9}


@dataclass
class StepMemory:
    """Bytes one rank needs at the peak of a training step, by what they hold."""
    weights: float
    gradients: float
    optimizer: float
    saved: float       # activations and weight copies kept for the backward
    loss: float
    allowance: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.saved + self.loss + self.allowance

    def describe(self) -> str:
        gib = 1024 ** 3
        parts = [f"activations {self.saved / gib:.1f}", f"weights+grads {(self.weights + self.gradients) / gib:.1f}",
                 f"optimizer {self.optimizer / gib:.1f}", f"loss {self.loss / gib:.1f}", f"allowance {self.allowance / gib:.0f}"]
        return f"{self.total / gib:.1f} GiB ({', '.join(parts)})"


def activation_bytes_per_token(config, compiled: bool) -> float:
    """What the forward keeps per token for the backward (the fitted law above)."""
    a, b, d = ACTIVATION_COEFFS["compiled" if compiled else "eager"]
    C, Ckv = config.n_embd, config.n_kv_head * config.head_dim
    return config.n_layer * (a * C + b * Ckv) + d * C


def optimizer_bytes_per_rank(config, world_size: int) -> float:
    """The largest optimizer state any rank owns: Muon keeps one fp32 buffer per matrix, AdamW two."""
    from nanochat.gpt import GPT

    with torch.device("meta"):
        model = GPT(config)
    per_rank = [0.0] * world_size
    for group, p, rank in model.setup_optimizers().ownership(world_size):
        per_rank[rank] += p.numel() * 4 * (1 if group["kind"] == "muon" else 2)
    return max(per_rank)


def training_memory(config, device_batch_size: int, seq_len: int, world_size: int, compiled: bool,
                    allowance: float = CUDA_ALLOWANCE) -> StepMemory:
    """The estimate for one rank of a data-parallel run (every rank holds the whole model)."""
    from nanochat.gpt import count_params

    params = count_params(config)
    matmul_params = params - config.vocab_size * config.n_embd  # all but the embedding lookup
    tokens = device_batch_size * seq_len
    saved = tokens * activation_bytes_per_token(config, compiled) + 2 * matmul_params  # + bf16 copies of the weights
    # nanochat/fused_loss.py's two fp32 chunk blocks (t and e, the gradient written into e), and lm_head's gradient
    loss = 2 * 4 * DEFAULT_CHUNK_ROWS * config.vocab_size + 4 * config.vocab_size * config.n_embd
    return StepMemory(weights=4 * params, gradients=4 * params, optimizer=optimizer_bytes_per_rank(config, world_size),
                      saved=saved, loss=loss, allowance=allowance)


def peak_memory(device) -> tuple[float, str]:
    """(the most bytes this process has held, a sentence saying what of) on a CUDA GPU, else in RAM.

    Printed after the first training step, when the memory plan is known to hold or not, to
    compare with the estimate of `nanochat run --dry-run`.
    """
    device = torch.device(device)
    gib = 1024 ** 3
    if device.type == "cuda":
        peak, total = torch.cuda.max_memory_allocated(device), torch.cuda.get_device_properties(device).total_memory
        return peak, f"{peak / gib:.1f} GiB of the GPU's {total / gib:.1f} GiB (torch.cuda.max_memory_allocated)"
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return peak, f"{peak / gib:.2f} GiB of RAM (the process's peak resident memory)"


def gpu_memory(gpus: str) -> tuple[int, float | None]:
    """'8xH100' -> (8, bytes per GPU); (0, None) for a profile without GPUs, (n, None) for an unknown model."""
    count, _, name = gpus.partition("x")
    if not count.isdigit():
        return 0, None
    memory = next((size for key, size in GPU_MEMORY.items() if key in name), None)
    return int(count), memory


def held_after_forward(config, batch_size: int, seq_len: int, compiled: bool = False,
                       dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes a training forward allocates and still holds at its end (saved for backward), measured on CPU."""
    from torch.profiler import ProfilerActivity, profile

    from nanochat.gpt import build_model

    model = build_model(config, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=g) for _ in range(2))
    if compiled:
        torch._dynamo.reset()  # a fresh compile per shape: past the recompile limit dynamo falls back to eager
    forward = torch.compile(model, dynamic=False) if compiled else model
    if compiled:  # compile outside the measurement
        forward(x, y).backward()
        model.zero_grad(set_to_none=True)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = forward(x, y)
    held = sum(event.self_cpu_memory_usage for event in prof.events())  # allocations minus frees
    del loss
    return held
