"""MMLU: 57 subjects from elementary maths to law, four choices each.

Repo cais/mmlu. The `all` config has dev (5 per subject, the classic few-shot examples),
validation and test; a row is {question, subject, choices[4], answer: 0-3}. The
`auxiliary_train` config (99,842 rows from other multiple-choice datasets, each nested in a
`train` column) is what midtraining uses to teach the format. The course's offline data
pack has no auxiliary_train: its mirror serves ARC/OpenBookQA train rows in that layout
instead, and every number that depends on it says "stand-in".
"""
from nanochat.tasks.common import MultipleChoiceTask, read_parquet_rows

REPO = "cais/mmlu"
FILES = {("all", split): [f"all/{split}-00000-of-00001.parquet"] for split in ("dev", "validation", "test")}
FILES["auxiliary_train", "train"] = ["auxiliary_train/train-00000-of-00001.parquet"]


class MMLU(MultipleChoiceTask):
    def __init__(self, subset: str, split: str, **kwargs):
        super().__init__(**kwargs)
        if (subset, split) not in FILES:
            raise ValueError(f"MMLU has {sorted(FILES)} (subset, split), not {(subset, split)}")
        self.name = "MMLU" if subset == "all" else "MMLU-auxiliary_train"
        rows = read_parquet_rows(REPO, FILES[subset, split])
        self.rows = [row["train"] if "train" in row else row for row in rows]  # auxiliary_train nests its rows

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        return self.conversation(row["question"], row["choices"], row["answer"], subject=row["subject"])
