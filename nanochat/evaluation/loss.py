"""Bits per byte: the validation loss that does not depend on the tokenizer.

The training loss is nats per *token*, and a token is whatever the tokenizer made it. A
tokenizer with a bigger vocabulary packs more text into each token, so each prediction is
harder and the loss per token goes up, even if the model is just as good. Two runs with
different tokenizers cannot be compared by loss.

Dividing by the number of bytes the tokens stand for fixes that: the same text has the
same number of bytes however it is cut up, so

    bpb = (sum of per-token losses in nats) / (ln 2 * number of bytes of those tokens)

is "how many bits the model needs to encode one byte of text", comparable across
tokenizers and with compression programs: on the course's validation shard (3.6 MB),
gzip -9 needs 3.1 bits per byte and xz -9 needs 2.4.
"""
import math

import torch
import torch.distributed as dist


@torch.no_grad()
def evaluate_bpb(model, batches, steps: int, token_bytes: torch.Tensor) -> float:
    """Bits per byte of `model` over `steps` batches of (inputs, targets); summed over all ranks.

    token_bytes[i] is how many UTF-8 bytes token i decodes to, 0 for special tokens. Targets
    that are ignored (-1) or special (0 bytes, e.g. <|bos|>) are left out of both sums: a
    special token is not text, so it has no bytes to spread its loss over. Exactly `steps`
    batches are taken from `batches` (fewer if it runs out), none more.
    """
    total_nats, total_bytes = None, None
    for _, (inputs, targets) in zip(range(steps), batches):  # range first: zip never pulls an extra batch
        losses = model(inputs, targets, loss_reduction="none").reshape(targets.shape).float()  # (B, T) nats
        token_bytes = token_bytes.to(targets.device)
        nbytes = torch.where(targets >= 0, token_bytes[targets.clamp(min=0)], 0)  # (B, T), 0 = not counted
        if total_nats is None:
            total_nats = torch.zeros((), dtype=torch.float32, device=targets.device)
            total_bytes = torch.zeros((), dtype=torch.long, device=targets.device)
        total_nats += torch.where(nbytes > 0, losses, 0.0).sum()
        total_bytes += nbytes.sum()
    if total_nats is None:
        raise ValueError(f"evaluate_bpb got no batches (steps={steps}): nothing to evaluate")
    if dist.is_initialized():
        dist.all_reduce(total_nats)  # every rank saw different batches: add them up
        dist.all_reduce(total_bytes)
    if total_bytes.item() == 0:
        raise ValueError("evaluate_bpb: no target had any bytes (all ignored or special tokens)")
    return total_nats.item() / (math.log(2) * total_bytes.item())
