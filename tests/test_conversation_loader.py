"""The chat stages' loader: one best-fit packer over conversations, with masks, crop or pad, exact resume."""
import pytest
import torch

from nanochat.dataloader import build_conversation_loader
from nanochat.tasks.common import Task
from nanochat.tokenizer import Tokenizer


class Chats(Task):
    """Toy conversations whose every part is written with one letter, so a target's origin is readable:
    U user, A assistant text, P the tool call, O the tool's output; conversation i has i+1 of each."""
    name = "chats"

    def __init__(self, n=40, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def num_examples(self):
        return self.n

    def get_example(self, index):
        k = index % 7 + 1
        return {"messages": [
            {"role": "system", "content": "S" * k},
            {"role": "user", "content": "U" * k},
            {"role": "assistant", "content": [{"type": "text", "text": "A" * k}, {"type": "python", "text": "P" * k},
                                              {"type": "python_output", "text": "O" * k},
                                              {"type": "text", "text": "a" * k}]}]}


@pytest.fixture
def tokenizer():
    return Tokenizer.bytes_only()


def supervised_text(tokenizer, targets) -> str:
    """Everything the loss is computed on, decoded (specials included)."""
    return tokenizer.decode([t for t in targets.flatten().tolist() if t != -1])


@pytest.mark.parametrize("policy", ["crop", "pad"])
def test_only_what_the_assistant_writes_is_learned(tokenizer, policy):
    loader = build_conversation_loader(tokenizer, Chats(), B=4, T=64, policy=policy)
    bos = tokenizer.get_bos_token_id()
    for _, (inputs, targets) in zip(range(5), loader):
        assert (inputs[:, 0] == bos).all()  # every row starts a conversation
        learned = supervised_text(tokenizer, targets)
        assert "A" in learned and "P" in learned and "<|assistant_end|>" in learned
        for never in ("U", "S", "O", "<|user_start|>", "<|output_start|>", "<|bos|>"):
            assert never not in learned, (never, learned)  # user, system, tool output, framing


def test_pad_keeps_conversations_whole_and_crop_fills_rows(tokenizer):
    padded = build_conversation_loader(tokenizer, Chats(), B=4, T=64, policy="pad")
    cropped = build_conversation_loader(tokenizer, Chats(), B=4, T=64, policy="crop")
    for _ in range(6):
        next(padded), next(cropped)
    assert cropped.stats.utilisation == 1.0 and cropped.stats.cropped_tokens > 0
    assert padded.stats.cropped_tokens == 0 and 0 < padded.stats.padding_fraction < 0.5
    for row in padded.layout:  # every piece of a padded row is a whole conversation
        assert all(piece.length == piece.doc_length for piece in row)
    _, targets = next(padded)
    assert (targets[:, -1] == -1).any()  # padding at the end of some row is never learned


def test_a_conversation_longer_than_a_row_is_dropped_and_counted_when_padding(tokenizer):
    loader = build_conversation_loader(tokenizer, Chats(), B=2, T=40, policy="pad")
    for _ in range(10):
        next(loader)
    too_long = sum(len(tokenizer.render_conversation(Chats()[i], 10**9)[0]) > 41 for i in range(40))
    assert too_long > 0 and loader.stats.dropped > 0 and loader.stats.cropped_tokens == 0
    assert all(piece.doc_length <= 41 for row in loader.layout for piece in row)


def test_resume_gives_the_same_batches(tokenizer):
    first = build_conversation_loader(tokenizer, Chats(), B=3, T=50, policy="pad", buffer_size=8)
    for _ in range(4):
        next(first)
    state = first.state_dict()
    expected = [next(first) for _ in range(6)]  # across an epoch boundary: 40 conversations
    resumed = build_conversation_loader(tokenizer, Chats(), B=3, T=50, policy="pad", buffer_size=8, state=state)
    for (a_in, a_t), (b_in, b_t) in zip(expected, (next(resumed) for _ in range(6))):
        assert torch.equal(a_in, b_in) and torch.equal(a_t, b_t)
    with pytest.raises(ValueError, match="policy"):
        build_conversation_loader(tokenizer, Chats(), B=3, T=50, policy="crop", buffer_size=8, state=state)


def test_ranks_read_disjoint_conversations_that_cover_the_task(tokenizer):
    ids = set()
    for rank in range(2):
        loader = build_conversation_loader(tokenizer, Chats(n=30), B=1, T=200, policy="pad", loop=False,
                                           rank=rank, world_size=2, buffer_size=4)
        mine = {piece.doc[1] for _ in loader for row in loader.layout for piece in row}
        assert all(i % 2 == rank for i in mine) and not (ids & mine)
        ids |= mine
    assert ids == set(range(30))
