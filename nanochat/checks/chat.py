"""Checks for 06_midtrain and 07_sft: the conversation mask, shifted targets, tool calls from GSM8K,
best-fit rows padded instead of cropped, a padded batch, the loss over supervised tokens only."""
import random

import torch
import torch.nn.functional as F

from nanochat.checks.data import reference_pack_row
from nanochat.checks.tokenizer import small_tokenizer
from nanochat.checks.verdict import Checker, mistake_named
from nanochat.tasks.gsm8k import answer_parts

CONVERSATIONS = [
    ("one exchange", [{"role": "user", "content": "Why is the sky blue?"},
                      {"role": "assistant", "content": "Because air scatters blue light the most."}]),
    ("two exchanges", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                       {"role": "user", "content": "Name a number."}, {"role": "assistant", "content": "2024"}]),
    ("a tool call and its output", [
        {"role": "user", "content": "What is 48/2?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me compute "},
                                          {"type": "python", "text": "48/2"},
                                          {"type": "python_output", "text": "24"},
                                          {"type": "text", "text": "so it is 24."}]}]),
]


def _regions(tokenizer, ids) -> list[str]:
    """What each token of a rendered conversation is: a special token's name, or the turn or part it sits in."""
    first_special = tokenizer.get_vocab_size() - 9  # the 9 special tokens come last
    labels, inside = [], "assistant text"
    for token in ids:
        name = tokenizer.id_to_token(token) if token >= first_special else None
        if name in ("<|user_start|>", "<|output_start|>", "<|python_start|>"):
            inside = {"<|user_start|>": "the user's turn", "<|output_start|>": "the tool's output",
                      "<|python_start|>": "a tool call"}[name]
        labels.append(name or inside)
        if name in ("<|user_end|>", "<|output_end|>", "<|python_end|>"):
            inside = "assistant text"
    return labels


MASK_HINTS = {  # what a wrong mask bit at a token of this kind means
    "the user's turn": "the user's turns are what the model reads, not what it writes: mask them 0",
    "<|user_start|>": "the user's turns, their markers included, are read, not written: mask 0",
    "<|user_end|>": "the user's turns, their markers included, are read, not written: mask 0",
    "<|assistant_end|>": "supervise <|assistant_end|>: the model must learn to end its turn (or it never stops)",
    "<|assistant_start|>": "<|assistant_start|> comes from the prompt (render_for_completion puts it there): mask it 0",
    "the tool's output": "the tool's output is written by the tool, not the model: mask it 0",
    "<|output_start|>": "the tool's output, its <|output_start|>/<|output_end|> markers included, is not the model's: 0",
    "<|output_end|>": "the tool's output, its <|output_start|>/<|output_end|> markers included, is not the model's: 0",
    "a tool call": "the model writes its tool calls: mask them 1, markers <|python_start|>/<|python_end|> included",
    "<|python_start|>": "the model writes its tool calls: mask them 1, markers <|python_start|>/<|python_end|> included",
    "<|python_end|>": "the model writes its tool calls: mask them 1, markers <|python_start|>/<|python_end|> included",
    "<|bos|>": "<|bos|> starts every row; nothing predicts it: mask 0",
    "assistant text": "the assistant's text is what the model learns to write: mask 1",
}


def check_render_conversation(render_conversation) -> None:
    """render_conversation(tokenizer, messages) -> (ids, mask): mask 1 exactly where the model learns to write."""
    c = Checker(render_conversation)
    tokenizer = small_tokenizer()
    for name, messages in CONVERSATIONS:
        case = f"{name}: {messages}"
        got = c.call(tokenizer, [dict(m) for m in messages], case=name)
        ids, mask = tokenizer.render_conversation(messages)
        c.require(isinstance(got, tuple) and len(got) == 2, case, "expected a pair (ids, mask)")
        c.expect(list(got[0]), ids, f"{case}: the ids", "<|bos|>, then per user turn <|user_start|> text <|user_end|>, "
                 "per assistant turn <|assistant_start|> parts <|assistant_end|>; a python part is wrapped in "
                 "<|python_start|>..<|python_end|>, a python_output part in <|output_start|>..<|output_end|>")
        got_mask = list(got[1])
        c.require(len(got_mask) == len(mask), case, f"the mask has {len(got_mask)} entries for {len(ids)} ids")
        wrong = [i for i, (g, m) in enumerate(zip(got_mask, mask)) if g != m]
        if wrong:
            i, region = wrong[0], _regions(tokenizer, ids)[wrong[0]]
            where = "" if region.startswith("<|") else f" in {region}"
            c.fail(f"{case}: the mask", f"token {i}, {tokenizer.id_to_token(ids[i])!r}{where}: expected mask "
                   f"{mask[i]}, got {got_mask[i]} ({len(wrong)} wrong bit(s) in all)", MASK_HINTS[region])
        c.cases += 1
    c.passed("one and two exchanges, a tool call with its output")


