"""GRPO's pieces: group advantages, the masked token-level loss, and a reward that climbs."""
import pytest
import torch

from nanochat import rl
from nanochat.engine import Engine
from nanochat.gpt import GPTConfig, build_model
from nanochat.tasks.common import Task
from nanochat.tokenizer import Tokenizer
from nanochat.train import set_schedules


def test_advantages_are_rewards_minus_the_group_mean():
    assert rl.group_advantages([1.0, 0.0, 0.0, 1.0]) == [0.5, -0.5, -0.5, 0.5]
    assert rl.group_advantages([1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]


def tiny_model(seed=0):
    torch.manual_seed(seed)
    tokenizer = Tokenizer.bytes_only()
    config = GPTConfig(sequence_len=64, vocab_size=tokenizer.get_vocab_size(), n_layer=1, n_head=1, n_kv_head=1,
                       n_embd=64)
    return build_model(config), tokenizer


def group(rewards, masks=None):
    sequences = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 7, 8, 9]]
    masks = masks or [[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]]
    return rl.Group(prompt_len=3, sequences=sequences, masks=masks, rewards=rewards, replies=["", ""])


def test_equal_rewards_give_no_gradient():
    model, _ = tiny_model()
    loss, tokens = rl.policy_gradient_loss(model, [group([1.0, 1.0])], "cpu")
    loss.backward()
    assert tokens == 6 and loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_only_sampled_tokens_count_each_weighted_by_its_advantage():
    model, _ = tiny_model()
    only_one = [[0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0]]  # one sampled token: 5, predicted from [1, 2, 3, 4]
    loss, tokens = rl.policy_gradient_loss(model, [group([1.0, 0.0], only_one)], "cpu")
    nll = model(torch.tensor([[1, 2, 3, 4]]), torch.tensor([[-1, -1, -1, 5]]))  # mean over the one target
    assert tokens == 1 and loss.item() == pytest.approx(0.5 * nll.item(), rel=1e-5)  # advantage +0.5


class LowercaseTask(Task):
    """A toy reward a random model can reach: the share of lowercase letters in the reply (or the rest)."""
    name = "lowercase"

    def __init__(self, reward_lowercase: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.reward_lowercase = reward_lowercase

    def num_examples(self):
        return 4

    def get_example(self, index):
        return {"messages": [{"role": "user", "content": f"write {index}"}, {"role": "assistant", "content": "abc"}]}

    def reward(self, conversation, completion):
        share = sum(c.islower() for c in completion) / max(len(completion), 1)
        return share if self.reward_lowercase else 1.0 - share


def lowercase_shares(task: LowercaseTask, steps: int = 12) -> list[float]:
    """A seeded GRPO run; the share of lowercase letters in the replies at every step."""
    model, tokenizer = tiny_model()
    optimizer = model.setup_optimizers(matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.05)
    engine, shares = Engine(model, tokenizer, tool=None), []
    for step in range(steps):
        groups = [rl.rollout(engine, task, i, num_samples=8, max_tokens=8, seed=100 * step + i) for i in range(4)]
        shares.append(sum(LowercaseTask().reward(None, r) for g in groups for r in g.replies) / 32)
        set_schedules(optimizer, step, steps, warmdown_ratio=0.0)
        rl.update(model, optimizer, groups, "cpu")
    return shares


def test_the_reward_climbs_and_the_opposite_reward_pushes_the_other_way():
    rewarded = lowercase_shares(LowercaseTask(reward_lowercase=True))
    assert sum(rewarded[-3:]) / 3 > sum(rewarded[:3]) / 3 + 0.15, rewarded  # a sign error would make it fall
    punished = lowercase_shares(LowercaseTask(reward_lowercase=False))
    assert sum(punished[-3:]) / 3 < sum(punished[:3]) / 3, punished
