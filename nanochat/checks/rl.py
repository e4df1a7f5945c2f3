"""Checks for 08_grpo: group advantages, the policy-gradient loss, the GSM8K reward."""
import torch

from nanochat.checks.verdict import Checker, mistake_named
from nanochat.rl import group_advantages
from nanochat.tasks.gsm8k import final_number


def check_group_advantages(advantages) -> None:
    """advantages(rewards) -> r_i - mean(r) for the replies to one prompt."""
    c = Checker(advantages)
    for rewards in ([1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.2, 0.9, 0.4], [5.0]):
        got = c.call(list(rewards), case=f"rewards {rewards}")
        mean = sum(rewards) / len(rewards)
        c.expect([float(a) for a in got] if isinstance(got, (list, tuple, torch.Tensor)) else got,
                 group_advantages(rewards), f"rewards {rewards}", lambda g: mistake_named(g, {
                     "subtract the group's mean: a reward of 1 when every reply got 1 teaches nothing": list(rewards),
                     "subtract the mean of this group only, then stop: no division by the std here (see the lesson)":
                         [(r - mean) / (torch.tensor(rewards).std().item() + 1e-4) for r in rewards]},
                     "[r - mean(rewards) for r in rewards]"))
    c.passed("mixed, all-wrong, all-right and graded rewards, a group of one")


def check_policy_gradient_loss(policy_gradient_loss) -> None:
    """policy_gradient_loss(logprobs, mask, advantages) -> -sum(logp * A * mask) / sum(mask), for (N, T), (N, T), (N,)."""
    c = Checker(policy_gradient_loss)
    g = torch.Generator().manual_seed(0)
    for N, T, case in [(2, 3, "2 replies of 3 tokens"), (4, 10, "4 replies, prompts masked out")]:
        logprobs = -torch.rand(N, T, generator=g) * 3
        mask = torch.ones(N, T)
        if "prompts" in case:
            mask[:, :4] = 0
            mask[1, 8:] = 0  # a shorter reply
        advantages = torch.randn(N, generator=g)
        got = c.call(logprobs.clone(), mask.clone(), advantages.clone(), case=case)
        weighted = logprobs * advantages[:, None]
        expected = -(weighted * mask).sum() / mask.sum()
        c.expect(got, expected, f"{case}, advantages {[round(a, 3) for a in advantages.tolist()]}",
                 lambda x: mistake_named(x, {
                     "the sign: minimising -log p * A raises the probability of replies with A > 0; you would lower it":
                         -expected,
                     "only sampled tokens count: multiply by the mask (the prompt was not the model's choice)":
                         -weighted.sum() / mask.sum() if "prompts" in case else None,
                     "normalise by the number of sampled tokens (mask.sum()), not by all N*T positions":
                         -(weighted * mask).sum() / (N * T) if "prompts" in case else None},
                     "-(logprobs * advantages[:, None] * mask).sum() / mask.sum()"), atol=1e-5)
    logprobs = torch.full((2, 3), -1.0, requires_grad=True)
    loss = c.call(logprobs, torch.ones(2, 3), torch.tensor([1.0, -1.0]), case="the gradient")
    c.require(isinstance(loss, torch.Tensor) and loss.requires_grad, "advantages (1, -1)",
              "the loss must be a tensor connected to logprobs, so loss.backward() can reach the model")
    loss.backward()
    c.require(bool((logprobs.grad[0] < 0).all() and (logprobs.grad[1] > 0).all()), "advantages (1, -1)",
              "a gradient-descent step must raise the log-probabilities of the reply with A > 0 and lower the other")
    c.passed("equal and unequal reply lengths, masked prompts; the sign of the gradient")


def check_gsm8k_reward(reward) -> None:
    """reward(completion, reference) -> 1.0 if the number after the completion's last '####' equals the reference's, else 0.0."""
    c = Checker(reward)
    reference = "She has 3 + 4 = <<3+4=7>>7 apples.\n#### 1,234"
    for completion in ["#### 1234", "The answer is #### 1,234", "#### 12\nNo wait.\n#### 1234", "#### 1234\n#### 12",
                       "1234", "####1234.", "#### -1234", ""]:
        got = c.call(completion, reference, case=f"completion {completion!r}")
        expected = 1.0 if final_number(completion) == final_number(reference) else 0.0
        c.expect(float(got) if isinstance(got, (bool, int, float)) else got, expected,
                 f"completion {completion!r} against reference ending '#### 1,234'",
                 "take the number after the LAST '####' of each text (re.findall), drop thousands commas, compare; "
                 "no '####' means reward 0")
    c.passed("commas, several '####', none at all, a sign, trailing punctuation")
