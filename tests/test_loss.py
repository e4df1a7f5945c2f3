"""Bits per byte: the arithmetic, what is left out, loss shapes, batch counting, ranks."""
import json
import math
import os
import sys
from types import SimpleNamespace

import pytest
from torchrun import run_two_ranks
import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat.evaluation.loss import evaluate_bpb

V = 50
SPECIALS = (0, 1)  # token ids that stand for no text


class TinyModel(nn.Module):
    """A stand-in for nanochat.gpt.GPT: logits from a table (zeros = uniform), per-token losses."""

    def __init__(self, table: torch.Tensor, flat_loss: bool = False):
        super().__init__()
        self.table, self.flat_loss = table, flat_loss
        self.config = SimpleNamespace(sequence_len=64)

    def forward(self, idx, targets=None, loss_reduction="mean"):
        logits = self.table[idx]  # (B, T, V)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction=loss_reduction)
        return loss if self.flat_loss or loss_reduction != "none" else loss.view(targets.shape)


def uniform_model(**kwargs):
    return TinyModel(torch.zeros(V, V), **kwargs)


def random_model(seed=0, **kwargs):
    return TinyModel(torch.randn(V, V, generator=torch.Generator().manual_seed(seed)) * 3, **kwargs)


def make_token_bytes(seed=0):
    """1-4 bytes per ordinary token, 0 for the specials."""
    sizes = torch.randint(1, 5, (V,), generator=torch.Generator().manual_seed(seed))
    sizes[list(SPECIALS)] = 0
    return sizes


def make_batches(n, seed=0, B=3, T=16):
    """n batches of (inputs, targets) with some targets ignored (-1) and some special."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n):
        tokens = torch.randint(0, V, (B, T + 1), generator=generator)
        targets = tokens[:, 1:].clone()
        targets[torch.rand(B, T, generator=generator) < 0.2] = -1
        batches.append((tokens[:, :-1], targets))
    return batches


def bpb_by_hand(model, batches, token_bytes):
    """The definition, one token at a time: nats of counted targets over ln 2 times their bytes."""
    nats, nbytes = 0.0, 0
    for inputs, targets in batches:
        log_probs = torch.log_softmax(model(inputs).double(), dim=-1)
        for b, t in zip(*torch.nonzero(targets >= 0, as_tuple=True)):
            target = targets[b, t].item()
            if token_bytes[target] > 0:
                nats -= log_probs[b, t, target].item()
                nbytes += token_bytes[target].item()
    return nats / (math.log(2) * nbytes)


def test_uniform_model_needs_log2_vocab_bits_per_token():
    batches, token_bytes = make_batches(4), make_token_bytes()
    targets = torch.cat([t.flatten() for _, t in batches])
    counted = targets[(targets >= 0)]
    counted = counted[token_bytes[counted] > 0]
    expected = math.log2(V) * len(counted) / token_bytes[counted].sum().item()
    assert evaluate_bpb(uniform_model(), iter(batches), 4, token_bytes) == pytest.approx(expected, rel=1e-6)


def test_ignored_and_special_targets_are_left_out():
    model, batches, token_bytes = random_model(), make_batches(3), make_token_bytes()
    got = evaluate_bpb(model, iter(batches), 3, token_bytes)
    assert got == pytest.approx(bpb_by_hand(model, batches, token_bytes), rel=1e-5)
    # the special targets are there and carry loss, so counting them would change the answer
    targets = torch.cat([t.flatten() for _, t in batches])
    assert any((targets == s).any() for s in SPECIALS)
    every_token_one_byte = torch.where(token_bytes > 0, token_bytes, 1)
    assert evaluate_bpb(model, iter(batches), 3, every_token_one_byte) != pytest.approx(got, rel=1e-3)


def test_flat_and_2d_losses_give_the_same_answer():
    batches, token_bytes = make_batches(2), make_token_bytes()
    flat = evaluate_bpb(random_model(flat_loss=True), iter(batches), 2, token_bytes)
    assert flat == evaluate_bpb(random_model(), iter(batches), 2, token_bytes)


def test_takes_exactly_steps_batches():
    batches, token_bytes = make_batches(5), make_token_bytes()
    stream = iter(batches)
    got = evaluate_bpb(random_model(), stream, 3, token_bytes)
    assert next(stream) is batches[3]  # the loader's position is not disturbed
    assert got == pytest.approx(bpb_by_hand(random_model(), batches[:3], token_bytes), rel=1e-5)


def test_nothing_to_count_is_an_error():
    with pytest.raises(ValueError, match="no batches"):
        evaluate_bpb(random_model(), iter([]), 3, make_token_bytes())
    inputs, targets = make_batches(1)[0]
    with pytest.raises(ValueError, match="no target had any bytes"):
        evaluate_bpb(random_model(), iter([(inputs, torch.full_like(targets, -1))]), 1, make_token_bytes())


def _distributed_worker(out_path):
    """Each rank evaluates its own half of the batches (python tests/test_loss.py OUT under torchrun)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mine = make_batches(6)[rank::world_size]
    bpb = evaluate_bpb(random_model(), iter(mine), len(mine), make_token_bytes())
    if rank == 0:
        with open(out_path, "w") as f:
            json.dump({"bpb": bpb, "world_size": world_size}, f)
    dist.destroy_process_group()


@pytest.mark.distributed
def test_torchrun_two_ranks_match_one_process(tmp_path):
    result = run_two_ranks(__file__, tmp_path / "result.json")
    alone = evaluate_bpb(random_model(), iter(make_batches(6)), 6, make_token_bytes())
    half = evaluate_bpb(random_model(), iter(make_batches(6)[0::2]), 3, make_token_bytes())
    assert result["world_size"] == 2 and result["bpb"] == pytest.approx(alone, rel=1e-6)
    assert half != pytest.approx(alone, rel=1e-4)  # so a missing all-reduce would be caught


if __name__ == "__main__":
    _distributed_worker(sys.argv[1])
