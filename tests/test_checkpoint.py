"""Checkpoints: bit-exact round trips, the meta file as the completion marker, clear errors."""
import json
import os
from dataclasses import asdict

import pytest
import torch

from nanochat.checkpoint import (CheckpointError, checkpoint_dir, find_checkpoint, find_last_step, load_checkpoint,
                                 load_model, most_trained_phase, prune_checkpoints, save_checkpoint)
from nanochat.gpt import GPTConfig, build_model

CONFIG = GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=2, n_kv_head=2, n_embd=64)


def make_model(seed=0):
    torch.manual_seed(seed)
    model = build_model(CONFIG, "cpu")
    return model, model.setup_optimizers()


def train_step(model, optimizer, seed):
    idx = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(seed))
    model(idx[:, :-1], idx[:, 1:]).backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)


def save(folder, step, model, optimizer, **meta):
    save_checkpoint(folder, step, model.state_dict(), optimizer.state_dict(),
                    {"config": asdict(CONFIG), **meta}, loader_state={"shard": 3, "row_group": step})


def test_round_trip_is_bit_exact_including_optimizer(tmp_path):
    model, optimizer = make_model()
    for seed in range(3):
        train_step(model, optimizer, seed)
    save(tmp_path, 3, model, optimizer, metrics={"val_bpb": 1.23})

    restored, restored_optimizer = make_model(seed=1)  # different weights until loaded
    ckpt = load_checkpoint(str(tmp_path), 3)
    restored.load_state_dict(ckpt.model_state)
    restored_optimizer.load_state_dict(ckpt.optimizer_state)
    assert ckpt.meta["metrics"] == {"val_bpb": 1.23} and ckpt.meta["step"] == 3
    assert ckpt.loader_state == {"shard": 3, "row_group": 3}
    for p, q in zip(optimizer.state.values(), restored_optimizer.state.values()):
        assert all(torch.equal(p[k], q[k]) if torch.is_tensor(p[k]) else p[k] == q[k] for k in p)

    for seed in (10, 11):  # training on from both gives identical weights
        train_step(model, optimizer, seed)
        train_step(restored, restored_optimizer, seed)
    for a, b in zip(model.parameters(), restored.parameters()):
        assert torch.equal(a, b)


def test_step_without_meta_is_not_complete(tmp_path):
    model, optimizer = make_model()
    save(tmp_path, 5, model, optimizer)
    save(tmp_path, 10, model, optimizer)
    os.remove(tmp_path / "meta_000010.json")  # as if the save of step 10 died just before the end
    assert find_last_step(str(tmp_path)) == 5
    with pytest.raises(FileNotFoundError, match=r"step 10.*complete steps there: \[5\]"):
        load_checkpoint(str(tmp_path), 10)


def test_prune_keeps_the_last_complete_steps(tmp_path):
    model, optimizer = make_model()
    for step in (10, 20, 30, 40):
        save(tmp_path, step, model, optimizer)
    torch.save({}, tmp_path / "optim_000005_rank1.pt")  # an older save that died before its meta
    assert prune_checkpoints(str(tmp_path), 0, newest=40) == [] and find_last_step(str(tmp_path)) == 40  # 0: all
    assert prune_checkpoints(str(tmp_path), 2, newest=40) == [5, 10, 20]
    kept = [f"{kind}_{step:06d}{suffix}" for step in (30, 40) for kind, suffix in
            (("model", ".pt"), ("optim", "_rank0.pt"), ("loader", "_rank0.pt"), ("meta", ".json"))]
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    load_checkpoint(str(tmp_path), 30)  # what is kept still loads
    assert prune_checkpoints(str(tmp_path), 2, newest=40) == []


def test_prune_after_a_restart_keeps_the_new_run_not_the_old_one(tmp_path):
    """A run started over (--force) in a folder holding a longer run's steps: its own saves survive."""
    model, optimizer = make_model()
    for step in (1000, 2000, 3000):  # the old run
        save(tmp_path, step, model, optimizer)
    save(tmp_path, 1000, model, optimizer, run="new")
    assert prune_checkpoints(str(tmp_path), 2, newest=1000) == [2000, 3000]
    assert find_last_step(str(tmp_path)) == 1000  # the new run resumes from its own step
    save(tmp_path, 2000, model, optimizer, run="new")
    assert prune_checkpoints(str(tmp_path), 1, newest=2000) == [1000]
    assert load_checkpoint(str(tmp_path), 2000).meta["run"] == "new"


