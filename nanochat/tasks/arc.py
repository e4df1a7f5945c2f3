"""ARC (AI2 Reasoning Challenge): grade-school science questions, multiple choice.

Two subsets: ARC-Easy and ARC-Challenge (the questions simple retrieval and word
co-occurrence got wrong). Repo allenai/ai2_arc; a row is {id, question, choices: {text,
label}, answerKey}. Labels are usually A-D, in a few rows 1-4 or 3-5 choices: we letter
the choices A, B, C... by position and find the answer by its label.
"""
from nanochat.tasks.common import MultipleChoiceTask, read_parquet_rows

REPO = "allenai/ai2_arc"
SUBSETS = ("ARC-Easy", "ARC-Challenge")
SPLITS = ("train", "validation", "test")


class ARC(MultipleChoiceTask):
    def __init__(self, subset: str, split: str, **kwargs):
        super().__init__(**kwargs)
        if subset not in SUBSETS or split not in SPLITS:
            raise ValueError(f"ARC subset must be one of {SUBSETS} and split one of {SPLITS}, got {subset!r}, {split!r}")
        self.name = subset
        self.rows = read_parquet_rows(REPO, [f"{subset}/{split}-00000-of-00001.parquet"])

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        labels = row["choices"]["label"]
        return self.conversation(row["question"], row["choices"]["text"], labels.index(row["answerKey"]), id=row["id"])
