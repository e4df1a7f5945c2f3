"""One rank of the distributed loader test (tests/test_dataloader.py starts two with torchrun).

Each rank reads its share of the shards in NANOCHAT_BASE_DIR with the real loaders and
recovers, from the tokens alone, which documents it saw (every test document begins with
a tag like "[val 2.13]"). Rank 0 gathers all ranks' answers and writes them, with its
own verdicts, to the JSON file named on the command line.
"""
import json
import re
import sys

import torch.distributed as dist

from nanochat.common import destroy_distributed, init_distributed
from nanochat.dataloader import DocumentStream, build_train_loader, build_val_loader
from nanochat.tokenizer import Tokenizer

TAG = re.compile(r"^\[(\w+) (\d+)\.(\d+)\]")


def tags_in(inputs, tokenizer) -> list[str]:
    """The tag of every document whose start (<|bos|> + tag) is inside these rows."""
    bos = tokenizer.get_bos_token_id()
    tags = []
    for row in inputs.tolist():
        starts = [i for i, t in enumerate(row) if t == bos]
        for a, b in zip(starts, starts[1:] + [len(row)]):
            match = TAG.match(tokenizer.decode(row[a + 1:b]))
            if match:
                tags.append(match.group(0))
    return tags


def main(out_path: str, B: int = 2, T: int = 63, train_batches: int = 6):
    info = init_distributed("cpu", timeout_s=60)
    tokenizer = Tokenizer.bytes_only()
    # every val document this rank reads, straight from its document stream
    stream = DocumentStream(tokenizer, "val", info.rank, info.world_size)
    read_tags = [TAG.match(tokenizer.decode(ids[1:])).group(0) for _, ids, _ in stream]
    # the val loader: which documents made it into its rows
    val = build_val_loader(tokenizer, B, T, rank=info.rank, world_size=info.world_size)
    val_tags = [tag for inputs, _ in val for tag in tags_in(inputs, tokenizer)]
    # train: the first few batches
    train = build_train_loader(tokenizer, B, T, rank=info.rank, world_size=info.world_size)
    train_tags = [tag for _, (inputs, _) in zip(range(train_batches), train) for tag in tags_in(inputs, tokenizer)]
    mine = {"rank": info.rank, "read_tags": read_tags, "val_tags": val_tags,
            "train_tags": train_tags, "val_batches": val.stats.batches}
    everyone = [None] * info.world_size
    dist.all_gather_object(everyone, mine)
    if info.rank == 0:
        with open(out_path, "w") as f:
            json.dump(everyone, f)
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
