"""What every stage shares: the base dir, the device and dtype, torchrun/distributed setup."""
import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


def get_base_dir() -> str:
    """The one folder every stage reads from and writes to (NANOCHAT_BASE_DIR)."""
    base = os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")
    os.makedirs(base, exist_ok=True)
    return base


def autodetect_device() -> str:
    """Pick the best device there is: cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def compute_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 where the hardware has fast bf16 matmuls (CUDA sm80+), else fp32.

    On a CPU a bf16 matmul can be ~100x slower than fp32, so precision is chosen
    explicitly per device rather than by autocast.
    """
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return torch.float32


@dataclass(frozen=True)
class DistInfo:
    """Who this process is in a (possibly 1-process) torchrun job."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_master(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def is_distributed_env() -> bool:
    """True when torchrun (or the pipeline) started us as one rank of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Join the process group when launched by torchrun; a no-op for a single process.

    Safe to call twice (a notebook cell re-run). nccl on CUDA, gloo on CPU. The timeout
    (default $NANOCHAT_DIST_TIMEOUT, else 600 s; the pipeline sets it) bounds a hang
    when another rank has died.
    """
    device = device or autodetect_device()
    timeout_s = timeout_s or float(os.environ.get("NANOCHAT_DIST_TIMEOUT", "600"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def destroy_distributed() -> None:
    """Leave the process group cleanly at the end of a stage."""
    if dist.is_initialized():
        dist.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print, but only on rank 0, so N ranks do not print N copies."""
    if get_rank() == 0:
        print(*args, **kwargs)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) for reproducible runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
