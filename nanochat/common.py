"""What every stage shares: the base dir and its layout, the one atomic write, the device and
dtype, torchrun/distributed setup and "which rank am I".

The base dir (NANOCHAT_BASE_DIR, default ~/.cache/nanochat) is the only folder stages hand
results through. Every path under it comes from the functions in "The base dir" below, and
they all read it from the environment: no function elsewhere takes a base dir argument. A
test or a second run points NANOCHAT_BASE_DIR elsewhere and everything follows.

    base_data/shard_00000.parquet ...   pretraining shards          (dataset.py)
    tokenizer/                          the trained tokenizer       (tokenizer.py)
    tiktoken/                           GPT-2/GPT-4 reference files (tokenizer.py)
    eval_bundle/                        the CORE eval bundle        (hub.py, evaluation/core.py)
    task_data/<repo>/...                chat task data              (tasks/)
    checkpoints/PHASE/dDEPTH/           base, mid, sft, rl models   (checkpoint.py)
    report/NN_name.md, .json, -what.png one report section a stage  (report.py)
    runs/RUN/NN_name.ipynb              executed notebooks          (pipeline.py)
    report.md                           the assembled report card   (report.py)

torch is imported inside the functions that use it, so the command line (`nanochat
profiles`, checking a run's parameters) starts without paying torch's seconds of import.
"""
import os
import random
import re
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # Python 3.10: the same parser, under its PyPI name
    import tomli as tomllib  # noqa: F401  (re-exported: `from nanochat.common import tomllib`)

PHASES = ("base", "mid", "sft", "rl")          # the training phases, in order: checkpoints/PHASE/
STAGE_NAME = re.compile(r"^(\d\d)_(\w+)$")      # a stage is a notebook NN_name.ipynb; NN sets the order


# -----------------------------------------------------------------------------
# The base dir

def get_base_dir() -> str:
    """The one folder every stage reads from and writes to (NANOCHAT_BASE_DIR). Not created here:
    writers create the folders they write into, so a read never leaves an empty base dir behind."""
    return os.environ.get("NANOCHAT_BASE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nanochat")


def base_path(*parts: str) -> str:
    """A path under the base dir."""
    return os.path.join(get_base_dir(), *parts)


def pretrain_data_dir() -> str:
    return base_path("base_data")


def tokenizer_dir() -> str:
    return base_path("tokenizer")


def tiktoken_cache_dir() -> str:
    return base_path("tiktoken")


def eval_bundle_dir() -> str:
    return base_path("eval_bundle")


def task_data_dir(*parts: str) -> str:
    return base_path("task_data", *parts)


def phase_dir(phase: str) -> str:
    """Where one training phase keeps its checkpoints: checkpoints/PHASE."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: use one of {PHASES}")
    return base_path("checkpoints", phase)


def checkpoint_dir(phase: str, depth: int) -> str:
    """Where a phase's checkpoints of one model size live: checkpoints/PHASE/dDEPTH."""
    return os.path.join(phase_dir(phase), f"d{depth}")


def report_dir() -> str:
    return base_path("report")


def run_dir(run: str) -> str:
    """A headless run's executed notebooks and completion markers: runs/RUN."""
    return base_path("runs", run)


# -----------------------------------------------------------------------------
# The one atomic write

def publish(tmp, path) -> None:
    """Give a finished temporary file its real name: fsync it, then os.replace, which is atomic
    on POSIX and Windows within a folder. Readers see the old file or the whole new one."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())  # the bytes are on disk before the name points at them
    os.replace(tmp, path)


@contextmanager
def atomic_file(path, mode: str = "wb"):
    """Open a temporary file next to `path` (creating its folder); when the block ends without
    an error, publish it under `path`. A crash at any moment leaves no half-written file."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write(path, data: str | bytes) -> None:
    """Write text or bytes to `path` atomically (see atomic_file)."""
    with atomic_file(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)


# -----------------------------------------------------------------------------
# Device and precision

def available_devices() -> dict[str, bool]:
    """Which kinds of device this machine has: {"cuda": ..., "mps": ..., "cpu": True}, best first."""
    import torch

    return {"cuda": torch.cuda.is_available(),
            "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
            "cpu": True}


