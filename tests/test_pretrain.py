"""Notebook 05 as a program: resume is bit-exact, and 2 ranks train through the pipeline runner.

The notebook runs under papermill with a very small model (depth 1, 64-token rows) on a
base dir of its own: two shards of the course data (one train, one val) and a
512-token tokenizer trained here, so each run takes seconds.
"""
import json
import shutil
from pathlib import Path

import papermill
import pytest
import torch

import base_dirs
from base_dirs import using_base_dir
from nanochat import cli, dataset, stages
from nanochat.tokenizer import train_tokenizer

NOTEBOOK = stages.NOTEBOOKS_DIR / "05_pretrain.ipynb"
SMALL = dict(depth=1, max_seq_len=64, device_batch_size=2, total_batch_size=256, eval_every=3, eval_tokens=512,
             core_metric_every=-1, sample_every=-1, log_every=1)


@pytest.fixture(scope="module")
def pretrain_inputs(tmp_path_factory, data_pack) -> Path:
    """A base dir holding what stage 05 reads: two shards and a small tokenizer."""
    with using_base_dir(tmp_path_factory.mktemp("pretrain-inputs")) as base:
        dataset.download_shards(2)
        texts = dataset.open_shard(dataset.list_parquet_files()[0]).read_row_group(0).column("text").to_pylist()
        train_tokenizer(texts, vocab_size=512)
    return base


def fresh_base_dir(inputs: Path, path: Path, monkeypatch) -> Path:
    """A base dir that shares the inputs (symlinks) but has its own checkpoints and report."""
    return base_dirs.fresh_base_dir(inputs, path, monkeypatch, shared=("base_data", "tokenizer"))


def run_notebook(out: Path, **parameters) -> str:
    """Execute notebook 05 in a fresh kernel (a new process); return its printed output."""
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={**SMALL, **parameters}, kernel_name="python3",
                               progress_bar=False)
    cells = json.loads(out.read_text())["cells"]
    return "".join("".join(o.get("text", "")) for cell in cells for o in cell.get("outputs", []))


