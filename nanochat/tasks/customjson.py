"""Conversations from a JSONL file: one conversation per line, a list of {role, content}
messages (or {"messages": [...]}). With no path, nanochat's identity conversations (who the
model is, who made it), fetched from NANOCHAT_IDENTITY_URL.
"""
import json
import os

from nanochat import common, hub
from nanochat.tasks.common import Task


def identity_path() -> str:
    """nanochat's identity conversations, downloaded once to base_dir/task_data/."""
    return hub.download(hub.identity_url(), common.task_data_dir("identity_conversations.jsonl"))


class CustomJSON(Task):
    def __init__(self, path: str | None = None, **kwargs):
        super().__init__(**kwargs)
        path = path or identity_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no conversations file {path}: give a JSONL with one list of messages per line")
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.conversations = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                item = json.loads(line)
                messages = item["messages"] if isinstance(item, dict) else item
                if not messages or any(not {"role", "content"} <= set(m) for m in messages):
                    raise ValueError(f"{path}:{number}: expected a list of {{role, content}} messages")
                self.conversations.append({"messages": messages})

    def num_examples(self) -> int:
        return len(self.conversations)

    def get_example(self, index: int) -> dict:
        return self.conversations[index]
