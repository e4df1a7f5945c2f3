"""What each training stage of a profile will cost, on paper: steps, tokens, FLOPs, time, memory per GPU.

`nanochat run --dry-run` prints this before anything runs, and a run stops there when a stage
would not fit in its GPUs' memory: a GPU profile can be checked without a GPU. Time is the
FLOPs at the profile's assumed MFU (`[profile] assumed_mfu`, an assumption, not a measurement);
memory is nanochat/memory.py's estimate.
"""
import math
from dataclasses import dataclass

import torch

from nanochat.dataset import MAX_SHARD
from nanochat.memory import gpu_memory, training_memory
from nanochat.train import GPU_PEAK_FLOPS, training_horizon

TRAINING_STAGES = ("05_pretrain", "06_midtrain", "07_sft")

# How many FineWeb-EDU shards a pretraining run reads. Each shard holds ~250M characters; a
# 65,536-token vocabulary averages ~4.8 characters per token there (both nanochat's figures,
# speedrun.sh); and best-fit packing at T = 2048 crops ~35% of the document tokens it reads
# (nanochat's dataloader.py docstring, the same algorithm with a 1000-document buffer). So a
# shard yields ~250M / 4.8 x 0.65 = ~34M training tokens, not the ~52M it holds.
CHARS_PER_SHARD = 250e6
CHARS_PER_TOKEN = 4.8
CROP_FRACTION = 0.35


@dataclass
class StageCost:
    """The paper numbers of one stage, and whether it fits."""
    stage: str
    summary: str
    memory: str | None = None
    problem: str | None = None   # set when the stage would not fit


def _value(stage, name, default=None):
    """A parameter as the stage will see it: the profile's value, else the notebook's default."""
    from nanochat.stages import declared_parameters

    if not stage.declared and stage.notebook is not None:  # a stage outside --only/--from: not validated
        stage.declared = declared_parameters(stage.notebook)
    return stage.parameters.get(name, stage.declared.get(name, default))


def _model_config(stages: dict, stage):
    """The GPTConfig a training stage trains: 05 sets the depth, later stages load 05's model."""
    from nanochat.gpt import config_for_depth

    depth = _value(stage, "depth", -1)
    if depth is None or depth < 0:
        depth = _value(stages["05_pretrain"], "depth")
    vocab = _value(stages["01_tokenizer"], "vocab_size") if "01_tokenizer" in stages else 65536
    seq_len = _value(stages["05_pretrain"], "max_seq_len")  # the context the model was built with
    return config_for_depth(depth, vocab_size=vocab, sequence_len=seq_len)


def _flops_per_token(config) -> float:
    from nanochat.gpt import GPT

    with torch.device("meta"):
        return GPT(config).estimate_flops()


def shards_needed(train_tokens: int) -> int:
    """Shards to download for train_tokens of pretraining: the train shards packing turns into them, plus validation."""
    usable_per_shard = CHARS_PER_SHARD / CHARS_PER_TOKEN * (1 - CROP_FRACTION)
    return math.ceil(train_tokens / usable_per_shard) + 1


def _shard_problem(stages: dict, train_tokens: int) -> tuple[str, str | None]:
    """(a note on the shard count, a problem if 02_data downloads too few for the horizon)."""
    if "02_data" not in stages:
        return "", None
    have, need = _value(stages["02_data"], "num_shards"), shards_needed(train_tokens)
    note = f"; reads ~{need:,} shards ({have:,} downloaded by 02_data)"
    if need > MAX_SHARD + 1:
        return note, (f"05_pretrain's {train_tokens / 1e9:.1f}B tokens need ~{need:,} shards, but the dataset has "
                      f"{MAX_SHARD + 1:,}: lower target_param_data_ratio, or the run repeats its data")
    if have >= need:
        return note, None
    return note, (f"02_data downloads {have} shards, but 05_pretrain's {train_tokens / 1e9:.1f}B tokens need ~{need} "
                  f"(~{CHARS_PER_SHARD / CHARS_PER_TOKEN * (1 - CROP_FRACTION) / 1e6:.0f}M tokens per shard after "
                  f"packing's ~{CROP_FRACTION:.0%} crop, and one for validation): set num_shards = {need} in the "
                  f"profile's 02_data, or the run repeats its data")


def stage_cost(stages: dict, stage, gpus: str, assumed_mfu: float | None) -> StageCost:
    """Steps, tokens, FLOPs and (on known GPUs) time and memory per GPU of one training stage."""
    from nanochat.gpt import count_params

    config = _model_config(stages, stage)
    B, T = _value(stage, "device_batch_size"), _value(stage, "max_seq_len")
    total = _value(stage, "total_batch_size")
    flops_per_token = _flops_per_token(config)
    params = count_params(config)
    if stage.name == "05_pretrain":
        horizon = training_horizon(_value(stage, "num_iterations"), _value(stage, "target_flops"),
                                   _value(stage, "target_param_data_ratio"), params, flops_per_token, total)
        steps = horizon.steps
    else:
        steps = _value(stage, "num_iterations")
        steps = steps if steps and steps > 0 else None  # one pass over the mixture: counted at run time
    model = f"d{config.n_layer}, {params / 1e6:,.0f}M parameters"
    if steps is None:
        summary = f"{model}; one pass over its mixture (steps counted at run time) of {total:,} tokens a step"
        flops = None
    else:
        flops = steps * total * flops_per_token
        tokens = steps * total
        amount = f"{tokens / 1e9:,.2f}B" if tokens >= 1e8 else f"{tokens / 1e6:,.2f}M"
        summary = f"{model}; {steps:,} steps x {total:,} tokens = {amount} tokens, {flops:.2g} FLOPs"
    count, per_gpu = gpu_memory(gpus)
    name = gpus.partition("x")[2]
    peak = next((f for key, f in GPU_PEAK_FLOPS.items() if key in name), None) if count else None
    if flops is not None and peak and assumed_mfu:
        summary += f", ~{flops / (count * peak * assumed_mfu) / 3600:.1f} h at {assumed_mfu:.0%} MFU on {gpus}"
    shard_problem = None
    if stage.name == "05_pretrain" and count:  # a GPU run: repeating data there is a mistake (laptops loop on purpose)
        note, shard_problem = _shard_problem(stages, steps * total)
        summary += note
    cost = StageCost(stage.name, summary, problem=shard_problem)
    if count and per_gpu:
        compiled = bool(_value(stage, "compile", False))
        memory = training_memory(config, B, T, stage.nproc, compiled)
        cost.memory = (f"memory per GPU at device batch {B} x {T} ({'compiled' if compiled else 'eager'}): "
                       f"{memory.describe()} of {per_gpu / 1024 ** 3:.1f} GiB")
        if memory.total > per_gpu:
            cost.problem = ((cost.problem + "; ") if cost.problem else "") + (f"{stage.name} would not fit: ~{memory.total / 1024 ** 3:.0f} GiB per GPU at device_batch_size "
                            f"{B} against {per_gpu / 1024 ** 3:.0f} GiB" + ("" if compiled else "; set compile = true, or")
                            + f" halve device_batch_size (total_batch_size stays, by gradient accumulation)")
    return cost


def profile_costs(all_stages: list, profile: dict) -> list[StageCost]:
    """The costs of the profile's training stages that exist, in order."""
    stages = {s.name: s for s in all_stages if s.notebook is not None}
    meta = profile["profile"]
    return [stage_cost(stages, stages[name], meta["gpus"], meta.get("assumed_mfu"))
            for name in TRAINING_STAGES if name in stages and "05_pretrain" in stages]
