"""common: the base-dir layout, the one atomic write, and "which rank am I"."""
import os

import pytest

from nanochat import common


def test_every_path_lives_under_the_base_dir(base_dir):
    paths = [common.pretrain_data_dir(), common.tokenizer_dir(), common.tiktoken_cache_dir(),
             common.eval_bundle_dir(), common.task_data_dir("openai/gsm8k"), common.checkpoint_dir("sft", 12),
             common.report_dir(), common.run_dir("tiny")]
    assert [os.path.relpath(p, base_dir) for p in paths] == [
        "base_data", "tokenizer", "tiktoken", "eval_bundle", "task_data/openai/gsm8k", "checkpoints/sft/d12",
        "report", "runs/tiny"]
    with pytest.raises(ValueError, match="unknown phase 'pretrain'"):
        common.phase_dir("pretrain")


def test_asking_for_a_path_creates_nothing(base_dir):
    common.get_base_dir(), common.checkpoint_dir("base", 2), common.report_dir()
    assert not os.path.exists(base_dir)


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "sub" / "meta.json"
    common.atomic_write(path, "old")  # creates the folder
    with pytest.raises(RuntimeError):
        with common.atomic_file(path, "w") as f:
            f.write("half of the new")
            raise RuntimeError("crash in the middle of a write")
    assert path.read_text() == "old"
    assert os.listdir(path.parent) == ["meta.json"]  # no temporary file left behind
    common.atomic_write(path, b"\x00new")
    assert path.read_bytes() == b"\x00new"


def test_rank_comes_from_the_process_group_not_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (common.get_rank(), common.get_world_size(), common.is_master()) == (0, 1, True)  # no group joined
    assert common.torchrun_env().rank == 3 and common.torchrun_env().world_size == 4  # the launch plan
