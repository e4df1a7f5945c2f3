"""The terminal chat (`nanochat chat`): finds the most trained model, streams the Engine's reply, clear errors."""
import io
import os
from dataclasses import asdict

import pytest
import torch

from nanochat import cli
from nanochat.checkpoint import CheckpointError, checkpoint_dir, save_checkpoint
from nanochat.engine import Engine
from nanochat.tokenizer import get_tokenizer, train_tokenizer
from nanochat.ui.session import Event
from nanochat.ui.terminal import write_reply
from tests.chat_models import CHAT_TEXT, tiny_chat_model

@pytest.fixture
def trained(base_dir):
    """A base dir with a small tokenizer and a depth-1 'sft' checkpoint (random weights: we test plumbing)."""
    model, tokenizer = tiny_chat_model(sequence_len=128)
    save_checkpoint(checkpoint_dir("sft", 1), 5, model.state_dict(), None,
                    {"config": asdict(model.config), "tokenizer": tokenizer.fingerprint()})
    return model, tokenizer


def test_one_prompt_prints_the_engines_greedy_reply(trained, capsys):
    model, tokenizer = trained
    assert cli.main(["chat", "--prompt", "hi", "--temperature", "0", "--max-tokens", "12"]) == 0
    out, err = capsys.readouterr()
    assert "sft model d1 (step 5)" in err  # the most trained phase was found
    prompt = tokenizer.render_for_completion({"messages": [{"role": "user", "content": "hi"},
                                                           {"role": "assistant", "content": ""}]})
    sequences, _ = Engine(model, tokenizer).generate_batch(prompt, max_tokens=12, temperature=0.0)
    reply = [t for t in sequences[0][len(prompt):] if t != tokenizer.encode_special("<|assistant_end|>")]
    assert out == shown_at_once(tokenizer, reply) + "\n"  # streamed token by token, the same text


def test_interactive_turns_clear_and_quit(trained, capsys, monkeypatch):
    lines = iter(["hello", "", "clear", "again", "quit"])
    monkeypatch.setattr("builtins.input", lambda prompt="": next(lines))
    assert cli.main(["chat", "--max-tokens", "4"]) == 0
    assert capsys.readouterr().out.count("assistant> ") == 2


# How a finished reply reads, decoded in one go (the reference the streamed view must match):
# <|python_start|>12*3<|python_end|><|output_start|>36<|output_end|> shows as [12*3 = 36].
TOOL_MARKS = {"<|python_start|>": "[", "<|python_end|>": "", "<|output_start|>": " = ", "<|output_end|>": "]"}


def shown_at_once(tokenizer, ids: list[int]) -> str:
    specials = {tokenizer.encode_special(name): mark for name, mark in TOOL_MARKS.items()}
    pieces, text_ids = [], []
    for token in ids:
        if token in specials:
            pieces.append(tokenizer.decode(text_ids) + specials[token])
            text_ids = []
        else:
            text_ids.append(token)
    return "".join(pieces) + tokenizer.decode(text_ids)


def test_tool_calls_read_as_expression_equals_result():
    events = [Event("text", "so "), Event("tool_call", "12*3"), Event("tool_output", "36"), Event("text", " ok"),
              Event("tool_call", "import os"), Event("text", " hm"), Event("done", "stop")]
    out = io.StringIO()
    assert write_reply(events, out) == out.getvalue() == "so [12*3 = 36] ok[import os] hm\n"  # a refused call closes too


def test_no_checkpoint_is_a_clear_error(base_dir, capsys):
    train_tokenizer(CHAT_TEXT, vocab_size=300)
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


@pytest.mark.parametrize("args, said", [
    (["--temperature", "-1"], "--temperature: must be from 0.0 to 2.0, not -1"),
    (["--temperature", "9"], "--temperature: must be from 0.0 to 2.0, not 9"),
    (["--top-k", "-3"], "--top-k: must be from 0 to 200, not -3"),
    (["--max-tokens", "0"], "--max-tokens: must be from 1 to 4096, not 0"),
    (["--top-k", "ten"], "--top-k: not an integer: 'ten'"),
    (["--device", "tpu"], "--device: must be cuda, mps or cpu, not 'tpu'"),
])
def test_bad_sampling_options_are_one_line_before_any_model_loads(args, said, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["chat", "-p", "hi", *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and said in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_gpu_that_is_not_there_says_so(capsys):
    with pytest.raises(SystemExit):
        cli.main(["chat", "-p", "hi", "--device", "cuda"])
    assert "cuda: this machine has no such device" in capsys.readouterr().err
