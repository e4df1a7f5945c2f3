"""Chat evaluation: a model that always answers right scores 1 everywhere, a guesser scores chance."""
import json
import os

import pytest
import torch
from base_dirs import using_base_dir
from chat_models import GuessingModel, OracleModel
from torchrun import launch_two_ranks

from nanochat.evaluation import chat
from nanochat.tasks.arc import ARC
from nanochat.tasks.gsm8k import GSM8K
from nanochat.tasks.humaneval import HumanEval
from nanochat.tasks.mmlu import MMLU
from nanochat.tasks.spellingbee import SpellingBee
from nanochat.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tasks(tmp_path_factory, data_pack):
    """The six ChatCORE tasks, on data fetched once through the mirror."""
    with using_base_dir(tmp_path_factory.mktemp("chat-eval")):
        yield {"ARC-Easy": ARC("ARC-Easy", "test"), "ARC-Challenge": ARC("ARC-Challenge", "test"),
               "MMLU": MMLU("all", "test"), "GSM8K": GSM8K("test"), "HumanEval": HumanEval(),
               "SpellingBee": SpellingBee("test", size=200)}


def test_an_oracle_scores_one_on_every_task_and_chatcore(tasks):
    tokenizer = Tokenizer.bytes_only()
    problems = {name: [task[i] for i in chat.problem_order(len(task), 12)] for name, task in tasks.items()}
    oracle = OracleModel(tokenizer, [c for chosen in problems.values() for c in chosen])
    accuracies = {}
    for name, task in tasks.items():
        result = chat.evaluate_task(oracle, tokenizer, task, "cpu", max_problems=12, max_tokens=2048)  # bytes
        assert (result.correct, result.total) == (12, 12), (name, result.examples)
        accuracies[name] = result.accuracy
    score = chat.chatcore(accuracies)
    assert score["label"] == "ChatCORE" and score["chatcore"] == 1.0 and score["tasks_missing"] == []


def test_a_guesser_is_at_chance_on_multiple_choice(tasks):
    tokenizer = Tokenizer.bytes_only()
    result = chat.evaluate_task(GuessingModel(tokenizer), tokenizer, tasks["MMLU"], "cpu", max_problems=300)
    assert result.total == 300
    assert abs(chat.centered(result.accuracy, 0.25)) < 0.15  # about 0, where an oracle gets 1


def test_a_wrong_letter_is_graded_wrong(tasks):
    """The grader reads the letters' logits: a model sure of the wrong letter gets 0."""
    tokenizer = Tokenizer.bytes_only()
    task = tasks["ARC-Easy"]
    problems = [task[i] for i in chat.problem_order(len(task), 8)]
    for conversation in problems:  # make every reference answer wrong: the next letter round
        letters, right = conversation["letters"], conversation["messages"][1]["content"]
        conversation["messages"][1]["content"] = letters[(letters.index(right) + 1) % len(letters)]
    answers = chat.categorical_answers(OracleModel(tokenizer, problems), tokenizer, problems, "cpu")
    assert sum(task.evaluate(task[i], a) for i, a in zip(chat.problem_order(len(task), 8), answers)) == 0


def test_always_answering_scores_what_the_grader_gives_one_fixed_reply(tasks):
    """The floor is the grader's own verdict on one reply to every problem, and no answer beats the commonest."""
    for name, task in tasks.items():
        problems = chat.problem_order(len(task), 60)
        commonest = chat.most_common_answer(task, problems)
        if name == "HumanEval":
            assert commonest is None and chat.always_answering(task, problems, commonest) == 0.0
            continue
        answers = {chat.reference_answer(task[i]) for i in problems}
        for answer in answers:
            reply = answer if task.eval_type == "categorical" else f"Done.\n#### {answer}"
            graded = sum(task.evaluate(task[i], reply) for i in problems) / len(problems)
            assert chat.always_answering(task, problems, answer) == graded, (name, answer)
            assert graded <= chat.always_answering(task, problems, commonest), (name, answer)
    bee = tasks["SpellingBee"]
    assert chat.always_answering(bee, range(len(bee)), "1") > 0.5  # why 08's reward can climb without counting


