"""Notebooks 06 (midtraining) and 07 (SFT) as programs: exact resume, 2 ranks, a clear tokenizer mismatch.

Each runs under papermill on a base dir of its own holding a small tokenizer and a random
depth-1 'base' checkpoint (we test the machinery, not the model), with tiny mixtures.
"""
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import papermill
import pytest
import torch

import base_dirs
from base_dirs import using_base_dir
from nanochat import cli, common, stages
from nanochat.checkpoint import save_checkpoint
from nanochat.gpt import build_model, config_for_depth
from nanochat.tasks.gsm8k import GSM8K
from nanochat.tasks.smoltalk import SmolTalk
from nanochat.tokenizer import get_tokenizer, train_tokenizer

SMALL = {
    "06_midtrain": dict(max_seq_len=128, device_batch_size=2, total_batch_size=256, smoltalk_rows=40, mmlu_rows=20,
                        gsm8k_rows=20, identity_rows=10, simple_spelling_rows=20, spelling_bee_rows=20, eval_every=2,
                        eval_batches=1, eval_problems=2, format_prompts=2, format_max_tokens=8),
    "07_sft": dict(max_seq_len=128, device_batch_size=2, total_batch_size=256, arc_easy_rows=20, arc_challenge_rows=10,
                   gsm8k_rows=20, smoltalk_rows=20, identity_rows=10, simple_spelling_rows=10, spelling_bee_rows=10,
                   eval_every=2, eval_batches=1, eval_problems=2, format_prompts=2, format_max_tokens=8),
}
SMALL["08_grpo"] = dict(num_steps=4, prompts_per_step=2, num_samples=2, max_new_tokens=8, eval_every=2,
                        eval_problems=2, eval_samples=2, spelling_bee_size=16)
PHASE = {"06_midtrain": "mid", "07_sft": "sft", "08_grpo": "rl"}


@pytest.fixture(scope="module")
def chat_inputs(tmp_path_factory, data_pack) -> Path:
    """A base dir with a 512-token tokenizer, a random d1 base model and the task data cached."""
    with using_base_dir(tmp_path_factory.mktemp("chat-inputs")) as base:
        texts = [json.dumps(GSM8K("train")[i]) for i in range(300)] + [json.dumps(SmolTalk("train")[i]) for i in range(300)]
        train_tokenizer(texts, vocab_size=512)
        tokenizer = get_tokenizer()
        torch.manual_seed(0)
        config = config_for_depth(1, vocab_size=tokenizer.get_vocab_size(), sequence_len=128)
        model = build_model(config)
        save_checkpoint(common.checkpoint_dir("base", 1), 1, model.state_dict(), None,
                        {"config": asdict(config), "tokenizer": tokenizer.fingerprint()})
    return base


def fresh_base_dir(inputs: Path, path: Path, monkeypatch) -> Path:
    """Shares the inputs (symlinks) but has its own checkpoints for the stage under test."""
    return base_dirs.fresh_base_dir(inputs, path, monkeypatch, shared=("tokenizer", "task_data", "checkpoints/base"))


def run_notebook(stage: str, out: Path, **parameters) -> str:
    """Execute a stage notebook in a fresh kernel; return its printed output."""
    papermill.execute_notebook(str(stages.NOTEBOOKS_DIR / f"{stage}.ipynb"), str(out), kernel_name="python3",
                               parameters={**SMALL[stage], **parameters}, progress_bar=False,
                               cwd=str(stages.NOTEBOOKS_DIR))
    cells = json.loads(out.read_text())["cells"]
    return "".join("".join(o.get("text", "")) for cell in cells for o in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["06_midtrain", "07_sft", "08_grpo"])
