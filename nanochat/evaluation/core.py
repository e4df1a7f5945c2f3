"""The CORE metric: how much a base model knows, from 22 few-shot tasks, without generating text.

CORE comes from the DCLM paper (Li et al. 2024, arXiv 2406.11794). Every task is turned into
a question the model can answer with its likelihoods alone, so a base model that has never
seen a chat template can still be graded:

    multiple_choice    one context, several continuations ("Answer: A" / "Answer: B" ...):
                       the model picks the continuation with the lowest mean loss per token
    schema             several contexts, one continuation (Winograd: "...because the
                       councilmen" / "...because the demonstrators" + " feared violence."):
                       the model picks the context under which the continuation is likeliest
    language_modeling  one context, one continuation ("The country of Novosibirsk is" +
                       " Russia"): correct only if greedy decoding would write every token of it

Each task has a random-guessing baseline (25% for four choices). Accuracy is centered,
    centered = (accuracy - baseline) / (1 - baseline),
so 0 means "no better than guessing" and 1 means perfect, and CORE is the mean centered
accuracy over the tasks. A model can score below 0 on a task.

The eval bundle on disk (downloaded by nanochat.hub.download_eval_bundle):
    core.yaml               the task list: label, dataset_uri, num_fewshot, icl_task_type, ...
    eval_meta_data.csv      per task: category, "Random baseline" (a percentage), ...
    eval_data/<category>/<task>.jsonl
Only a bundle with all 22 tasks yields a number labelled "CORE"; with fewer (the course's
offline data pack lacks squad and coqa) the label says how many, e.g. "CORE-20", because
such a number is not comparable to published CORE scores.
"""
import csv
import json
import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml

from nanochat import hub
from nanochat.common import get_rank, get_world_size, is_master, tqdm

TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
SHUFFLE_SEED = 1337  # fixes which items a max_per_task subset contains


# ---------------------------------------------------------------------------------------------
# The bundle on disk


def load_core_tasks(bundle_dir: str) -> list[dict]:
    """Read core.yaml and eval_meta_data.csv into one dict per task, with its random baseline."""
    yaml_path = os.path.join(bundle_dir, "core.yaml")
    csv_path = os.path.join(bundle_dir, "eval_meta_data.csv")
    for path in (yaml_path, csv_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No {os.path.basename(path)} in {bundle_dir}: this is not an eval bundle.\n"
                f"  Let nanochat.hub.download_eval_bundle() fetch it (NANOCHAT_EVAL_BUNDLE_URL sets where from)."
            )
    with open(yaml_path) as f:
        entries = yaml.safe_load(f)["icl_tasks"]
    with open(csv_path, newline="") as f:
        baselines = {row["Eval Task"]: float(row["Random baseline"]) for row in csv.DictReader(f)}
    tasks = []
    for entry in entries:
        label = entry["label"]
        if label not in baselines:
            raise ValueError(f"task {label!r} of {yaml_path} has no 'Random baseline' row in {csv_path}")
        tasks.append({
            "label": label,
            "task_type": entry["icl_task_type"],
            "dataset_uri": entry["dataset_uri"],
            "num_fewshot": entry["num_fewshot"][0],  # the yaml allows a sweep; CORE uses one setting
            "continuation_delimiter": entry.get("continuation_delimiter", " "),
            "random_baseline": baselines[label] / 100,  # the csv says percent
        })
    return tasks


def load_task_data(path: str) -> list[dict]:
    """One task's items: a jsonl file, one JSON object per line."""
    items = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {line_number}: not valid JSON ({e})") from None
    return items


# ---------------------------------------------------------------------------------------------
# Turning an item into prompts


