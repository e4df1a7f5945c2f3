"""Atomic save/load of a training run's state: weights, optimizer shards, loader positions, metadata.

A checkpoint of step S is a set of files in one folder (base_dir/checkpoints/{phase}/d{depth}):
  model_{S:06d}.pt            the weights (written by rank 0; every rank holds the same ones)
  optim_{S:06d}_rank{r}.pt    rank r's optimizer shard (nanochat.optim: each rank owns some parameters)
  loader_{S:06d}_rank{r}.pt   rank r's data-loader position, if the caller gives one
  meta_{S:06d}.json           config, metrics, tokenizer hash, world size: written LAST, by rank 0
Each file is written under a temporary name in the same folder and then renamed with
os.replace, which is atomic: after a crash a file is either absent or whole. The meta file
is written only once every rank has finished its files, so "the meta file exists" is the
definition of "this step is complete", and an interrupted save is simply not seen.
"""
import json
import os
import re
from dataclasses import asdict, is_dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

from nanochat import common
from nanochat.gpt import GPT, GPTConfig, build_model

PHASES = ("base", "mid", "sft", "rl")
_META_NAME = re.compile(r"^meta_(\d{6,})\.json$")


class CheckpointError(RuntimeError):
    """A checkpoint file is corrupt or truncated, or does not match what the caller expects."""


class LoadedCheckpoint(NamedTuple):
    model_state: dict
    optimizer_state: dict | None
    meta: dict
    loader_state: object | None


def phase_dir(base_dir: str, phase: str) -> str:
    """Where one training phase keeps its checkpoints: base_dir/checkpoints/{phase}."""
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}: use one of {PHASES}")
    return os.path.join(base_dir, "checkpoints", phase)


def checkpoint_dir(base_dir: str, phase: str, depth: int) -> str:
    """Where a phase's checkpoints of one model size live: base_dir/checkpoints/{phase}/d{depth}."""
    return os.path.join(phase_dir(base_dir, phase), f"d{depth}")


def _paths(folder: str, step: int, rank: int = 0) -> dict:
    """The file names that make up one step (per-rank files for `rank`)."""
    return {
        "model": os.path.join(folder, f"model_{step:06d}.pt"),
        "optim": os.path.join(folder, f"optim_{step:06d}_rank{rank}.pt"),
        "loader": os.path.join(folder, f"loader_{step:06d}_rank{rank}.pt"),
        "meta": os.path.join(folder, f"meta_{step:06d}.json"),
    }


def _atomic_write(path: str, write) -> None:
    """Call write(file) on a temporary file next to `path`, flush it to disk, then rename it into place."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows when both are in the same folder
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(checkpoint_dir: str, step: int, model_state: dict, optimizer_state: dict | None,
                    meta: dict, loader_state=None, rank: int = 0) -> None:
    """Write one step. Every rank calls it (with its own optimizer/loader state); rank 0 writes model and meta.

    meta must be JSON-serialisable and should hold "config" (asdict of the GPTConfig),
    plus whatever the stage wants to remember (metrics, tokenizer hash, ...). The step
    and the world size are added to it.
    """
    meta_text = json.dumps({**meta, "step": step, "world_size": common.get_world_size()}, indent=2)
    os.makedirs(checkpoint_dir, exist_ok=True)
    paths = _paths(checkpoint_dir, step, rank)
    if rank == 0:
        _atomic_write(paths["model"], lambda f: torch.save(model_state, f))
    if optimizer_state is not None:
        _atomic_write(paths["optim"], lambda f: torch.save(optimizer_state, f))
    if loader_state is not None:
        _atomic_write(paths["loader"], lambda f: torch.save(loader_state, f))
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.barrier()  # every rank's files are in place before the step is declared complete
    if rank == 0:
        _atomic_write(paths["meta"], lambda f: f.write(meta_text.encode()))
    if distributed:
        dist.barrier()  # and no rank goes on (and perhaps reads it) before it is complete


def complete_steps(checkpoint_dir: str) -> list[int]:
    """The steps in a folder whose meta file exists (i.e. whose save finished), ascending."""
    if not os.path.isdir(checkpoint_dir):
        return []
    matches = (_META_NAME.match(name) for name in os.listdir(checkpoint_dir))
    return sorted(int(m.group(1)) for m in matches if m)


def find_last_step(checkpoint_dir: str) -> int | None:
    """The last complete step in a folder, or None if there is none (a fresh run)."""
    steps = complete_steps(checkpoint_dir)
    return steps[-1] if steps else None


def _load_file(path: str, device) -> object:
    """torch.load with an error that names the file when it is missing, truncated or corrupt."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path} is missing, although the step's meta file says the step is complete")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"could not read {path}: it is truncated or corrupt ({type(e).__name__}: {e}). "
                              f"Delete this step's files to resume from an earlier step.") from e