def test_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    model, optimizer = make_model()

    def dies_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 7, model, optimizer)
    assert os.listdir(tmp_path) == []  # neither a truncated model file nor a temp file
    assert find_last_step(str(tmp_path)) is None


def test_missing_folder_and_missing_step_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        load_checkpoint(str(tmp_path / "nope"), 1)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="complete steps there: none"):
        load_checkpoint(str(tmp_path / "empty"), 1)


def test_corrupt_file_is_named(tmp_path):
    model, optimizer = make_model()
    save(tmp_path, 2, model, optimizer)
    path = tmp_path / "model_000002.pt"
    path.write_bytes(path.read_bytes()[:1000])  # truncated
    with pytest.raises(CheckpointError, match="model_000002.pt.*truncated or corrupt"):
        load_checkpoint(str(tmp_path), 2)
    (tmp_path / "meta_000002.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="meta_000002.json"):
        load_checkpoint(str(tmp_path), 2)


def test_config_mismatch_names_file_and_values(tmp_path):
    model, optimizer = make_model()
    save(tmp_path, 1, model, optimizer)
    with pytest.raises(CheckpointError, match=r"meta_000001.json.*n_layer: saved 2, expected 4.*vocab_size: saved 64, expected 65536"):
        load_checkpoint(str(tmp_path), 1, expected_config={"n_layer": 4, "vocab_size": 65536})
    load_checkpoint(str(tmp_path), 1, expected_config=CONFIG)  # the right config loads


def test_other_world_size_cannot_load_optimizer(tmp_path):
    model, optimizer = make_model()
    save(tmp_path, 1, model, optimizer)
    meta_path = tmp_path / "meta_000001.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "world_size": 8}))
    with pytest.raises(CheckpointError, match="saved by 8 rank"):
        load_checkpoint(str(tmp_path), 1)
    assert load_checkpoint(str(tmp_path), 1, load_optimizer=False).optimizer_state is None


def test_phase_folders_guesses_and_load_model(base_dir, capsys):
    model, optimizer = make_model()
    assert checkpoint_dir("sft", 12) == os.path.join(base_dir, "checkpoints", "sft", "d12")
    with pytest.raises(ValueError, match="unknown phase"):
        checkpoint_dir("pretrain", 12)
    save(checkpoint_dir("base", 2), 4, model, optimizer)
    save(checkpoint_dir("base", 2), 8, model, optimizer)
    os.makedirs(checkpoint_dir("base", 30))  # a bigger model whose first save never finished

    assert find_checkpoint("base") == (checkpoint_dir("base", 2), 8)
    with pytest.raises(FileNotFoundError, match="no complete 'mid' checkpoint"):
        find_checkpoint("mid")
    assert most_trained_phase() == "base"

    tokenizer = FakeTokenizer(vocab_size=CONFIG.vocab_size)
    loaded, _, meta = load_model(tokenizer=tokenizer)  # phase, depth and step guessed, and said so
    printed = capsys.readouterr().out
    assert "'base' model, step 8" in printed and "the most trained phase, the largest depth, the last step" in printed
    assert meta["config"] == asdict(CONFIG) and meta["step"] == 8 and meta["phase"] == "base"
    loaded, _, meta = load_model("base", depth=2, step=4, tokenizer=tokenizer)
    assert "none was given" not in capsys.readouterr().out
    idx = torch.randint(0, 64, (1, 16))
    assert torch.equal(loaded(idx), model(idx))


class FakeTokenizer:
    """Just what the tokenizer check reads."""

    def __init__(self, vocab_size, fingerprint="abc"):
        self.vocab_size, self.print = vocab_size, fingerprint

    def get_vocab_size(self):
        return self.vocab_size

    def fingerprint(self):
        return self.print


def test_a_model_of_another_tokenizer_is_refused(base_dir):
    model, optimizer = make_model()
    save(checkpoint_dir("sft", 2), 3, model, optimizer, tokenizer="abc")
    assert load_model(tokenizer=FakeTokenizer(CONFIG.vocab_size, "abc")).meta["phase"] == "sft"
    with pytest.raises(CheckpointError, match=r"another tokenizer .*fingerprint abc.*fingerprint xyz"):
        load_model(tokenizer=FakeTokenizer(CONFIG.vocab_size, "xyz"))
    with pytest.raises(CheckpointError, match=r"vocab 64.*vocab 65"):
        load_model(tokenizer=FakeTokenizer(CONFIG.vocab_size + 1, "abc"))
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        os.rename(checkpoint_dir("sft", 2), os.path.join(base_dir, "elsewhere"))
        most_trained_phase()
