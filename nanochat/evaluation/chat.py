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
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from nanochat import ui
from nanochat.common import get_rank, get_world_size, is_master, tqdm
from nanochat.engine import Engine, calculator
from nanochat.tasks.gsm8k import final_number

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


def reference_answer(conversation: dict) -> str | None:
    """What the grader compares a reply with: the letter of a multiple-choice reference, else the number
    after its '####' (None when there is none, as for code)."""
    content = conversation["messages"][-1]["content"]
    text = content if isinstance(content, str) else "".join(part["text"] for part in content)
    return text.strip() if "letters" in conversation else final_number(text)


def most_common_answer(task, problems) -> str | None:
    """The commonest reference answer among some problems of a task."""
    return Counter(reference_answer(task[i]) for i in problems).most_common(1)[0][0]


def always_answering(task, problems, answer: str | None) -> float:
    """The accuracy of giving the same answer to every problem: what a model that learned only how often
    each answer occurs would score, which can sit far above ChatCORE's guessing baseline."""
    if answer is None:
        return 0.0
    return sum(reference_answer(task[i]) == answer for i in problems) / len(problems)


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


# ---- the chat format: what a small model can learn, measured

def reply_tokens(engine: Engine, conversation: dict, max_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 42) -> tuple[list[int], bool]:
    """The model's reply (greedy unless a temperature is given; tool output included) and whether it
    ended with <|assistant_end|> in time."""
    prompt = engine.tokenizer.render_for_completion(conversation)
    max_tokens = max(0, min(max_tokens, engine.model.config.sequence_len - len(prompt)))
    assistant_end = engine.tokenizer.encode_special("<|assistant_end|>")
    reply = []
    for column, _ in engine.generate(prompt, num_samples=1, max_tokens=max_tokens, temperature=temperature,
                                     top_k=top_k, seed=seed):
        if column[0] in engine.stop_tokens:
            return reply, column[0] == assistant_end
        reply.append(column[0])
    return reply, False


def repeating_unit(tokens: list[int], min_repeats: int = 8, max_period: int = 8) -> list[int] | None:
    """The few tokens a reply ends by repeating, at least min_repeats times in a row, or None: the
    usual way a small model's reply fails to end is a loop."""
    for period in range(1, max_period + 1):
        tail = tokens[-period * min_repeats:]
        if len(tail) == period * min_repeats and tail == tail[-period:] * min_repeats:
            return tail[-period:]
    return None


def used_a_tool(tokenizer, reply: list[int]) -> bool:
    """A well-formed call whose output came back and was read: <|python_start|> ... <|python_end|>
    <|output_start|> ... <|output_end|>, then more of the reply."""
    special = tokenizer.encode_special
    marks = [special(name) for name in ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")]
    position = 0
    for mark in marks:
        if mark not in reply[position:]:
            return False
        position = reply.index(mark, position) + 1
    return position < len(reply)  # the model went on after reading the output


def format_rates(model, tokenizer, conversations: list[dict], max_tokens: int = 64) -> dict:
    """How often replies to held-out prompts have the chat format right:

    ends          the greedy reply ends with <|assistant_end|> within max_tokens (it hands the turn back)
    ends_sampled  the same for a reply sampled as the chat samples (nanochat.ui's TEMPERATURE and TOP_K,
                  seeded by the prompt's index): a small model's greedy reply falls into loops that
                  sampling escapes
    letter        a greedy multiple-choice reply is exactly one of the allowed letters
    tool          a greedy reply to a problem whose reference uses the calculator makes a call, reads its
                  output, goes on
    Each is a fraction of the prompts it applies to (None when none does), with the counts, and under
    "unended" every reply that did not end: its prompt, whether sampled, its last tokens, the loop it is in.
    """
    engine = Engine(model, tokenizer)
    counts = {"ends": [0, 0], "ends_sampled": [0, 0], "letter": [0, 0], "tool": [0, 0]}
    unended = []  # the replies still going at max_tokens, for reading why
    was_training = model.training
    model.eval()
    for i, conversation in enumerate(conversations):
        reply, ended = reply_tokens(engine, conversation, max_tokens)
        sampled, sampled_ended = reply_tokens(engine, conversation, max_tokens, ui.TEMPERATURE, ui.TOP_K, seed=i)
        for key, tokens, done in (("ends", reply, ended), ("ends_sampled", sampled, sampled_ended)):
            counts[key][0] += done
            counts[key][1] += 1
            if not done:
                unit = repeating_unit(tokens)
                unended.append({"prompt": i, "sampled": key == "ends_sampled", "tail": tokenizer.decode(tokens[-40:]),
                                "loop": None if unit is None else tokenizer.decode(unit)})
        if "letters" in conversation:
            counts["letter"][0] += tokenizer.decode(reply).strip() in conversation["letters"]
            counts["letter"][1] += 1
        reference = conversation["messages"][-1]["content"]
        if not isinstance(reference, str) and any(part["type"] == "python" for part in reference):
            counts["tool"][0] += used_a_tool(tokenizer, reply)
            counts["tool"][1] += 1
    model.train(was_training)
    rates = {name: (right / total if total else None) for name, (right, total) in counts.items()}
    return rates | {"counts": counts, "unended": unended}


@torch.no_grad()
def letter_mass(model, tokenizer, conversations: list[dict]) -> float:
    """Mean probability a model puts on the allowed answer letters, as the first token of its reply.

    Near 0 for a base model (it has never seen the format: the letters are just 4 of thousands
    of tokens); near 1 once it has learned that a multiple-choice reply is one letter.
    """
    was_training = model.training
    model.eval()
    total = 0.0
    for conversation in conversations:
        prompt = tokenizer.render_for_completion(conversation)
        probs = torch.softmax(model(torch.tensor([prompt], device=model.device))[0, -1].float(), dim=-1)
        total += probs[letter_ids(tokenizer, conversation["letters"])].sum().item()
    model.train(was_training)
    return total / len(conversations)


def held_out_prompts(n: int) -> list[dict]:
    """The held-out prompts the chat stages measure the format on: n each of MMLU validation
    (multiple choice), GSM8K test (calculator) and SmolTalk test (conversation)."""
    from nanochat.tasks.gsm8k import GSM8K
    from nanochat.tasks.mmlu import MMLU
    from nanochat.tasks.smoltalk import SmolTalk

    return [task[i] for task in (MMLU("all", "validation"), GSM8K("test"), SmolTalk("test")) for i in range(n)]


FORMAT_LABELS = {"ends": "ends\n(greedy)", "ends_sampled": "ends\n(sampled)", "letter": "one valid\nletter",
                 "tool": "tool call\nused", "p_letters": "p(letters)"}


def plot_format(before: dict, after: dict, names: tuple[str, str], ax) -> None:
    """Bars of the format rates (and letter mass) before and after a stage, on one axis."""
    keys = list(FORMAT_LABELS)
    x = range(len(keys))
    for offset, rates, name in ((-0.2, before, names[0]), (0.2, after, names[1])):
        bars = ax.bar([i + offset for i in x], [rates.get(k) or 0.0 for k in keys], 0.4, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)  # a rate of 0 has no bar to see: its number says it
    ax.set_xticks(list(x), [FORMAT_LABELS[k] for k in keys])
    ax.set(ylim=(0, 1.1), title="the chat format on held-out prompts")
    ax.legend()
