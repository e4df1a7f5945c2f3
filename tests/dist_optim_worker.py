"""Run by tests/test_optim.py under torchrun (2 CPU ranks, gloo), and imported by it for the reference.

Each rank trains the same tiny GPT with the distributed MuonAdamW on its half of every
batch, checkpoints mid-way, finishes, then resumes a fresh model from the checkpoint and
checks it ends bit-identical. It saves its final weights to OUT_DIR/rank{r}.pt for the test
to compare against one process training on whole batches.

    torchrun --standalone --nproc_per_node=2 tests/dist_optim_worker.py OUT_DIR
"""
import os
import sys
from dataclasses import asdict

import torch

from nanochat.checkpoint import load_checkpoint, save_checkpoint
from nanochat.common import destroy_distributed, init_distributed
from nanochat.gpt import GPTConfig, build_model
from nanochat.optim import muon_momentum

CONFIG = GPTConfig(sequence_len=16, vocab_size=64, n_layer=3, n_head=2, n_kv_head=1, n_embd=64)  # 3: leftovers
BATCH_SIZE = 4
TOTAL_STEPS = 6
RESUME_AT = 3


def make_model():
    """The same initial model and optimizer on every rank (and in the single-process reference)."""
    torch.manual_seed(0)
    model = build_model(CONFIG, "cpu")
    return model, model.setup_optimizers()


def batch(step: int):
    """Step `step`'s whole batch, the same on every rank."""
    g = torch.Generator().manual_seed(1000 + step)
    idx = torch.randint(0, CONFIG.vocab_size, (BATCH_SIZE, CONFIG.sequence_len + 1), generator=g)
    return idx[:, :-1], idx[:, 1:]


def train(model, optimizer, steps, rank: int = 0, world_size: int = 1) -> None:
    """Rank r trains on rows r, r + world_size, ... of each batch; with one rank, on all of it.

    The last step's gradients are kept: on each parameter's owner rank they are the mean
    over all ranks after optimizer.step(), which the test compares with one process's.
    """
    for step in steps:
        model.zero_grad(set_to_none=True)
        x, y = batch(step)
        model(x[rank::world_size], y[rank::world_size]).backward()
        for group in optimizer.param_groups:  # exercise the schedule knobs a training loop turns
            group["lr"] = group["initial_lr"] * (1 - step / 20)
            if group["kind"] == "muon":
                group["momentum"] = muon_momentum(step, warmup_steps=5)
        optimizer.step()


def main(out_dir: str) -> None:
    info = init_distributed("cpu", timeout_s=120)
    model, optimizer = make_model()
    train(model, optimizer, range(RESUME_AT), info.rank, info.world_size)
    ckpt_dir = os.path.join(out_dir, "checkpoints")
    save_checkpoint(ckpt_dir, RESUME_AT, model.state_dict(), optimizer.state_dict(),
                    {"config": asdict(CONFIG)}, loader_state={"next_step": RESUME_AT}, rank=info.rank)
    train(model, optimizer, range(RESUME_AT, TOTAL_STEPS), info.rank, info.world_size)

    resumed, resumed_optimizer = make_model()
    ckpt = load_checkpoint(ckpt_dir, RESUME_AT, rank=info.rank, expected_config=CONFIG)
    resumed.load_state_dict(ckpt.model_state)
    resumed_optimizer.load_state_dict(ckpt.optimizer_state)
    train(resumed, resumed_optimizer, range(ckpt.loader_state["next_step"], TOTAL_STEPS), info.rank, info.world_size)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), f"rank {info.rank}: {name} differs after resuming from the checkpoint"

    names = {p: name for name, p in model.named_parameters()}
    owned_grads = {names[p]: p.grad for _, p, owner in optimizer.ownership() if owner == info.rank}
    torch.save({"state": model.state_dict(), "owned": len(optimizer.state), "grads": owned_grads},
               os.path.join(out_dir, f"rank{info.rank}.pt"))
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
