"""GSM8K: grade-school maths word problems, answered step by step with a calculator.

Repo openai/gsm8k (config main); a row is {question, answer}. The reference answer
annotates every calculation as <<48/2=24>> and ends with "#### 72". We turn each
annotation into a tool call, so the model learns to write <|python_start|>48/2<|python_end|>
and to read the result the engine feeds back, <|output_start|>24<|output_end|>. A
completion is right when the number after its last "####" equals the reference's.
"""
import re

from nanochat.tasks.common import Task, read_parquet_rows

REPO = "openai/gsm8k"
CALCULATION = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
FINAL_ANSWER = re.compile(r"####\s*(-?[0-9][0-9,]*(?:\.[0-9]+)?)")


def answer_parts(answer: str) -> list[dict]:
    """The reference answer as text, python (the expression) and python_output (its value) parts."""
    parts, last = [], 0
    for m in CALCULATION.finditer(answer):
        parts.append({"type": "text", "text": answer[last:m.start()]})
        parts.append({"type": "python", "text": m.group(1)})
        parts.append({"type": "python_output", "text": m.group(2)})
        last = m.end()
    parts.append({"type": "text", "text": answer[last:]})
    return [part for part in parts if part["text"]]


def final_number(text: str) -> str | None:
    """The number after the last '####', without thousands separators; None if there is none."""
    found = FINAL_ANSWER.findall(text)
    return found[-1].replace(",", "") if found else None


class GSM8K(Task):
    name = "GSM8K"

    def __init__(self, split: str, **kwargs):
        super().__init__(**kwargs)
        if split not in ("train", "test"):
            raise ValueError(f"GSM8K split must be 'train' or 'test', got {split!r}")
        self.rows = read_parquet_rows(REPO, [f"main/{split}-00000-of-00001.parquet"])

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        return {"messages": [{"role": "user", "content": row["question"]},
                             {"role": "assistant", "content": answer_parts(row["answer"])}]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        reference = "".join(part["text"] for part in conversation["messages"][-1]["content"])
        answer = final_number(completion)
        return answer is not None and answer == final_number(reference)
