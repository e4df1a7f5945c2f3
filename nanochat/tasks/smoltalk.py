"""SmolTalk: general chat conversations (HuggingFaceTB/smol-smoltalk, ~460K train, 24K test).

A row is {messages: [{role, content}, ...]} (a system message may come first; the
tokenizer folds it into the first user turn). Not graded: it teaches the model to hold a
conversation. The course's offline data pack has no SmolTalk; its mirror serves the
pack's GPTeacher conversations in smol-smoltalk's layout instead, so anything trained on
it offline is trained on a stand-in and says so.
"""
from nanochat.tasks.common import Task, read_parquet_rows

REPO = "HuggingFaceTB/smol-smoltalk"
FILES = {"train": [f"data/train-{i:05d}-of-00004.parquet" for i in range(4)],
         "test": ["data/test-00000-of-00001.parquet"]}


class SmolTalk(Task):
    name = "SmolTalk"

    def __init__(self, split: str, **kwargs):
        super().__init__(**kwargs)
        if split not in FILES:
            raise ValueError(f"SmolTalk split must be one of {sorted(FILES)}, got {split!r}")
        self.rows = read_parquet_rows(REPO, FILES[split])

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in self.rows[index]["messages"]]}