def check_inputs_and_targets(inputs_and_targets) -> None:
    """inputs_and_targets(ids, mask) -> (inputs, targets) int64 tensors; targets -1 where the target is not supervised."""
    c = Checker(inputs_and_targets)
    tokenizer = small_tokenizer()
    for name, messages in CONVERSATIONS:
        ids, mask = tokenizer.render_conversation(messages)
        got = c.call(list(ids), list(mask), case=name)
        inputs, targets = torch.tensor(ids[:-1]), torch.tensor(ids[1:])
        expected_targets = torch.where(torch.tensor(mask[1:], dtype=torch.bool), targets, -1)
        c.require(isinstance(got, tuple) and len(got) == 2, name, "expected a pair (inputs, targets)")
        c.expect(got[0], inputs, f"{name}: inputs", "inputs are ids[:-1]")
        unshifted = torch.where(torch.tensor(mask[:-1], dtype=torch.bool), targets, -1)
        c.expect(got[1], expected_targets, f"{name}: targets", lambda g: mistake_named(g, {
            "target i is token i+1, so it is learned when mask[i+1] is 1: shift the mask with the ids": unshifted},
            "targets = ids[1:], set to -1 where mask[1:] is 0"))
    c.passed("three conversations; the shift of the ids and of the mask")


GSM8K_ANSWERS = [
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
    "<<3*4=12>>12 apples.\n#### 12",
    "No calculation needed.\n#### 5",
    "It is 10-3=<<10-3=7>>7<<7*2=14>>14\n#### 14",
]


def check_gsm8k_parts(gsm8k_parts) -> None:
    """gsm8k_parts(answer) -> content parts: each <<expr=value>> becomes a python part (expr) and a python_output (value)."""
    c = Checker(gsm8k_parts)
    for answer in GSM8K_ANSWERS:
        got = c.call(answer, case=repr(answer))
        expected = answer_parts(answer)
        c.expect(got, expected, f"the answer {answer!r}", lambda g: mistake_named(g, {
            "keep the value out of the python part: the model writes the expression, the tool computes the value":
                [dict(p, text=p["text"] + "=" + expected[i + 1]["text"]) if p["type"] == "python" else p
                 for i, p in enumerate(expected)]},
            "walk the <<expr=value>> matches (re.finditer): text before it, {'type': 'python', 'text': expr}, "
            "{'type': 'python_output', 'text': value}; then the text after the last one; drop empty text parts"))
    c.passed("two calculations, one at the very start, none at all, two back to back")