def fewshot_examples(data: list[dict], index: int, num_fewshot: int) -> list[dict]:
    """Pick num_fewshot other items as worked examples, the same ones every run.

    Seeded by the item's index, so item 7 always gets the same examples whatever the
    rank, the batch or max_per_task. The item itself is never shown as its own example:
    we sample from the n-1 other positions and shift those at or after `index` up by one.
    """
    k = min(num_fewshot, len(data) - 1)
    if k <= 0:
        return []
    picks = random.Random(index).sample(range(len(data) - 1), k)
    return [data[p + (p >= index)] for p in picks]


def _shots_prefix(shots: list[str]) -> str:
    """Worked examples first, separated by blank lines, then a blank line before the real item."""
    return "".join(shot + "\n\n" for shot in shots)


def render_multiple_choice(item: dict, fewshot: list[dict], delimiter: str) -> list[str]:
    """One prompt per choice: the same context, then each choice as the continuation.

    Fields are stripped so the delimiter alone decides the spacing between question and
    answer (the data is inconsistent: some queries end in "Answer: ", some in "Answer:").
    """
    shots = [f"{ex['query'].strip()}{delimiter}{ex['choices'][ex['gold']].strip()}" for ex in fewshot]
    context = _shots_prefix(shots) + item["query"].strip() + delimiter
    return [context + choice.strip() for choice in item["choices"]]


def render_schema(item: dict, fewshot: list[dict], delimiter: str) -> list[str]:
    """One prompt per context option, each followed by the same continuation."""
    shots = [f"{ex['context_options'][ex['gold']].strip()}{delimiter}{ex['continuation'].strip()}" for ex in fewshot]
    prefix = _shots_prefix(shots)
    ending = delimiter + item["continuation"].strip()
    return [prefix + option.strip() + ending for option in item["context_options"]]


def render_language_modeling(item: dict, fewshot: list[dict], delimiter: str) -> list[str]:
    """Two prompts: the context alone, and the context with the continuation."""
    shots = [f"{ex['context'].strip()}{delimiter}{ex['continuation'].strip()}" for ex in fewshot]
    context = _shots_prefix(shots) + item["context"].strip() + delimiter
    return [context, context + item["continuation"].strip()]


RENDERERS = {
    "multiple_choice": render_multiple_choice,
    "schema": render_schema,
    "language_modeling": render_language_modeling,
}


# ---------------------------------------------------------------------------------------------
# Finding the continuation in token space


def common_prefix_length(rows: list[list[int]]) -> int:
    """How many leading tokens all rows share."""
    n = 0
    for column in zip(*rows):
        if any(token != column[0] for token in column):
            break
        n += 1
    return n


def common_suffix_length(rows: list[list[int]]) -> int:
    """How many trailing tokens all rows share."""
    return common_prefix_length([row[::-1] for row in rows])


@dataclass
class PreparedItem:
    """One item ready for the model: a token row per option, and where its continuation is.

    rows[i][start:end] (start, end = spans[i]) are the tokens we score for option i; each is
    predicted by the logits one position earlier. A language-modeling item has one row.
    """
    rows: list[list[int]]
    spans: list[tuple[int, int]]
    gold: int


def prepare_item(tokenizer, task_meta: dict, data: list[dict], index: int, max_len: int) -> PreparedItem:
    """Render, tokenize and locate the continuation tokens of data[index] (cropped to max_len).

    We compare options in token space rather than measuring strings, because a BPE merges
    across the boundary (" A" is one token, not " " and "A"): the continuation starts where
    the options' tokens first differ (multiple choice, language modeling) or ends where
    their shared ending begins (schema).
    """
    task_type = task_meta["task_type"]
    if task_type not in RENDERERS:
        raise ValueError(f"unknown task type {task_type!r}; expected one of {TASK_TYPES}")
    item = data[index]
    fewshot = fewshot_examples(data, index, task_meta.get("num_fewshot", 0))
    prompts = RENDERERS[task_type](item, fewshot, task_meta.get("continuation_delimiter", " "))
    rows = tokenizer.encode(prompts, prepend=tokenizer.get_bos_token_id())
    if task_type == "multiple_choice":
        # if one choice is a prefix of another, back off so that no span is empty
        start = min(common_prefix_length(rows), min(len(row) for row in rows) - 1)
        spans = [(start, len(row)) for row in rows]
    elif task_type == "schema":
        # at least one token is scored, and at least one (the BOS) stays in front of it
        shared_end = max(1, min(common_suffix_length(rows), min(len(row) for row in rows) - 1))
        spans = [(len(row) - shared_end, len(row)) for row in rows]
    else:  # language_modeling: the context-only row just tells where the continuation starts
        full = rows[1]
        start = min(common_prefix_length(rows), len(full) - 1)
        rows, spans = [full], [(start, len(full))]
    cropped = [crop_left(row, span, max_len) for row, span in zip(rows, spans)]
    return PreparedItem(rows=[row for row, _ in cropped], spans=[span for _, span in cropped], gold=item.get("gold", 0))