def _check_config(meta: dict, expected, meta_path: str) -> None:
    """Raise if the checkpoint's config differs from the expected one in any key the caller gave."""
    expected = asdict(expected) if is_dataclass(expected) else dict(expected)
    saved = meta.get("config", {})
    wrong = [f"{key}: saved {saved.get(key)!r}, expected {value!r}"
             for key, value in expected.items() if saved.get(key) != value]
    if wrong:
        raise CheckpointError(f"{meta_path} does not match the expected model config ("
                              + "; ".join(wrong) + "). Check the depth/vocab you asked for.")


def load_checkpoint(checkpoint_dir: str, step: int, device="cpu", load_optimizer: bool = True,
                    rank: int = 0, expected_config=None) -> LoadedCheckpoint:
    """Read one complete step: (model_state, optimizer_state or None, meta, loader_state or None).

    expected_config (a GPTConfig or a dict of some of its fields) is compared against the
    saved config before any weights are read.
    """
    if not os.path.isdir(checkpoint_dir):
        raise FileNotFoundError(f"no checkpoint folder {checkpoint_dir}: train this phase first, "
                                f"or check NANOCHAT_BASE_DIR, the phase and the depth")
    steps = complete_steps(checkpoint_dir)
    if step not in steps:
        raise FileNotFoundError(f"no complete checkpoint for step {step} in {checkpoint_dir}; "
                                f"complete steps there: {steps or 'none'}")
    paths = _paths(checkpoint_dir, step, rank)
    try:
        with open(paths["meta"]) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"could not read {paths['meta']}: it is corrupt ({e})") from e
    if expected_config is not None:
        _check_config(meta, expected_config, paths["meta"])

    model_state = _load_file(paths["model"], device)
    # A torch.compile'd model names its weights "_orig_mod.<name>": accept those too.
    model_state = {k.removeprefix("_orig_mod."): v for k, v in model_state.items()}
    optimizer_state = None
    if load_optimizer:
        saved_world, world = meta.get("world_size", 1), common.get_world_size()
        if saved_world != world:
            raise CheckpointError(f"step {step} in {checkpoint_dir} was saved by {saved_world} rank(s) and this "
                                  f"run has {world}: each rank owns an optimizer shard, so resume with "
                                  f"{saved_world} rank(s) (or pass load_optimizer=False to restart the optimizer)")
        optimizer_state = _load_file(paths["optim"], device)
    loader_state = _load_file(paths["loader"], "cpu") if os.path.exists(paths["loader"]) else None
    return LoadedCheckpoint(model_state, optimizer_state, meta, loader_state)


def find_checkpoint(base_dir: str, phase: str, depth: int | None = None, step: int | None = None):
    """Resolve (folder, step) for a phase; a missing depth or step is guessed (largest, last) and said so."""
    if depth is None:
        parent = phase_dir(base_dir, phase)
        names = os.listdir(parent) if os.path.isdir(parent) else []
        depths = sorted(int(name[1:]) for name in names
                        if re.fullmatch(r"d\d+", name) and complete_steps(os.path.join(parent, name)))
        if not depths:
            raise FileNotFoundError(f"no complete {phase!r} checkpoint of any depth under {parent}: run that phase first")
        depth = depths[-1]
        common.print0(f"no depth given: using d{depth}, the largest {phase!r} model in {parent}")
    folder = checkpoint_dir(base_dir, phase, depth)
    if step is None:
        step = find_last_step(folder)
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {folder}: run the {phase!r} phase at depth {depth} first")
        common.print0(f"no step given: using step {step}, the last complete one in {folder}")
    return folder, step


def build_model_from_checkpoint(phase: str, depth: int | None = None, step: int | None = None, device="cpu",
                                base_dir: str | None = None, dtype=None) -> tuple[GPT, dict]:
    """Build the GPT a checkpoint describes and load its weights. Returns (model, meta)."""
    folder, step = find_checkpoint(base_dir or common.get_base_dir(), phase, depth, step)
    ckpt = load_checkpoint(folder, step, device, load_optimizer=False)
    model = build_model(GPTConfig(**ckpt.meta["config"]), device, dtype)
    model.load_state_dict(ckpt.model_state)
    return model, ckpt.meta