def check_pack_padded_row(pack_padded_row) -> None:
    """pack_padded_row(docs, row_len, pad_id) -> (row, docs left): best fit, no document split, padding at the end."""
    c = Checker(pack_padded_row)
    rng = random.Random(1)
    for lengths, row_len, case in [([3, 9, 5], 8, "lengths 3, 9, 5, row_len 8"),
                                   ([2, 7, 4, 6], 12, "lengths 2, 7, 4, 6, row_len 12"),
                                   ([9, 11], 10, "lengths 9, 11, row_len 10: the 9 and one pad"),
                                   (rng.sample(range(1, 40), 10), 48, "10 random lengths, row_len 48")]:
        docs = [[100 * (i + 1) + j for j in range(n)] for i, n in enumerate(lengths)]
        got = c.call([list(d) for d in docs], row_len, -7, case=case)
        row, left = reference_pack_row(docs, row_len, pad_id=-7)
        c.require(isinstance(got, tuple) and len(got) == 2, case, "expected a pair (row, docs_left)")
        c.require(len(got[0]) == row_len, case, f"the row has {len(got[0])} ids, expected {row_len}: pad it with pad_id")
        c.expect(list(got[0]), row, f"{case} (pad_id -7)", lambda g: (
            "never split a conversation: when nothing fits, pad the rest of the row instead of cropping"
            if -7 not in g and -7 in row else
            "take the largest document that fits the space left, until none fits, then pad with pad_id"))
        c.expect(sorted(map(list, got[1])), sorted(left), f"{case}: the documents left over",
                 "every document not placed in the row stays, whole, for the next row")
    c.passed("exact fits, a row that must be padded, random documents; nothing is ever cropped")


def check_collate(collate) -> None:
    """collate(rows, pad_id) -> (inputs, targets) (B, L-1) for (ids, mask) rows right-padded to the longest L."""
    c = Checker(collate)
    tokenizer = small_tokenizer()
    rows = [tokenizer.render_conversation(m) for _, m in CONVERSATIONS]
    pad = tokenizer.get_bos_token_id()
    for chosen, case in [([0], "one conversation"), ([0, 1, 2], "three conversations of different lengths"),
                         ([2, 1], "two conversations, the longer first")]:
        batch = [rows[i] for i in chosen]
        got = c.call([(list(i), list(m)) for i, m in batch], pad, case=case)
        L = max(len(i) for i, _ in batch)
        ids = torch.tensor([i + [pad] * (L - len(i)) for i, _ in batch])
        mask = torch.tensor([m + [0] * (L - len(m)) for _, m in batch], dtype=torch.bool)
        targets = torch.where(mask[:, 1:], ids[:, 1:], -1)
        c.require(isinstance(got, tuple) and len(got) == 2, case, "expected a pair (inputs, targets)")
        c.expect(got[0], ids[:, :-1], f"{case}: inputs", "pad each row on the right to the longest, then inputs = ids[:, :-1]")
        is_padding = torch.tensor([[j + 1 >= len(i) for j in range(L - 1)] for i, _ in batch])
        padded_targets = torch.where(mask[:, 1:] | is_padding, ids[:, 1:], -1)
        c.expect(got[1], targets, f"{case}: targets", lambda g: mistake_named(g, {
            "padding is not a target: set targets to -1 on padding, or the model learns to predict pad tokens": padded_targets},
            "targets = ids[:, 1:], -1 where the (padded) mask[:, 1:] is 0; padding has mask 0"))
    c.passed("one row, rows of different lengths in either order; padding and unsupervised tokens are -1")


def check_masked_loss(masked_loss) -> None:
    """masked_loss(logits (B, T, V), targets (B, T)) -> mean cross-entropy over the targets that are not -1."""
    c = Checker(masked_loss)
    g = torch.Generator().manual_seed(0)
    for B, T, V, ignored, case in [(1, 4, 5, 0, "no ignored targets"), (2, 6, 7, 5, "5 of 12 targets ignored"),
                                   (3, 8, 11, 20, "20 of 24 targets ignored")]:
        logits = torch.randn(B, T, V, generator=g)
        targets = torch.randint(0, V, (B, T), generator=g)
        targets.view(-1)[torch.randperm(B * T, generator=g)[:ignored]] = -1
        got = c.call(logits.clone(), targets.clone(), case=case)
        per_token = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1, reduction="none")
        expected = F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)
        c.expect(got, expected, case, lambda x: mistake_named(x, {
            "average over the supervised targets only: dividing by all B*T positions makes short replies count less":
                per_token.sum() / (B * T),
            "average, do not sum: the loss should not grow with the number of tokens in the batch": per_token.sum()},
            "F.cross_entropy(logits.view(-1, V), targets.view(-1), ignore_index=-1)"), atol=1e-5)
    c.passed("no, some and most targets ignored")