@pytest.mark.slow
def test_resume_is_bit_exact(pretrain_inputs, tmp_path, monkeypatch):
    steps, half = 6, 3
    # Run A: 6 steps straight through, saving at 3 and 6.
    run_a = fresh_base_dir(pretrain_inputs, tmp_path / "a", monkeypatch)
    run_notebook(tmp_path / "a.ipynb", num_iterations=steps, save_every=half)
    folder_a = run_a / "checkpoints" / "base" / "d1"
    # Run B: a new base dir that has only A's step-3 checkpoint, resumed by a new process.
    run_b = fresh_base_dir(pretrain_inputs, tmp_path / "b", monkeypatch)
    folder_b = run_b / "checkpoints" / "base" / "d1"
    folder_b.mkdir(parents=True)
    for path in folder_a.glob(f"*_{half:06d}*"):
        shutil.copy(path, folder_b)
    printed = run_notebook(tmp_path / "b.ipynb", num_iterations=steps, save_every=half, resume_from_step=half)
    assert f"resumed from step {half}" in printed

    meta_a = json.loads((folder_a / f"meta_{steps:06d}.json").read_text())
    meta_b = json.loads((folder_b / f"meta_{steps:06d}.json").read_text())
    assert len(meta_a["history"]["train/loss"]) == steps
    assert meta_b["history"] == meta_a["history"]  # every loss and val bpb, to the last bit
    weights_a = torch.load(folder_a / f"model_{steps:06d}.pt")
    weights_b = torch.load(folder_b / f"model_{steps:06d}.pt")
    assert all(torch.equal(weights_a[name], weights_b[name]) for name in weights_a)
    optim_a = torch.load(folder_a / f"optim_{steps:06d}_rank0.pt")
    optim_b = torch.load(folder_b / f"optim_{steps:06d}_rank0.pt")
    for i, state in optim_a["state"].items():
        assert all(torch.equal(value, optim_b["state"][i][key]) if torch.is_tensor(value) else value == optim_b["state"][i][key]
                   for key, value in state.items())
    assert torch.load(folder_a / f"loader_{steps:06d}_rank0.pt") == torch.load(folder_b / f"loader_{steps:06d}_rank0.pt")


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_train_through_the_pipeline(pretrain_inputs, tmp_path, monkeypatch, capfd):
    base = fresh_base_dir(pretrain_inputs, tmp_path / "base", monkeypatch)
    monkeypatch.chdir(tmp_path)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(NOTEBOOK, notebooks)
    params = {**SMALL, "num_iterations": 4, "total_batch_size": 512}  # 2 rows x 64 x 2 ranks x 2 micro-steps
    profile = tmp_path / "two_ranks.toml"
    profile.write_text('[profile]\ndescription = "test"\nhours = 0\ncost_usd = 0\ngpus = "none"\n'
                       '[stages.05_pretrain]\nnproc = 2\n[stages.05_pretrain.parameters]\n'
                       + "".join(f"{key} = {json.dumps(value)}\n" for key, value in params.items()))
    assert cli.main(["run", "--profile", str(profile), "--run", "dist", "--notebooks", str(notebooks),
                          "--cell-timeout", "600", "--dist-timeout", "300"]) == 0
    assert "[rank 1]" not in capfd.readouterr().out  # only rank 0 prints, up to the stage's last line

    executed = json.loads((base / "runs" / "dist" / "05_pretrain.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for cell in executed["cells"] for o in cell.get("outputs", []))
    assert "05_pretrain: 2 rank(s) on cpu" in printed
    assert "512 tokens per step = 2 x 64 x 2 rank(s) x 2 micro-step(s)" in printed
    assert "all checks passed" in printed
    folder = base / "checkpoints" / "base" / "d1"
    meta = json.loads((folder / "meta_000004.json").read_text())
    assert meta["world_size"] == 2
    # Each rank saved its own optimizer shard and loader position; the ranks read different documents.
    shards = [torch.load(folder / f"optim_000004_rank{r}.pt") for r in (0, 1)]
    assert all(shard["state"] for shard in shards)
    assert not set(shards[0]["state"]) & set(shards[1]["state"])  # each parameter has one owner
    loaders = [torch.load(folder / f"loader_000004_rank{r}.pt") for r in (0, 1)]
    assert loaders[0]["rank"] == 0 and loaders[1]["rank"] == 1
    assert loaders[0]["next_document"] != loaders[1]["next_document"]
    assert (base / "report" / "05_pretrain.md").is_file()


@pytest.mark.slow
def test_a_killed_stage_continues_from_its_last_checkpoint(pretrain_inputs, tmp_path, monkeypatch, capsys):
    """nanochat run, killed between two saves, continues from the last one: same weights as never stopping."""
    base = fresh_base_dir(pretrain_inputs, tmp_path / "base", monkeypatch)
    monkeypatch.chdir(tmp_path)
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    shutil.copy(NOTEBOOK, notebooks)
    params = [f"05_pretrain.{key}={json.dumps(value)}" for key, value in {**SMALL, "num_iterations": 4,
                                                                           "save_every": 2}.items()]
    command = ["run", "--run", "r", "--only", "05", "--notebooks", str(notebooks), "-p", *params]
    assert cli.main(command) == 0
    folder, run_dir = base / "checkpoints" / "base" / "d1", base / "runs" / "r"
    assert "auto_resume: no checkpoint" in (run_dir / "05_pretrain.ipynb").read_text()
    uninterrupted = torch.load(folder / "model_000004.pt")
    # as if killed after the save of step 2: step 4 never completed, the stage has no marker
    (folder / "meta_000004.json").unlink()
    (run_dir / "05_pretrain.done").unlink()
    capsys.readouterr()
    assert cli.main(command) == 0
    assert "continuing from its last checkpoint if it has one" in capsys.readouterr().out
    assert "auto_resume: continuing from step 2" in (run_dir / "05_pretrain.ipynb").read_text()
    resumed = torch.load(folder / "model_000004.pt")
    assert all(torch.equal(resumed[name], value) for name, value in uninterrupted.items())
    # --force starts over; a checkpoint of other parameters is never taken for this run's
    assert cli.main(command + ["--force"]) == 0
    assert "auto_resume: " not in (run_dir / "05_pretrain.ipynb").read_text()  # not asked to: from step 0
    (run_dir / "05_pretrain.done").unlink()
    assert cli.main(command + ["-p", "05_pretrain.matrix_lr=0.03"]) == 0
    assert "was saved by a run with other parameters: starting fresh" in (run_dir / "05_pretrain.ipynb").read_text()
