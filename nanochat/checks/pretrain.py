"""Checks for 05_pretrain: the learning-rate schedule, gradient accumulation, bits per byte."""
import math

import torch

from nanochat.checks.verdict import Checker, mistake_named
from nanochat.evaluation.loss import evaluate_bpb
from nanochat.gpt import build_model, config_for_depth
from nanochat.train import lr_multiplier


def check_lr_schedule(lr_schedule) -> None:
    """lr_schedule(step, num_steps, warmup_ratio, warmdown_ratio, final_lr_frac) -> the LR multiplier at step."""
    c = Checker(lr_schedule)
    for num_steps, warmup, warmdown, final in [(10, 0.0, 0.2, 0.0), (20, 0.1, 0.5, 0.1), (7, 0.0, 1.0, 0.0),
                                               (100, 0.05, 0.2, 0.0)]:
        case = f"num_steps={num_steps}, warmup_ratio={warmup}, warmdown_ratio={warmdown}, final_lr_frac={final}"
        got = [c.call(step, num_steps, warmup, warmdown, final, case=case) for step in range(num_steps + 1)]
        expected = [lr_multiplier(s, num_steps, warmup, warmdown, final) for s in range(num_steps + 1)]
        w = round(warmup * num_steps)
        c.expect(got, expected, f"{case}, steps 0..{num_steps}", lambda g: mistake_named(g, {
            "off by one in the warmup: step 0 should already use 1/warmup of the LR ((step + 1) / warmup), "
            "not 0, or the first step is wasted": [s / w if s < w else e for s, e in zip(range(num_steps + 1), expected)]}
            if w else {},
            "warmup = round(warmup_ratio * n), warmdown = round(warmdown_ratio * n); step < warmup: (step+1)/warmup; "
            "step <= n - warmdown: 1; after that: linear from 1 to final_lr_frac, reaching it at step n"))
    c.passed("no warmup, warmup and warmdown, all-warmdown; every step from 0 to num_steps")


def check_accumulate_gradients(accumulate_gradients) -> None:
    """accumulate_gradients(model, micro_batches): backward over all of them, leaving the full batch's mean-loss gradient."""
    c = Checker(accumulate_gradients)
    torch.manual_seed(0)
    model = build_model(config_for_depth(1, vocab_size=32, sequence_len=8), dtype=torch.float32)
    for p in model.parameters():  # the zero-initialised projections would give some zero gradients
        torch.nn.init.normal_(p, std=0.3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, 32, (8, 8), generator=g), torch.randint(0, 32, (8, 8), generator=g)
    model.zero_grad()
    model(x, y).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    for n in (1, 2, 4):
        case = f"a batch of 8 rows in {n} micro-batches of {8 // n}"
        model.zero_grad(set_to_none=True)
        micro = list(zip(x.split(8 // n), y.split(8 // n)))
        c.call(model, micro, case=case)
        grads = [p.grad for p in model.parameters()]
        c.require(all(gr is not None for gr in grads), case, "some parameters have no gradient: call loss.backward()")
        ratio = (grads[0].norm() / expected[0].norm()).item()
        hint = (f"the gradient is {ratio:.2f}x too large: divide each micro-batch's loss by the number of micro-batches"
                if abs(ratio - n) < 0.3 * n and n > 1 else
                "do not zero the gradients between micro-batches: backward() adds into .grad, that is the accumulation"
                if n > 1 and ratio < 0.9 else "loss = model(x, y) / len(micro_batches); loss.backward() for each")
        for i, (got, exp) in enumerate(zip(grads, expected)):
            c.expect(got, exp, f"{case}: the gradient of parameter {i}", hint, atol=1e-5, rtol=1e-3)
    c.passed("1, 2 and 4 micro-batches give the gradient of the whole batch")


class _FixedLosses:
    """A 'model' whose per-token losses are given: lets evaluate_bpb serve as the reference."""

    def __init__(self, losses):
        self.losses = losses

    def __call__(self, inputs, targets, loss_reduction="none"):
        return self.losses


def check_bits_per_byte(bits_per_byte) -> None:
    """bits_per_byte(losses, targets, token_bytes) -> sum of nats / (ln 2 * bytes), skipping -1 and 0-byte targets."""
    c = Checker(bits_per_byte)
    g = torch.Generator().manual_seed(0)
    V = 20
    token_bytes = torch.randint(1, 6, (V,), generator=g)
    token_bytes[:2] = 0  # ids 0 and 1 are special tokens: no bytes
    for B, T, case in [(1, 4, "one row"), (4, 16, "a batch of 4 rows"), (4, 16, "rows with ignored (-1) and special targets")]:
        losses = torch.rand(B, T, generator=g) * 5
        targets = torch.randint(2, V, (B, T), generator=g)
        if "ignored" in case:
            targets[:, :3] = -1
            targets[:, 5] = 0
        got = c.call(losses.clone(), targets.clone(), token_bytes.clone(), case=case)
        expected = evaluate_bpb(_FixedLosses(losses), [(targets, targets)], 1, token_bytes)
        counted = (targets >= 0)
        nbytes = token_bytes[targets.clamp(min=0)] * counted
        mistakes = {"divide by ln 2: losses are in nats, bits per byte counts bits": expected * math.log(2),
                    "that is bits per token; divide by the number of bytes the targets decode to, not by the tokens":
                        (losses[counted].sum() / counted.sum() / math.log(2)).item(),
                    "leave out targets with no bytes (special tokens): their losses have no text to spread over":
                        (losses[counted].sum() / (math.log(2) * nbytes.sum())).item()}
        c.expect(float(got) if isinstance(got, (torch.Tensor, float, int)) else got, expected, case,
                 lambda x: mistake_named(x, mistakes, "nbytes = token_bytes[targets] where targets >= 0 (else 0); "
                                                      "bpb = losses[nbytes > 0].sum() / (ln 2 * nbytes.sum())"), rtol=1e-4)
    c.passed("one row, a batch, ignored and special targets")
