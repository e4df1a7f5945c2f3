"""Atomic save/load of a training run's state; loading a trained model for chat or evaluation.

A checkpoint of step S is a set of files in one folder (common.checkpoint_dir(phase, depth),
i.e. base_dir/checkpoints/{phase}/d{depth}):
  model_{S:06d}.pt            the weights (written by rank 0; every rank holds the same ones)
  optim_{S:06d}_rank{r}.pt    rank r's optimizer shard (nanochat.optim: each rank owns some parameters)
  loader_{S:06d}_rank{r}.pt   rank r's data-loader position, if the caller gives one
  meta_{S:06d}.json           config, metrics, tokenizer hash, world size: written LAST, by rank 0
Each file is written with common.atomic_file (a temporary name, fsync, then os.replace,
which is atomic): after a crash a file is either absent or whole. The meta file
is written only once every rank has finished its files, so "the meta file exists" is the
definition of "this step is complete", and an interrupted save is simply not seen.

Every later stage and every chat view loads its model with load_model(): it finds the most
trained phase (rl > sft > mid > base) unless told which, the largest depth and the last
step, and refuses a model trained with another tokenizer than the one in base_dir/tokenizer.
"""
import json
import os
import re
from dataclasses import asdict, is_dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

from nanochat import common
from nanochat.common import PHASES, checkpoint_dir, phase_dir  # noqa: F401 (re-exported)
from nanochat.gpt import GPT, GPTConfig, build_model

_META_NAME = re.compile(r"^meta_(\d{6,})\.json$")
_STEP_FILE = re.compile(r"^(?:model|optim|loader|meta)_(\d{6,})(?:_rank\d+)?\.(?:pt|json)$")  # _paths' names


class CheckpointError(RuntimeError):
    """A checkpoint file is corrupt or truncated, or does not match what the caller expects."""


class LoadedCheckpoint(NamedTuple):
    model_state: dict
    optimizer_state: dict | None
    meta: dict
    loader_state: object | None


def _paths(folder: str, step: int, rank: int = 0) -> dict:
    """The file names that make up one step (per-rank files for `rank`)."""
    return {
        "model": os.path.join(folder, f"model_{step:06d}.pt"),
        "optim": os.path.join(folder, f"optim_{step:06d}_rank{rank}.pt"),
        "loader": os.path.join(folder, f"loader_{step:06d}_rank{rank}.pt"),
        "meta": os.path.join(folder, f"meta_{step:06d}.json"),
    }


def _save(obj, path: str) -> None:
    """torch.save, atomically."""
    with common.atomic_file(path) as f:
        torch.save(obj, f)


def save_checkpoint(folder: str, step: int, model_state: dict, optimizer_state: dict | None,
                    meta: dict, loader_state=None, rank: int = 0) -> None:
    """Write one step. Every rank calls it (with its own optimizer/loader state); rank 0 writes model and meta.

    meta must be JSON-serialisable and should hold "config" (asdict of the GPTConfig),
    plus whatever the stage wants to remember (metrics, tokenizer hash, ...). The step
    and the world size are added to it.
    """
    meta_text = json.dumps({**meta, "step": step, "world_size": common.get_world_size()}, indent=2)
    paths = _paths(folder, step, rank)
    if rank == 0:
        _save(model_state, paths["model"])
    if optimizer_state is not None:
        _save(optimizer_state, paths["optim"])
    if loader_state is not None:
        _save(loader_state, paths["loader"])
    distributed = dist.is_available() and dist.is_initialized()
    if distributed:
        dist.barrier()  # every rank's files are in place before the step is declared complete
    if rank == 0:
        common.atomic_write(paths["meta"], meta_text)
    if distributed:
        dist.barrier()  # and no rank goes on (and perhaps reads it) before it is complete


def complete_steps(folder: str) -> list[int]:
    """The steps in a folder whose meta file exists (i.e. whose save finished), ascending."""
    if not os.path.isdir(folder):
        return []
    matches = (_META_NAME.match(name) for name in os.listdir(folder))
    return sorted(int(m.group(1)) for m in matches if m)


def find_last_step(folder: str) -> int | None:
    """The last complete step in a folder, or None if there is none (a fresh run)."""
    steps = complete_steps(folder)
    return steps[-1] if steps else None


def prune_checkpoints(folder: str, keep: int, newest: int) -> list[int]:
    """After saving step `newest`, delete every step but the last `keep` complete ones up to it
    (keep <= 0: keep all); returns the steps deleted.

    A d20 checkpoint is ~5 GB (fp32 weights and every rank's optimizer state), so hours of periodic
    saves fill a disk. Steps after `newest` are another run's (one started over with --force, or
    fresh beside another run's checkpoints): they go too, or they would count as this run's latest.
    So do the files of interrupted saves (no meta). Only this run writes here, and only rank 0
    prunes, after every rank has finished the save. A step's meta file is removed first, so a step
    half deleted is never taken for complete.
    """
    if keep <= 0:
        return []
    kept = [step for step in complete_steps(folder) if step <= newest][-keep:]
    if newest not in kept:
        raise ValueError(f"prune_checkpoints: step {newest} is not a complete checkpoint in {folder}")
    by_step = {}
    for name in os.listdir(folder):
        match = _STEP_FILE.match(name)
        if match and int(match.group(1)) not in kept:
            by_step.setdefault(int(match.group(1)), []).append(name)
    for step, names in sorted(by_step.items()):
        for name in sorted(names, key=lambda n: not n.startswith("meta_")):  # the meta file first
            os.remove(os.path.join(folder, name))
    return sorted(by_step)


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