def test_chatcore_on_some_tasks_says_so():
    partial = chat.chatcore({"ARC-Easy": 0.625, "GSM8K": 0.1})
    assert partial["label"] == "ChatCORE-2" and partial["tasks_missing"] == ["ARC-Challenge", "MMLU", "HumanEval",
                                                                             "SpellingBee"]
    assert partial["chatcore"] == pytest.approx((0.5 + 0.1) / 2)  # (0.625 - 0.25) / 0.75 = 0.5
    with pytest.raises(ValueError, match="at least one"):
        chat.chatcore({"SmolTalk": 1.0})


def test_confidence_interval_narrows_with_more_problems():
    small, large = chat.confidence_interval(5, 10), chat.confidence_interval(500, 1000)
    assert small[0] < 0.3 and small[1] > 0.7 and large[1] - large[0] < 0.07


@pytest.mark.distributed
def test_two_ranks_grade_like_one(tasks, tmp_path):
    tokenizer = Tokenizer.bytes_only()
    alone = chat.evaluate_task(GuessingModel(tokenizer), tokenizer, tasks["ARC-Easy"], "cpu", max_problems=41)
    launch_two_ranks(os.path.join(os.path.dirname(__file__), "dist_chat_eval_worker.py"), tmp_path / "out.json", 41)
    together = json.loads((tmp_path / "out.json").read_text())
    assert alone.total == 41 and together == {"correct": alone.correct, "total": 41}


def test_the_format_rates_of_an_oracle_are_all_one(tasks):
    tokenizer = Tokenizer.bytes_only()
    conversations = [tasks["MMLU"][i] for i in range(3)] + [tasks["GSM8K"][i] for i in range(3)]
    rates = chat.format_rates(OracleModel(tokenizer, conversations), tokenizer, conversations, max_tokens=2048)
    assert rates["counts"] == {"ends": [6, 6], "ends_sampled": [6, 6], "letter": [3, 3], "tool": [3, 3]}


class LoopingModel(GuessingModel):
    """Prefers one filler byte over <|assistant_end|>, but not by much: greedy never stops, sampling soon does."""

    def next_logits(self, history):
        logits = torch.full((self.config.vocab_size,), float("-inf"))  # only these two can ever be drawn
        logits[self.tokenizer.encode("a")[0]] = 3.0
        logits[self.tokenizer.encode_special("<|assistant_end|>")] = 2.5  # 3 in 10 at temperature 0.6
        return logits


def test_greedy_loops_are_counted_apart_from_sampled_replies(tasks):
    tokenizer = Tokenizer.bytes_only()
    conversations = [tasks["MMLU"][i] for i in range(4)]
    rates = chat.format_rates(LoopingModel(tokenizer), tokenizer, conversations, max_tokens=48)
    assert rates["ends"] == 0.0 and rates["ends_sampled"] == 1.0
    assert rates["letter"] == 0.0 and rates["tool"] is None  # 48 a's are no letter; no problem wants the tool
    assert [(u["prompt"], u["sampled"], u["loop"]) for u in rates["unended"]] == [(i, False, "a") for i in range(4)]
    assert rates["unended"][0]["tail"] == "a" * 40


def test_a_loop_is_found_at_the_end_of_a_reply_and_only_there():
    unit = chat.repeating_unit
    assert unit([5, 6] + [7] * 8) == [7] and unit([5] + [1, 2, 3] * 8) == [1, 2, 3]
    assert unit([1, 2] * 8) == [1, 2]  # the shortest period, not [1, 2, 1, 2]
    assert unit([7] * 7) is None and unit([7] * 20 + [1, 2]) is None  # too few repeats; the loop is not at the end
    assert unit(list(range(100))) is None and unit([1, 2, 3, 4, 5, 6, 7, 8, 9] * 8) is None  # period above 8
