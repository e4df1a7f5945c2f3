"""The paper costs of a profile (nanochat/costs.py, nanochat/memory.py): held to nanochat's published
numbers and to memory measured on this CPU, and a dry-run that refuses a stage that would not fit."""
import pytest
import torch

from nanochat import cli
from nanochat.gpt import GPTConfig, config_for_depth, count_params
from nanochat.memory import (activation_bytes_per_token, gpu_memory, held_after_forward, optimizer_bytes_per_rank,
                             training_memory)
from nanochat.costs import profile_costs
from nanochat.stages import NOTEBOOKS_DIR, apply_and_validate, load_profile, plan_stages

GIB = 1024 ** 3


def costs(profile_name: str) -> dict:
    profile = load_profile(profile_name)
    planned = plan_stages(profile, NOTEBOOKS_DIR)
    apply_and_validate(planned, [], planned)  # fills in each notebook's declared defaults, as `nanochat run` does
    return {c.stage: c for c in profile_costs(planned, profile)}


def test_the_speedrun_on_paper_is_nanochats_d20():
    """d20: ~561M parameters, 11.2B tokens (20 per parameter), ~21,400 steps of 524,288 tokens, ~4e19 FLOPs."""
    summary = costs("speedrun")["05_pretrain"].summary
    assert "d20, 561M parameters" in summary
    assert "21,400 steps x 524,288 tokens = 11.22B tokens" in summary
    flops = float(summary.split(" FLOPs")[0].rsplit(" ", 1)[1])
    assert 3.5e19 < flops < 4.5e19
    assert round(count_params(config_for_depth(20, vocab_size=65536)) / 1e6) == 561


def test_the_gpu_profiles_fit_and_their_published_batch_sizes_are_needed():
    """nanochat halves the device batch for d26 to fit 80 GB: at 32 it must not fit, at 16 it must."""
    _, h100 = gpu_memory("8xH100")
    for name in ("speedrun", "d26", "d32"):
        assert all(c.problem is None for c in costs(name).values()), name
    d26 = config_for_depth(26, vocab_size=65536, sequence_len=2048)
    assert training_memory(d26, 16, 2048, 8, compiled=True).total < h100 < training_memory(d26, 32, 2048, 8, compiled=True).total
    d20 = config_for_depth(20, vocab_size=65536, sequence_len=2048)
    assert training_memory(d20, 32, 2048, 8, compiled=True).total < h100 < training_memory(d20, 64, 2048, 8, compiled=True).total


def test_gpu_memory_reads_the_profiles_gpus():
    assert gpu_memory("8xH100") == (8, 80e9)
    assert gpu_memory("none") == (0, None)
    assert gpu_memory("4xB300") == (4, None)


def test_optimizer_state_is_counted_on_the_rank_that_owns_it():
    config = config_for_depth(4, vocab_size=1024, sequence_len=64)
    V, C = config.vocab_size, config.n_embd
    matrices = count_params(config) - 2 * V * C
    assert optimizer_bytes_per_rank(config, 1) == 4 * matrices + 2 * 8 * V * C  # Muon: 1 buffer, AdamW: 2
    assert optimizer_bytes_per_rank(config, 64) == 8 * V * C  # one parameter per rank: lm_head's AdamW is the largest


def per_token_cost(config, compiled):
    small, large = (held_after_forward(config, B, 64, compiled) for B in (2, 4))
    return (large - small) / 128


def test_the_activation_law_matches_a_measured_forward():
    """A shape the law was not fitted on: grouped heads (3 query, 1 key/value), C=384, 2 layers."""
    config = GPTConfig(sequence_len=64, vocab_size=512, n_layer=2, n_head=3, n_kv_head=1, n_embd=384)
    measured = per_token_cost(config, compiled=False)
    assert measured == pytest.approx(activation_bytes_per_token(config, compiled=False), rel=0.05)


@pytest.mark.slow
def test_the_compiled_activation_law_matches_a_measured_forward():
    config = GPTConfig(sequence_len=64, vocab_size=512, n_layer=2, n_head=3, n_kv_head=1, n_embd=384)
    measured = per_token_cost(config, compiled=True)
    assert measured == pytest.approx(activation_bytes_per_token(config, compiled=True), rel=0.15)
    assert measured < per_token_cost(config, compiled=False)  # compiling saves memory too


def test_the_whole_estimate_bounds_a_measured_training_step():
    """Peak memory of a steady-state step (forward, backward, optimizer) on CPU: the estimate is a close upper bound."""
    from torch.profiler import ProfilerActivity, profile

    from nanochat.gpt import build_model

    config = GPTConfig(sequence_len=128, vocab_size=2048, n_layer=3, n_head=2, n_kv_head=2, n_embd=256)
    B = 32
    model = build_model(config, dtype=torch.bfloat16)
    optimizer = model.setup_optimizers()
    x = torch.randint(0, 2048, (B, 128))
    model(x, x).backward()  # the first step creates the optimizer state
    optimizer.step()
    model.zero_grad(set_to_none=True)
    held = sum(p.nbytes for p in model.parameters()) + sum(
        t.nbytes for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x, x).backward()
        optimizer.step()
    level, peak = 0, 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        level += event.self_cpu_memory_usage
        peak = max(peak, level)
    estimate = training_memory(config, B, 128, 1, compiled=False, allowance=0).total
    assert 0.75 * estimate < held + peak <= 1.05 * estimate, ((held + peak) / GIB, estimate / GIB)


def test_the_dry_run_prints_the_costs_and_refuses_what_would_not_fit(capsys):
    assert cli.main(["run", "--profile", "speedrun", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "05_pretrain      d20, 561M parameters; 21,400 steps" in out and "h at 40% MFU on 8xH100" in out
    assert "memory per GPU at device batch 32 x 2048 (compiled)" in out
    assert cli.main(["run", "--profile", "speedrun", "--dry-run", "--only", "05", "-p", "compile=false"]) == 2
    err = capsys.readouterr().err
    assert "05_pretrain would not fit" in err and "set compile = true" in err
    assert cli.main(["run", "--profile", "d26", "--dry-run", "--only", "05", "-p", "device_batch_size=32"]) == 2
    assert "halve device_batch_size" in capsys.readouterr().err


def test_the_shard_count_covers_the_horizon_after_packing_crops():
    """d20's 11.2B tokens at ~34M usable tokens per shard: ~333 shards, not speedrun.sh's 240."""
    from nanochat.costs import shards_needed

    assert shards_needed(11_220_000_000) == 333 and shards_needed(1) == 2  # and one for validation
    for name in ("speedrun", "d26", "d32"):
        summary = costs(name)["05_pretrain"].summary
        assert "shards (" in summary and costs(name)["05_pretrain"].problem is None, name


def test_the_dry_run_refuses_too_few_shards_for_a_gpu_run(capsys):
    assert cli.main(["run", "--profile", "speedrun", "--dry-run", "--from", "02", "-p", "num_shards=240"]) == 2
    err = capsys.readouterr().err
    assert "02_data downloads 240 shards, but 05_pretrain's 11.2B tokens need ~333" in err and "num_shards = 333" in err
    assert cli.main(["run", "--profile", "cpu", "--dry-run"]) == 0  # laptop profiles go round their few shards on purpose


def test_a_later_stage_alone_is_costed_with_the_depth_pretraining_sets(capsys):
    """--only 07: stage 05 is not selected (nor validated), but its depth is the model 07 fine-tunes."""
    assert cli.main(["run", "--profile", "speedrun", "--dry-run", "--only", "07"]) == 0
    assert "07_sft           d20, 561M parameters" in capsys.readouterr().out