def test_resume_is_bit_exact(stage, chat_inputs, tmp_path, monkeypatch):
    """k steps, a new process resumes from the step-k checkpoint, k more: the same as 2k straight.

    For 08 the random base model earns no reward, so its weights do not move: what this checks
    there is that a resumed run rolls out the same prompts with the same seeds (the history).
    """
    steps, half = 4, 2
    horizon = {"num_steps" if stage == "08_grpo" else "num_iterations": steps}
    run_a = fresh_base_dir(chat_inputs, tmp_path / "a", monkeypatch)
    run_notebook(stage, tmp_path / "a.ipynb", **horizon, save_every=half)
    folder_a = run_a / "checkpoints" / PHASE[stage] / "d1"
    run_b = fresh_base_dir(chat_inputs, tmp_path / "b", monkeypatch)
    folder_b = run_b / "checkpoints" / PHASE[stage] / "d1"
    folder_b.mkdir(parents=True)
    for path in folder_a.glob(f"*_{half:06d}*"):  # B has only A's half-way checkpoint
        shutil.copy(path, folder_b)
    printed = run_notebook(stage, tmp_path / "b.ipynb", **horizon, save_every=half, resume_from_step=half)
    assert f"resumed from step {half}" in printed
    meta_a = json.loads((folder_a / f"meta_{steps:06d}.json").read_text())
    meta_b = json.loads((folder_b / f"meta_{steps:06d}.json").read_text())
    series = "reward" if stage == "08_grpo" else "train/loss"
    assert len(meta_a["history"][series]) == steps and meta_b["history"] == meta_a["history"]
    weights_a, weights_b = (torch.load(f / f"model_{steps:06d}.pt") for f in (folder_a, folder_b))
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    if stage != "08_grpo":  # RL's data position is a function of the step: it has no loader state
        assert torch.load(folder_a / f"loader_{steps:06d}_rank0.pt") == torch.load(folder_b / f"loader_{steps:06d}_rank0.pt")


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_do_rl_through_the_pipeline(chat_inputs, tmp_path, monkeypatch):
    base = fresh_base_dir(chat_inputs, tmp_path / "base", monkeypatch)
    monkeypatch.chdir(tmp_path)
    profile = tmp_path / "two_ranks.toml"
    profile.write_text('[profile]\ndescription = "test"\nhours = 0\ncost_usd = 0\ngpus = "none"\n'
                       '[stages.08_grpo]\nnproc = 2\n[stages.08_grpo.parameters]\n'
                       + "".join(f"{key} = {json.dumps(value)}\n" for key, value in SMALL["08_grpo"].items()))
    assert cli.main(["run", "--profile", str(profile), "--run", "dist", "--only", "08",
                     "--cell-timeout", "600", "--dist-timeout", "300"]) == 0
    meta = json.loads((base / "checkpoints" / "rl" / "d1" / "meta_000004.json").read_text())
    assert meta["world_size"] == 2 and len(meta["history"]["reward"]) == 4


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_fine_tune_through_the_pipeline(chat_inputs, tmp_path, monkeypatch, capfd):
    base = fresh_base_dir(chat_inputs, tmp_path / "base", monkeypatch)
    monkeypatch.chdir(tmp_path)
    params = {**SMALL["07_sft"], "num_iterations": 4, "total_batch_size": 512}  # 2 rows x 128 x 2 ranks
    profile = tmp_path / "two_ranks.toml"
    profile.write_text('[profile]\ndescription = "test"\nhours = 0\ncost_usd = 0\ngpus = "none"\n'
                       '[stages.07_sft]\nnproc = 2\n[stages.07_sft.parameters]\n'
                       + "".join(f"{key} = {json.dumps(value)}\n" for key, value in params.items()))
    assert cli.main(["run", "--profile", str(profile), "--run", "dist", "--only", "07",
                     "--cell-timeout", "600", "--dist-timeout", "300"]) == 0
    assert "[rank 1]" not in capfd.readouterr().out
    executed = (base / "runs" / "dist" / "07_sft.ipynb").read_text()
    assert "07_sft: 2 rank(s) on cpu" in executed and "all checks passed" in executed
    assert json.loads((base / "checkpoints" / "sft" / "d1" / "meta_000004.json").read_text())["world_size"] == 2


def test_a_base_model_of_another_tokenizer_is_a_clear_error(chat_inputs, tmp_path, monkeypatch, capsys):
    base = fresh_base_dir(chat_inputs, tmp_path / "base", monkeypatch)
    (base / "checkpoints" / "base").unlink()  # a base model of its own, trained with another tokenizer
    shutil.copytree(chat_inputs / "checkpoints" / "base", base / "checkpoints" / "base")
    meta = base / "checkpoints" / "base" / "d1" / "meta_000001.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "tokenizer": "0123456789abcdef"}))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--run", "r", "--only", "06", *[f"-p=06_midtrain.{k}={json.dumps(v)}"
                                                          for k, v in SMALL["06_midtrain"].items()]]) == 1
    err = capsys.readouterr().err
    assert "CheckpointError" in err and "was trained with another tokenizer" in err
