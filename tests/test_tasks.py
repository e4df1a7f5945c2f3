"""The chat tasks on the real data (through the mirror): sizes, rendering and masks, grading."""
import gzip
import json
import os

import pytest
from base_dirs import using_base_dir

from nanochat import hub
from nanochat.engine import calculator
from nanochat.tasks.arc import ARC
from nanochat.tasks.common import Task, TaskMixture, TaskSequence
from nanochat.tasks.customjson import CustomJSON
from nanochat.tasks.gsm8k import GSM8K, answer_parts, final_number
from nanochat.tasks.humaneval import HumanEval, extract_code
from nanochat.tasks.mmlu import MMLU
from nanochat.tasks.smoltalk import SmolTalk
from nanochat.tasks.spellingbee import SimpleSpelling, SpellingBee
from nanochat.tokenizer import get_tokenizer, train_tokenizer


def pack_lines(data_pack, *path) -> int:
    full = os.path.join(data_pack, *path)
    opener = gzip.open if full.endswith(".gz") else open
    with opener(full, "rt") as f:
        return sum(1 for line in f if line.strip())


@pytest.fixture(scope="module")
def task_base_dir(tmp_path_factory, data_pack):
    """One base dir for the module, so each file is fetched through the mirror once."""
    with using_base_dir(tmp_path_factory.mktemp("tasks")) as base:
        yield base


@pytest.fixture(scope="module")
def tokenizer(task_base_dir):
    texts = [json.dumps(GSM8K("train")[i]) for i in range(200)] + ["Multiple choice question: - =A =B =C =D"] * 5
    train_tokenizer(texts, vocab_size=600)
    return get_tokenizer()


@pytest.mark.parametrize("make, path", [
    (lambda: ARC("ARC-Easy", "test"), ("tasks", "arc", "ARC-Easy", "test.jsonl")),
    (lambda: ARC("ARC-Challenge", "train"), ("tasks", "arc", "ARC-Challenge", "train.jsonl")),
    (lambda: MMLU("all", "test"), ("tasks", "mmlu", "test.jsonl")),
    (lambda: MMLU("auxiliary_train", "train"), ("tasks", "mmlu", "auxiliary_train_substitute.jsonl")),
    (lambda: GSM8K("test"), ("tasks", "gsm8k", "test.jsonl")),
    (lambda: HumanEval(), ("tasks", "humaneval", "HumanEval.jsonl.gz")),
    (lambda: CustomJSON(), ("chat", "identity_conversations.jsonl")),
], ids=["arc-e", "arc-c", "mmlu", "mmlu-aux", "gsm8k", "humaneval", "identity"])
def test_sizes_match_the_data(task_base_dir, data_pack, make, path):
    assert len(make()) == pack_lines(data_pack, *path)


def test_smoltalk_stand_in_is_split_into_train_and_test(task_base_dir, data_pack):
    train, test = SmolTalk("train"), SmolTalk("test")
    assert len(train) + len(test) == pack_lines(data_pack, "chat", "gpteacher_codegen_roleplay.jsonl")
    assert 0.03 < len(test) / len(train) < 0.08
    assert all([m["role"] for m in c["messages"]][:2] == ["user", "assistant"] for c in list(test)[:50])


def test_multiple_choice_renders_letters_and_grades_one_letter(task_base_dir):
    conversation = ARC("ARC-Easy", "train")[0]  # "Which factor will most likely cause a person to develop a fever?"
    user, answer = conversation["messages"][0]["content"], conversation["messages"][1]["content"]
    assert "- a bacterial population in the bloodstream=B" in user and answer == "B"
    assert conversation["letters"] == ["A", "B", "C", "D"]
    task = ARC("ARC-Easy", "train")
    assert task.evaluate(conversation, "B") and task.evaluate(conversation, " B\n")
    assert not task.evaluate(conversation, "A") and not task.evaluate(conversation, "The answer is B")
    mmlu = MMLU("all", "test")[0]
    assert mmlu["messages"][1]["content"] in "ABCD" and mmlu["subject"]


def test_numeric_arc_labels_are_lettered_by_position(task_base_dir):
    task = ARC("ARC-Easy", "test")
    numeric = next(i for i, row in enumerate(task.rows) if row["choices"]["label"][0] == "1")
    row, conversation = task.rows[numeric], task[numeric]
    index = row["choices"]["label"].index(row["answerKey"])
    assert conversation["messages"][1]["content"] == "ABCDE"[index]
    assert f"- {row['choices']['text'][index]}={'ABCDE'[index]}" in conversation["messages"][0]["content"]