def load_checkpoint(folder: str, step: int, device="cpu", load_optimizer: bool = True,
                    rank: int = 0, expected_config=None) -> LoadedCheckpoint:
    """Read one complete step: (model_state, optimizer_state or None, meta, loader_state or None).

    expected_config (a GPTConfig or a dict of some of its fields) is compared against the
    saved config before any weights are read.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no checkpoint folder {folder}: train this phase first, "
                                f"or check NANOCHAT_BASE_DIR, the phase and the depth")
    steps = complete_steps(folder)
    if step not in steps:
        raise FileNotFoundError(f"no complete checkpoint for step {step} in {folder}; "
                                f"complete steps there: {steps or 'none'}")
    paths = _paths(folder, step, rank)
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
            raise CheckpointError(f"step {step} in {folder} was saved by {saved_world} rank(s) and this "
                                  f"run has {world}: each rank owns an optimizer shard, so resume with "
                                  f"{saved_world} rank(s) (or pass load_optimizer=False to restart the optimizer)")
        optimizer_state = _load_file(paths["optim"], device)
    loader_state = _load_file(paths["loader"], "cpu") if os.path.exists(paths["loader"]) else None
    return LoadedCheckpoint(model_state, optimizer_state, meta, loader_state)


def find_checkpoint(phase: str, depth: int | None = None, step: int | None = None) -> tuple[str, int]:
    """Resolve (folder, step) for a phase; a missing depth or step means the largest depth and its last step."""
    if depth is None:
        parent = phase_dir(phase)
        names = os.listdir(parent) if os.path.isdir(parent) else []
        depths = sorted(int(name[1:]) for name in names
                        if re.fullmatch(r"d\d+", name) and complete_steps(os.path.join(parent, name)))
        if not depths:
            raise FileNotFoundError(f"no complete {phase!r} checkpoint of any depth under {parent}: run that phase first")
        depth = depths[-1]
    folder = checkpoint_dir(phase, depth)
    if step is None:
        step = find_last_step(folder)
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {folder}: run the {phase!r} phase at depth {depth} first")
    return folder, step


def trained_phases() -> list[str]:
    """The phases that have a complete checkpoint (of any depth), in training order."""
    found = []
    for phase in PHASES:
        try:
            find_checkpoint(phase)
            found.append(phase)
        except FileNotFoundError:
            continue
    return found


def most_trained_phase() -> str:
    """The last phase with a complete checkpoint (rl, then sft, mid, base): the model most ready to chat."""
    if phases := trained_phases():
        return phases[-1]
    raise FileNotFoundError(f"no checkpoint under {common.base_path('checkpoints')}: train a model first "
                            f"(notebooks/05_pretrain.ipynb, or `nanochat run --profile tiny`), or set "
                            f"NANOCHAT_BASE_DIR to the base dir of a finished run")


class LoadedModel(NamedTuple):
    model: GPT
    tokenizer: object  # nanochat.tokenizer.Tokenizer
    meta: dict         # the checkpoint's meta, plus "phase" and "folder"


def check_tokenizer(meta: dict, tokenizer, where: str) -> None:
    """Refuse a model trained with another tokenizer: its token ids would mean other strings."""
    vocab = meta.get("config", {}).get("vocab_size")
    saved = meta.get("tokenizer")
    if vocab != tokenizer.get_vocab_size() or (saved is not None and saved != tokenizer.fingerprint()):
        raise CheckpointError(
            f"{where} was trained with another tokenizer (vocab {vocab}, fingerprint {saved}) than the one in "
            f"{common.tokenizer_dir()} (vocab {tokenizer.get_vocab_size()}, fingerprint {tokenizer.fingerprint()}): "
            f"point NANOCHAT_BASE_DIR at the run that trained it, or retrain from notebook 01 in this base dir")


def load_model(phase: str | None = None, depth: int | None = None, step: int | None = None, device="cpu",
               dtype=None, tokenizer=None) -> LoadedModel:
    """The model a later stage, an evaluation or a chat starts from, with its tokenizer, checked.

    phase None = the most trained one there is; depth None = the largest; step None = the
    last complete one. The tokenizer (default: base_dir/tokenizer) must be the one the model
    was trained with.
    """
    from nanochat.tokenizer import get_tokenizer

    guesses = {"phase": "the most trained phase", "depth": "the largest depth", "step": "the last step"}
    guessed = [guesses[what] for what, value in (("phase", phase), ("depth", depth), ("step", step)) if value is None]
    phase = phase or most_trained_phase()
    folder, step = find_checkpoint(phase, depth, step)
    common.print0(f"loading the {phase!r} model, step {step}, from {folder}"
                  + (f" ({', '.join(guessed)}: none was given)" if guessed else ""))
    ckpt = load_checkpoint(folder, step, device, load_optimizer=False)
    tokenizer = tokenizer or get_tokenizer()
    check_tokenizer(ckpt.meta, tokenizer, f"the {phase!r} model in {folder} (step {step})")
    model = build_model(GPTConfig(**ckpt.meta["config"]), device, dtype)
    model.load_state_dict(ckpt.model_state)
    return LoadedModel(model, tokenizer, {**ckpt.meta, "phase": phase, "folder": folder})
