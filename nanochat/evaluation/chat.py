"""Grading a chat model: accuracy on each chat task, and ChatCORE across them.

Two ways to grade, by the task's eval_type:

categorical  multiple choice (ARC, MMLU). The question is rendered exactly as at test
             time (render_for_completion: the conversation up to <|assistant_start|>), one
             forward pass gives the logits of the first token of the reply, and among the
             allowed letters (A-D) the most probable one is the answer. The model is never
             asked to write, so a model that knows the answer but has not learnt to stop
             talking still gets credit; batched, one pass per question.
generative   the model writes (GSM8K, HumanEval, SpellingBee). The Engine samples
             num_samples replies (KV cache, tool calls run by the calculator), the task's
             evaluate() checks each, and a problem counts as solved if any of them is
             right: pass@k with k = num_samples (greedy, temperature 0, is pass@1).

Under torchrun every rank takes a stride of the problems (rank r: r, r+W, ...) and the
counts are summed, so W ranks grade the same problems as one, W times faster.

ChatCORE (nanochat's summary number for chat models) is the mean over tasks of the centred
accuracy (acc - baseline) / (1 - baseline): 0 is guessing (1 in 4 for the four-choice
tasks, nothing for the generative ones), 1 is perfect. Over fewer than its six tasks it is
labelled by how many it covers, ChatCORE-n, never passed off as the full number.
"""
import random
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from nanochat.common import get_rank, get_world_size, is_master
from nanochat.engine import Engine, calculator

CHATCORE_BASELINES = {"ARC-Easy": 0.25, "ARC-Challenge": 0.25, "MMLU": 0.25,
                      "GSM8K": 0.0, "HumanEval": 0.0, "SpellingBee": 0.0}
PROBLEM_SEED = 1337  # which problems a max_problems subset holds


@dataclass
class TaskResult:
    """How a model did on one task."""
    name: str
    correct: int
    total: int
    examples: list = field(default_factory=list)  # a few graded problems of rank 0, to show

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")


def problem_order(num_problems: int, max_problems: int) -> list[int]:
    """A fixed shuffle of the problems, cut to max_problems: a small run asks a spread of subjects, not the first one."""
    order = list(range(num_problems))
    random.Random(PROBLEM_SEED).shuffle(order)
    return order if max_problems < 0 else order[:max_problems]


def letter_ids(tokenizer, letters: list[str]) -> list[int]:
    """The token id of each answer letter; each must be a single token (see render_multiple_choice)."""
    ids = [tokenizer.encode(letter) for letter in letters]
    if any(len(i) != 1 for i in ids):
        raise ValueError(f"answer letters {letters} do not each encode to one token: {ids}")
    return [i[0] for i in ids]


@torch.no_grad()
def categorical_answers(model, tokenizer, conversations: list[dict], device, batch_size: int = 8) -> list[str]:
    """The letter each conversation's question gets: argmax over the allowed letters' logits."""
    answers = []
    for i in range(0, len(conversations), batch_size):
        batch = conversations[i:i + batch_size]
        prompts = [tokenizer.render_for_completion(c) for c in batch]
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        # Pad on the right: attention is causal, so padding after a prompt never changes its logits.
        pad = tokenizer.get_bos_token_id()
        idx = torch.tensor([p + [pad] * (int(lengths.max()) - len(p)) for p in prompts], device=device)
        logits = model(idx)[torch.arange(len(batch), device=device), lengths - 1]  # (B, V): the reply's first token
        for row, conversation in zip(logits, batch):
            letters = conversation["letters"]
            answers.append(letters[int(row[letter_ids(tokenizer, letters)].argmax())])
    return answers


def generative_answers(engine: Engine, conversation: dict, num_samples: int = 1, max_tokens: int = 256,
                       temperature: float = 0.0, top_k: int | None = 50, seed: int = 42) -> list[str]:
    """num_samples replies the model writes to the conversation (tool calls included), as text."""
    prompt = engine.tokenizer.render_for_completion(conversation)
    context = engine.model.config.sequence_len
    max_tokens = max(0, min(max_tokens, context - len(prompt)))  # a prompt that fills the context gets no reply
    sequences, _ = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_tokens,
                                         temperature=temperature, top_k=top_k, seed=seed)
    return [engine.tokenizer.decode(sequence[len(prompt):]) for sequence in sequences]


def reference_text(conversation: dict) -> str:
    """The reference reply as text, a tool call shown as <<expression=output>>, for reading next to the model's."""
    content = conversation["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    shown = {"text": "{}", "python": "<<{}", "python_output": "={}>>"}
    return "".join(shown[part["type"]].format(part["text"]) for part in content)


def evaluate_task(model, tokenizer, task, device, max_problems: int = -1, batch_size: int = 8, num_samples: int = 1,
                  max_tokens: int = 256, temperature: float = 0.0, top_k: int | None = 50, keep_examples: int = 6,
                  tool=calculator) -> TaskResult:
    """Accuracy of the model on a task (pass@num_samples for generative ones). Every rank must call it."""
    problems = problem_order(len(task), max_problems)[get_rank()::get_world_size()]
    conversations = [task[i] for i in problems]
    if task.eval_type == "categorical":
        answers = [[a] for a in categorical_answers(model, tokenizer, conversations, device, batch_size)]
    else:
        engine = Engine(model, tokenizer, tool=tool)
        answers = [generative_answers(engine, c, num_samples, max_tokens, temperature, top_k, seed=42 + i)
                   for i, c in zip(problems, tqdm(conversations, desc=task.name, disable=not is_master(), leave=False))]
    graded = [any(task.evaluate(c, a) for a in replies) for c, replies in zip(conversations, answers)]
    counts = torch.tensor([sum(graded), len(graded)], dtype=torch.long, device=device)
    if get_world_size() > 1:
        dist.all_reduce(counts)  # (correct, total) over all ranks
    examples = [{"problem": i, "question": c["messages"][0]["content"], "reference": reference_text(c),
                 "reply": replies[0], "correct": ok}
                for i, c, replies, ok in list(zip(problems, conversations, answers, graded))[:keep_examples]]
    return TaskResult(task.name, int(counts[0]), int(counts[1]), examples)


def centered(accuracy: float, baseline: float) -> float:
    """Rescale so that guessing scores 0 and a perfect model 1."""
    return (accuracy - baseline) / (1 - baseline)


def chatcore(accuracies: dict[str, float]) -> dict:
    """ChatCORE over the tasks given ({task name: accuracy}); labelled ChatCORE-n when some are missing."""
    present = [name for name in CHATCORE_BASELINES if name in accuracies]
    if not present:
        raise ValueError(f"ChatCORE needs at least one of {list(CHATCORE_BASELINES)}, got {sorted(accuracies)}")
    scores = {name: centered(accuracies[name], CHATCORE_BASELINES[name]) for name in present}
    complete = len(present) == len(CHATCORE_BASELINES)
    return {"label": "ChatCORE" if complete else f"ChatCORE-{len(present)}",
            "chatcore": sum(scores.values()) / len(scores), "centered": scores,
            "tasks_present": present, "tasks_missing": [n for n in CHATCORE_BASELINES if n not in accuracies]}


def confidence_interval(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """A 95% Wilson interval for an accuracy of correct/total: how much a score of N problems can move by chance."""
    if total == 0:
        return float("nan"), float("nan")
    p = correct / total
    denominator = 1 + z * z / total
    middle = (p + z * z / (2 * total)) / denominator
    half = z * ((p * (1 - p) / total + z * z / (4 * total * total)) ** 0.5) / denominator
    return max(0.0, middle - half), min(1.0, middle + half)
