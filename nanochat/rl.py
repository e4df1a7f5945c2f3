"""Reinforcement learning from a reward the task computes: the pieces of nanochat's simplified GRPO.

One step, for each of a few prompts:
  1. rollout   sample num_samples replies with the Engine (one prefill, batched decode, tool calls
               run and their forced output masked out), and score each with task.reward;
  2. advantage how much better each reply did than its siblings: A_i = r_i - mean(r of the group).
               No division by the standard deviation, no learned value function: the group is
               its own baseline;
  3. loss      -sum over the replies' sampled tokens of log p(token) * A, divided by the number of
               those tokens (DAPO's token-level normalisation: a long reply does not weigh less
               per token than a short one).
Then the optimizer step, exactly as in training. On-policy: the replies come from the current
weights and are used once, so PPO's ratio, clipping and KL penalty (which keep a policy close
to the one that sampled the data) have nothing to do, and are left out.

A group whose rewards are all equal (all wrong, or all right) has every advantage 0 and
teaches nothing: RL needs a task on which the model sometimes succeeds.
"""
from dataclasses import dataclass

import torch


@dataclass
class Group:
    """The sampled replies to one prompt, and how each was rewarded."""
    prompt_len: int
    sequences: list[list[int]]   # prompt + reply, per sample
    masks: list[list[int]]       # 1 where the model sampled the token (not prompt, not tool output)
    rewards: list[float]
    replies: list[str]

    @property
    def advantages(self) -> list[float]:
        return group_advantages(self.rewards)


def group_advantages(rewards: list[float]) -> list[float]:
    """A_i = r_i - mean(r): above-average replies are pushed up, below-average ones down."""
    mean = sum(rewards) / len(rewards)
    return [r - mean for r in rewards]


def rollout(engine, task, index: int, num_samples: int, max_tokens: int, temperature: float = 1.0,
            top_k: int | None = 50, seed: int = 0) -> Group:
    """Sample num_samples replies to conversation `index` of the task and reward each one."""
    conversation = task[index]
    prompt = engine.tokenizer.render_for_completion(conversation)
    sequences, masks = engine.generate_batch(prompt, num_samples=num_samples, max_tokens=max_tokens,
                                             temperature=temperature, top_k=top_k, seed=seed)
    replies = [engine.tokenizer.decode(s[len(prompt):]) for s in sequences]
    return Group(len(prompt), sequences, masks, [task.reward(conversation, r) for r in replies], replies)


def policy_gradient_loss(model, groups: list[Group], device) -> tuple[torch.Tensor, int]:
    """The GRPO loss of some groups, -sum(log p * A) over sampled tokens, and that token count.

    Returns the summed (not yet normalised) loss and how many tokens it covers, so the caller can
    normalise over every micro-batch and rank of a step. Rows are right-padded to a batch; a
    target is learned from (-1 otherwise) only where the reply's mask is 1 and its advantage is not 0.
    """
    rows = [(s, m, a) for g in groups for s, m, a in zip(g.sequences, g.masks, g.advantages)]
    width = max(len(s) for s, _, _ in rows)
    inputs = torch.zeros(len(rows), width - 1, dtype=torch.long)
    targets = torch.full((len(rows), width - 1), -1, dtype=torch.long)
    weights = torch.zeros(len(rows), width - 1)
    for i, (sequence, mask, advantage) in enumerate(rows):
        n = len(sequence) - 1
        inputs[i, :n] = torch.tensor(sequence[:-1])
        learned = torch.tensor(mask[1:], dtype=torch.bool)  # target j is token j+1
        targets[i, :n] = torch.where(learned, torch.tensor(sequence[1:]), -1)
        weights[i, :n] = learned.float() * advantage
    inputs, targets, weights = inputs.to(device), targets.to(device), weights.to(device)
    nll = model(inputs, targets, loss_reduction="none")  # (B, T): -log p(target), 0 where target is -1
    return (nll * weights).sum(), int((targets != -1).sum())


def update(model, optimizer, groups: list[Group], device) -> float:
    """One policy-gradient step on this rank's groups; returns the loss.

    The loss is normalised by the sampled tokens of every rank together (DAPO), and scaled by
    the world size because optimizer.step() averages the gradients over ranks.
    """
    import torch.distributed as dist

    from nanochat.common import get_world_size

    loss_sum, tokens = policy_gradient_loss(model, groups, device)
    count = torch.tensor(float(tokens), device=device)
    world = get_world_size()
    if world > 1:
        dist.all_reduce(count)
    loss = loss_sum * world / count.clamp(min=1.0)
    loss.backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return loss.item()