def test_gsm8k_calculations_become_tool_calls_with_masked_output(task_base_dir, tokenizer):
    conversation = GSM8K("train")[0]  # Natalia sold 48/2 = <<48/2=24>>24 clips in May ...
    parts = conversation["messages"][1]["content"]
    assert {"type": "python", "text": "48/2"} in parts and {"type": "python_output", "text": "24"} in parts
    assert parts[-1]["text"].endswith("#### 72")
    ids, mask = tokenizer.render_conversation(conversation)
    special = tokenizer.encode_special
    inside, seen_output = None, False
    for token, supervised in zip(ids, mask):
        if token == special("<|output_start|>"):
            inside, seen_output = "output", True
        elif token == special("<|python_start|>"):
            inside = "python"
        if inside == "output":
            assert supervised == 0  # the tool's answer is read, never trained on
        if inside == "python":
            assert supervised == 1  # the call is the model's own
        if token in (special("<|output_end|>"), special("<|python_end|>")):
            inside = None
    assert seen_output and mask[-1] == 1 and ids[-1] == special("<|assistant_end|>")
    user_end = ids.index(special("<|user_end|>"))
    assert not any(mask[:user_end + 1])  # no loss on the question


def test_gsm8k_grades_the_final_number(task_base_dir):
    task = GSM8K("train")
    conversation = task[0]
    assert task.evaluate(conversation, "48/2 = 24, 48+24 = 72\n#### 72")
    assert not task.evaluate(conversation, "#### 71") and not task.evaluate(conversation, "72 clips")
    assert task.reward(conversation, "#### 72") == 1.0 and task.reward(conversation, "no idea") == 0.0
    assert final_number("#### 1,000") == "1000" and final_number("#### 3 then #### -4.5") == "-4.5"
    assert answer_parts("a <<2*3=6>>6 b") == [{"type": "text", "text": "a "}, {"type": "python", "text": "2*3"},
                                              {"type": "python_output", "text": "6"}, {"type": "text", "text": "6 b"}]


@pytest.mark.slow
def test_every_humaneval_reference_passes_and_a_wrong_one_fails(task_base_dir):
    task = HumanEval()
    failed = [c["task_id"] for c in task if not task.evaluate(c, c["messages"][1]["content"])]
    assert failed == []
    conversation = task[0]
    wrong = conversation["messages"][1]["content"].replace("return True", "return False")
    assert not task.evaluate(conversation, wrong)
    assert not task.evaluate(conversation, "I don't know how to do that.")


def test_extract_code_takes_the_first_block():
    assert extract_code("Here:\n```python\nx = 1\n```\nand\n```\ny\n```") == "x = 1\n"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"


def test_spelling_bee_counts_right_and_its_calculator_call_agrees(task_base_dir):
    task = SpellingBee("train", size=300)
    for conversation in task:
        call = next(p["text"] for p in conversation["messages"][1]["content"] if p["type"] == "python")
        output = next(p["text"] for p in conversation["messages"][1]["content"] if p["type"] == "python_output")
        assert calculator(call) == output == str(conversation["word"].count(conversation["letter"]))
    conversation = task[0]
    right = f"#### {conversation['count']}"
    assert task.evaluate(conversation, right) and not task.evaluate(conversation, f"#### {conversation['count'] + 1}")
    assert not task.evaluate(conversation, "I am not sure")
    assert any(c["count"] == 0 for c in task)  # a letter the word lacks, now and then
    assert [c["word"] for c in SpellingBee("test", size=50)] != [c["word"] for c in SpellingBee("train", size=50)]


def test_simple_spelling(task_base_dir):
    task = SimpleSpelling("train", size=20)
    conversation = task[3]
    word = conversation["messages"][0]["content"].removeprefix("Spell the word: ")
    assert conversation["messages"][1]["content"] == f"{word}:{','.join(word)}"
    assert task.evaluate(conversation, f"{word}:{','.join(word)}") and not task.evaluate(conversation, word)


def test_custom_json_reads_lists_and_rejects_malformed_lines(tmp_path):
    good = tmp_path / "chats.jsonl"
    good.write_text(json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}))
    assert len(CustomJSON(str(good))) == 2 and CustomJSON(str(good))[1]["messages"][1]["content"] == "b"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps([{"who": "user"}]) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        CustomJSON(str(bad))


class Numbers(Task):
    """A toy task: conversation i says i."""

    def __init__(self, n, tag, **kwargs):
        super().__init__(**kwargs)
        self.n, self.tag = n, tag

    def num_examples(self):
        return self.n

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": self.tag}, {"role": "assistant", "content": str(index)}]}


def test_mixtures_shuffle_deterministically_and_oversample():
    a, b = Numbers(10, "a"), Numbers(5, "b")
    mix = TaskMixture([a, b, b])
    tags = [c["messages"][0]["content"] for c in mix]
    assert len(mix) == 20 and tags.count("b") == 10  # listed twice: included twice
    assert tags == [c["messages"][0]["content"] for c in TaskMixture([a, b, b])]  # same seed, same order
    assert tags != sorted(tags) and mix.task_of(0) in (a, b)
    sequence = TaskSequence([a, b])
    assert [c["messages"][0]["content"] for c in sequence] == ["a"] * 10 + ["b"] * 5
    view = a[2:8:2]
    assert len(view) == 3 and [c["messages"][1]["content"] for c in view] == ["2", "4", "6"]
    assert [c["messages"][1]["content"] for c in view[1:]] == ["4", "6"]  # a view of a view


def test_no_mirror_is_one_clear_error(base_dir, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(hub.DownloadError, match=r"openai/gsm8k.*\n.*\n.*\n.*HF_ENDPOINT"):
        GSM8K("test")
