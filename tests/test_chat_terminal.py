"""The terminal chat (`nanochat chat`): finds the most trained model, streams the Engine's reply, clear errors."""
import os
from dataclasses import asdict

import pytest
import torch

from nanochat import cli
from nanochat.checkpoint import CheckpointError, checkpoint_dir, save_checkpoint
from nanochat.engine import Engine
from nanochat.gpt import build_model, config_for_depth
from nanochat.tokenizer import get_tokenizer, train_tokenizer
from nanochat.ui import terminal

TEXT = ["The capital of France is Paris. " * 20, "One plus one is two, and 12*3 is 36. " * 20]


@pytest.fixture
def trained(base_dir):
    """A base dir with a small tokenizer and a depth-1 'sft' checkpoint (random weights: we test plumbing)."""
    tokenizer = train_tokenizer(TEXT, vocab_size=300)
    torch.manual_seed(0)
    config = config_for_depth(1, vocab_size=tokenizer.get_vocab_size(), sequence_len=128)
    model = build_model(config)
    save_checkpoint(checkpoint_dir("sft", 1), 5, model.state_dict(), None, {"config": asdict(config), "tokenizer": tokenizer.fingerprint()})
    return model, tokenizer


def test_one_prompt_prints_the_engines_greedy_reply(trained, capsys):
    model, tokenizer = trained
    assert cli.main(["chat", "--prompt", "hi", "--temperature", "0", "--max-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    assert "sft model d1 (step 5)" in err  # the most trained phase was found
    prompt = tokenizer.render_for_completion({"messages": [{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": ""}]})
    sequences, _ = Engine(model, tokenizer).generate_batch(prompt, max_tokens=12, temperature=0.0)
    assert out == terminal.render_reply(tokenizer, sequences[0][len(prompt):]) + "\n"


def test_interactive_turns_clear_and_quit(trained, capsys, monkeypatch):
    lines = iter(["hello", "", "clear", "again", "quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert cli.main(["chat", "--max-tokens", "4"]) == 0
    assert capsys.readouterr().out.count("assistant> ") == 2


def test_tool_calls_read_as_expression_equals_result(base_dir):
    tokenizer = train_tokenizer(TEXT, vocab_size=300)
    special = tokenizer.encode_special
    ids = (tokenizer.encode("so ") + [special("<|python_start|>")] + tokenizer.encode("12*3") + [special("<|python_end|>"),
           special("<|output_start|>")] + tokenizer.encode("36") + [special("<|output_end|>")] + tokenizer.encode(" ok"))
    assert terminal.render_reply(tokenizer, ids) == "so [12*3 = 36] ok"


def test_no_checkpoint_is_a_clear_error(base_dir, capsys):
    train_tokenizer(TEXT, vocab_size=300)
    assert cli.main(["chat", "--prompt", "hi"]) == 2
    assert "no checkpoint under" in capsys.readouterr().err and get_tokenizer()


def test_a_base_dir_that_does_not_exist_is_not_created(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no-such-base"
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(missing))
    assert cli.main(["chat", "-p", "hi"]) == 2  # -p is short for --prompt
    assert "no checkpoint under" in capsys.readouterr().err and not missing.exists()


def test_a_truncated_checkpoint_is_one_clear_line(trained, base_dir, capsys):
    weights = os.path.join(checkpoint_dir("sft", 1), "model_000005.pt")
    with open(weights, "r+b") as f:
        f.truncate(100)
    assert cli.main(["chat", "-p", "hi"]) == 2
    err = capsys.readouterr().err
    assert "model_000005.pt: it is truncated or corrupt" in err and "Traceback" not in err
    with pytest.raises(CheckpointError):  # --verbose: the whole story
        cli.main(["--verbose", "chat", "-p", "hi"])