def crop_left(row: list[int], span: tuple[int, int], max_len: int) -> tuple[list[int], tuple[int, int]]:
    """Drop the oldest tokens until the row fits the model's context; the continuation stays.

    The far past of a long few-shot prompt matters least, so it goes first. Position 0
    predicts nothing, so the span starts at 1 at the earliest (only a continuation longer
    than the whole context would lose its own first tokens).
    """
    cut = max(0, len(row) - max_len)
    start, end = span
    return row[cut:], (max(start - cut, 1), end - cut)


# ---------------------------------------------------------------------------------------------
# Scoring


@torch.no_grad()
def score_item(model, prepared: PreparedItem, task_type: str, device, pad_id: int) -> bool:
    """One forward pass over all options of an item; True if the model gets it right.

    The options are right-padded to one length. A causal model never looks ahead, so the
    padding cannot change the real positions, and we only read the logits of the spans.
    """
    width = max(len(row) for row in prepared.rows)
    ids = torch.full((len(prepared.rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(prepared.rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    ids = ids.to(device)
    logits = model(ids)  # (options, width, vocab)

    # gather every option's span into one (tokens, vocab) batch: position t predicts token t+1
    predicted_by = torch.cat([logits[i, start - 1 : end - 1] for i, (start, end) in enumerate(prepared.spans)]).float()
    targets = torch.cat([ids[i, start:end] for i, (start, end) in enumerate(prepared.spans)])
    span_lengths = [end - start for start, end in prepared.spans]
    losses = F.cross_entropy(predicted_by, targets, reduction="none").split(span_lengths)
    hits = (predicted_by.argmax(dim=-1) == targets).split(span_lengths)

    if task_type == "language_modeling":
        return bool(hits[0].all())  # greedy decoding would have written the whole continuation
    # mean rather than summed loss, so a longer choice is not penalised for its length
    mean_losses = torch.stack([span.mean() for span in losses]).tolist()
    best = min(range(len(mean_losses)), key=mean_losses.__getitem__)  # ties go to the first
    return best == prepared.gold


def item_order(num_items: int, max_per_task: int = -1) -> list[int]:
    """The item indices to evaluate: a fixed shuffle, then the first max_per_task.

    The files are often sorted (by category, by source), so the first 100 lines are
    not a fair sample; the first 100 of a shuffle are.
    """
    order = list(range(num_items))
    random.Random(SHUFFLE_SEED).shuffle(order)
    return order[:max_per_task] if max_per_task > 0 else order


def evaluate_items(model, tokenizer, task_meta: dict, data: list[dict], device, indices: list[int]) -> list[bool]:
    """Score the given items of one task, one forward pass per item: a correct/wrong per index."""
    max_len = model.config.sequence_len
    pad_id = tokenizer.get_bos_token_id()  # any valid id: padded positions are never read
    results = []
    for index in indices:
        prepared = prepare_item(tokenizer, task_meta, data, index, max_len)
        results.append(score_item(model, prepared, task_meta["task_type"], device, pad_id))
    return results


def evaluate_task(model, tokenizer, task_meta: dict, data: list[dict], device, max_per_task: int = -1) -> float:
    """Accuracy of the model on one task; under torchrun each rank scores a stride of the items.

    Few-shot examples are drawn from all of `data`, so a max_per_task subset asks exactly
    the questions a full run asks about those items.
    """
    if not data:
        raise ValueError(f"task {task_meta.get('label', '?')} has no items")
    world_size = get_world_size()
    mine = item_order(len(data), max_per_task)[get_rank()::world_size]
    correct = evaluate_items(model, tokenizer, task_meta, data, device, mine)
    counts = torch.tensor([sum(correct), len(correct)], dtype=torch.long, device=device)
    if world_size > 1:
        dist.all_reduce(counts)  # (correct, total) summed over ranks
    return counts[0].item() / counts[1].item()


def centered_accuracy(accuracy: float, random_baseline: float) -> float:
    """Rescale so guessing scores 0 and a perfect model 1 (baseline as a fraction)."""
    return (accuracy - random_baseline) / (1 - random_baseline)


def evaluate_core(model, tokenizer, device, bundle_dir: str | None = None, max_per_task: int = -1,
                  tasks: list[str] | None = None) -> dict:
    """Evaluate a base model on the CORE tasks of the eval bundle; return every number.

    Returns a dict:
        label          "CORE" if all tasks of core.yaml were evaluated, else "CORE-<n>"
        core           the mean centered accuracy over the evaluated tasks
        accuracy       {task: accuracy}
        centered       {task: centered accuracy}
        tasks_present  the tasks evaluated, tasks_missing those whose data is not in the bundle
        max_per_task   items per task (-1: all), so a subsampled result is never mistaken for a full one
        items          {task: items evaluated}, random_baseline {task: guessing's accuracy}: for error bars
    `tasks` restricts the run to some task labels. Under torchrun every rank must call this.
    """
    bundle_dir = bundle_dir or hub.download_eval_bundle()
    all_tasks = load_core_tasks(bundle_dir)
    if tasks is not None:
        known = {task["label"] for task in all_tasks}
        if unknown := [label for label in tasks if label not in known]:
            raise ValueError(f"unknown CORE task(s) {unknown}; core.yaml has {sorted(known)}")
        selected = [task for task in all_tasks if task["label"] in tasks]
    else:
        selected = all_tasks

    def data_path(task):
        return os.path.join(bundle_dir, "eval_data", task["dataset_uri"])

    present = [task for task in selected if os.path.isfile(data_path(task))]
    missing = [task["label"] for task in selected if not os.path.isfile(data_path(task))]
    if not present:
        raise FileNotFoundError(f"none of the selected CORE tasks has its data under {bundle_dir}/eval_data")

    accuracy, centered, loaded = {}, {}, {}
    bar = tqdm(present, desc="CORE tasks", disable=not is_master())
    for task in bar:
        bar.set_postfix_str(task["label"])
        path = data_path(task)
        if path not in loaded:  # hellaswag is used twice (0-shot and 10-shot)
            loaded[path] = load_task_data(path)
        accuracy[task["label"]] = evaluate_task(model, tokenizer, task, loaded[path], device, max_per_task)
        centered[task["label"]] = centered_accuracy(accuracy[task["label"]], task["random_baseline"])

    complete = len(present) == len(all_tasks)
    return {
        "label": "CORE" if complete else f"CORE-{len(present)}",
        "core": sum(centered.values()) / len(centered),
        "accuracy": accuracy,
        "centered": centered,
        "tasks_present": [task["label"] for task in present],
        "tasks_missing": missing,
        "max_per_task": max_per_task,
        "items": {task["label"]: len(item_order(len(loaded[data_path(task)]), max_per_task)) for task in present},
        "random_baseline": {task["label"]: task["random_baseline"] for task in present},
    }
