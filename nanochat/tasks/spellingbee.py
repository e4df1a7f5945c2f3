"""Spelling tasks made from an English word list: what a tokenizer hides from the model.

A model reads tokens, not letters: " strawberry" may be two or three tokens, and which
letters they hold is something it must learn. Two synthetic tasks teach and test that:

SpellingBee    "How many r are in strawberry?": the assistant spells the word out, counts
               as it goes, checks with the calculator ('strawberry'.count('r')), and ends
               with "#### 3". Graded by the final number; a reward a small model can
               reach, which makes it the course's RL task on a laptop.
SimpleSpelling "Spell the word: apple" -> "apple:a,p,p,l,e". Graded by exact match.

Examples are generated from their index with a seeded generator, so a task of any size
costs nothing to hold, and train and test draw from different seeds. The word list
(dwyl/english-words' words_alpha.txt, 370K words) comes from NANOCHAT_WORDS_URL.
"""
import random

from nanochat import common, hub
from nanochat.tasks.common import Task
from nanochat.tasks.gsm8k import final_number

QUESTIONS = [
    "How many {letter} are in the word {word}?",
    "How many times does the letter {letter} appear in \"{word}\"?",
    "Count the letter '{letter}' in {word}.",
    "In the word {word}, how many {letter}s are there?",
    "how many {letter} in {word}",
]
SEEDS = {"train": 0, "test": 10_000_000}  # far apart: the two splits never share an example


def load_words(min_length: int = 3, max_length: int = 12) -> list[str]:
    """The word list, downloaded once to base_dir/task_data/, words of a sensible length only."""
    path = hub.download(hub.words_url(), common.task_data_dir("words_alpha.txt"))
    with open(path, encoding="utf-8") as f:
        return [w for w in (line.strip() for line in f) if min_length <= len(w) <= max_length and w.isalpha()]


class _WordTask(Task):
    def __init__(self, split: str = "train", size: int = 10_000, **kwargs):
        super().__init__(**kwargs)
        if split not in SEEDS:
            raise ValueError(f"split must be one of {sorted(SEEDS)}, got {split!r}")
        self.split, self.size = split, size
        self.words = load_words()

    def num_examples(self) -> int:
        return self.size

    def rng(self, index: int) -> random.Random:
        return random.Random(SEEDS[self.split] + index)


class SpellingBee(_WordTask):
    name = "SpellingBee"

    def get_example(self, index: int) -> dict:
        rng = self.rng(index)
        word = rng.choice(self.words)
        # mostly a letter of the word; sometimes one it lacks, so 0 is an answer too
        letter = rng.choice(word) if rng.random() < 0.9 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        count = word.count(letter)
        running, spelled = 0, []
        for ch in word:
            running += ch == letter
            spelled.append(f"{ch}{f' ({running})' if ch == letter else ''}")
        question = rng.choice(QUESTIONS).format(letter=letter, word=word)
        answer = [
            {"type": "text", "text": f"Spelling out {word}: {', '.join(spelled)}. "
                                     f"That makes {count}. Let me check with the calculator: "},
            {"type": "python", "text": f"'{word}'.count('{letter}')"},
            {"type": "python_output", "text": str(count)},
            {"type": "text", "text": f"\nThe letter {letter} appears {count} time{'s' * (count != 1)} in {word}.\n#### {count}"},
        ]
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "word": word, "letter": letter, "count": count}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return final_number(completion) == str(conversation["count"])


class SimpleSpelling(_WordTask):
    name = "SimpleSpelling"

    def get_example(self, index: int) -> dict:
        word = self.rng(index).choice(self.words)
        return {"messages": [{"role": "user", "content": f"Spell the word: {word}"},
                             {"role": "assistant", "content": f"{word}:{','.join(word)}"}]}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return completion.strip() == conversation["messages"][-1]["content"]