def autodetect_device() -> str:
    """Pick the best device there is: cuda, then mps, then cpu."""
    return next(kind for kind, present in available_devices().items() if present)


def compute_dtype(device):
    """bf16 where the hardware has fast bf16 matmuls (CUDA sm80+), else fp32.

    On a CPU a bf16 matmul can be ~100x slower than fp32, so precision is chosen
    explicitly per device rather than by autocast.
    """
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.bfloat16
    return torch.float32


# -----------------------------------------------------------------------------
# Distributed: which rank am I

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


def torchrun_env() -> DistInfo:
    """What torchrun told this process to be (RANK, LOCAL_RANK, WORLD_SIZE); 1 process without it.

    This is the launch plan, read before a process group exists. Once a stage runs, ask
    get_rank()/get_world_size(), which answer for the process group actually joined.
    """
    return DistInfo(rank=int(os.environ.get("RANK", "0")), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    world_size=int(os.environ.get("WORLD_SIZE", "1")))


HEADLESS = "NANOCHAT_HEADLESS"  # set by `nanochat run` for the kernels it starts


def tqdm(*args, **kwargs):
    """A progress bar: tqdm.auto's (a live widget in Jupyter), but plain text in a headless run.

    papermill saves a widget bar as its first frame, "0%" forever. Under `nanochat run`
    ($NANOCHAT_HEADLESS) the bar is text instead: it updates every 30 s and ends at 100%, in the
    stage's log and in the saved notebook alike.
    """
    if os.environ.get(HEADLESS):
        from tqdm.std import tqdm as text_bar

        kwargs.setdefault("mininterval", 30.0)
        kwargs.setdefault("position", 0)  # a nested bar would move the cursor with escape codes a notebook shows raw
        return text_bar(*args, **kwargs)
    from tqdm.auto import tqdm as auto_bar

    return auto_bar(*args, **kwargs)


def _process_group():
    """torch.distributed if a process group is initialised, else None."""
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def get_rank() -> int:
    """This process's rank in the process group; 0 when there is none (a single process)."""
    group = _process_group()
    return group.get_rank() if group else 0


def get_world_size() -> int:
    """How many ranks share the work; 1 when there is no process group."""
    group = _process_group()
    return group.get_world_size() if group else 1


def is_master() -> bool:
    """Rank 0: the one that prints, plots and writes shared files."""
    return get_rank() == 0


def init_distributed(device: str | None = None, timeout_s: float | None = None) -> DistInfo:
    """Join the process group when launched by torchrun; a no-op for a single process.

    Safe to call twice (a notebook cell re-run). nccl on CUDA, gloo on CPU. The timeout
    (default $NANOCHAT_DIST_TIMEOUT, else 600 s; the pipeline sets it) bounds a hang
    when another rank has died.
    """
    import torch
    import torch.distributed as dist

    device = device or autodetect_device()
    timeout_s = timeout_s or float(os.environ.get("NANOCHAT_DIST_TIMEOUT", "600"))
    env = torchrun_env()
    if device == "cuda":
        torch.cuda.set_device(env.local_rank)
        device = f"cuda:{env.local_rank}"
    if env.world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        # device_id binds this rank's NCCL communicator to its GPU at once (no guessing from
        # the current device, and the first collective does not set up connections lazily).
        bound = {"device_id": torch.device(device)} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **bound)
    return DistInfo(rank=env.rank, local_rank=env.local_rank, world_size=env.world_size, device=device)


def destroy_distributed() -> None:
    """Leave the process group cleanly at the end of a stage.

    The barrier first: every rank leaves together, so no rank tears its connections down while a
    peer still sends on them (gloo then aborts the process: "terminate called without an active
    exception", seen once in CI at the end of a 2-rank test)."""
    if group := _process_group():
        group.barrier()
        group.destroy_process_group()


def print0(*args, **kwargs) -> None:
    """print, but only on rank 0, so N ranks do not print N copies."""
    if is_master():
        print(*args, **kwargs)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices) for reproducible runs."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
