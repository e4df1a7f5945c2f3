"""What every chat task shares: a dataset as conversations, and a way to grade a reply.

A Task is a list of conversations, {"messages": [{"role": "user", "content": ...},
{"role": "assistant", "content": ...}]}, where the last assistant message is the reference
answer. Content is a string, or for an assistant a list of parts: {"type": "text"},
{"type": "python"} (a tool call the model writes) and {"type": "python_output"} (what the
tool answered, which the model reads but is never trained to write).

    task = GSM8K("test")[:100]          # slicing gives a view: start, stop, step
    conversation = task[0]
    task.evaluate(conversation, "... #### 72")   -> True / False
    task.reward(conversation, "... #### 72")     -> 1.0 / 0.0, what RL maximises

eval_type says how a chat model is graded on it (evaluation/chat.py): "categorical" tasks
are multiple choice, scored by which allowed letter the model puts most probability on;
"generative" tasks let the model write a reply, which evaluate() checks.

Task data comes through nanochat.hub from the Hugging Face dataset repos' own files (or the
local mirror that serves the data pack in that layout), cached under base_dir/task_data/.
"""
import random

LETTERS = "ABCDEFGHIJ"


class Task:
    """A dataset as conversations; index it, slice it, grade a completion."""
    eval_type = "generative"
    name = "task"

    def __init__(self, start: int = 0, stop: int | None = None, step: int = 1):
        self.start, self.stop, self.step = start, stop, step

    def num_examples(self) -> int:
        """How many conversations the whole dataset has (before slicing)."""
        raise NotImplementedError

    def get_example(self, index: int) -> dict:
        """Conversation number `index` of the whole dataset."""
        raise NotImplementedError

    def evaluate(self, conversation: dict, completion: str) -> bool:
        """Is the assistant's completion (decoded text) a right answer to this conversation?"""
        raise NotImplementedError

    def reward(self, conversation: dict, completion: str) -> float:
        """What RL maximises: 1.0 for a right answer, 0.0 otherwise (a task may grade partially)."""
        return float(self.evaluate(conversation, completion))

    def _range(self) -> range:
        stop = self.num_examples() if self.stop is None else min(self.stop, self.num_examples())
        return range(self.start, stop, self.step)

    def __len__(self) -> int:
        return len(self._range())

    def __getitem__(self, index):
        if isinstance(index, slice):  # a view of a view: compose the ranges
            view = self._range()[index]
            sliced = object.__new__(type(self))
            sliced.__dict__.update(self.__dict__)
            sliced.start, sliced.stop, sliced.step = view.start, view.stop, view.step
            return sliced
        return self.get_example(self._range()[index])

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __repr__(self) -> str:
        return f"{self.name}[{len(self)} conversations]"


class TaskMixture(Task):
    """Several tasks as one, in a fixed shuffled order (seeded): the rows of a training mix.

    Listing a task twice includes its conversations twice (oversampling). Shuffling keeps
    any one task from arriving as a long run of the same kind of example.
    """
    name = "mixture"

    def __init__(self, tasks: list[Task], seed: int = 42, **kwargs):
        super().__init__(**kwargs)
        self.tasks = tasks
        self.index = [(t, i) for t, task in enumerate(tasks) for i in range(len(task))]
        random.Random(seed).shuffle(self.index)

    def num_examples(self) -> int:
        return len(self.index)

    def get_example(self, index: int) -> dict:
        t, i = self.index[index]
        return self.tasks[t][i]

    def task_of(self, index: int) -> Task:
        """Which task the conversation at `index` (of this view) came from."""
        return self.tasks[self.index[self._range()[index]][0]]


class TaskSequence(Task):
    """Several tasks one after another, unshuffled: a curriculum."""
    name = "sequence"

    def __init__(self, tasks: list[Task], **kwargs):
        super().__init__(**kwargs)
        self.tasks = tasks
        self.offsets = [0]
        for task in tasks:
            self.offsets.append(self.offsets[-1] + len(task))

    def num_examples(self) -> int:
        return self.offsets[-1]

    def get_example(self, index: int) -> dict:
        for t, task in enumerate(self.tasks):
            if index < self.offsets[t + 1]:
                return task[index - self.offsets[t]]
        raise IndexError(index)


def render_multiple_choice(question: str, choices: list[str], letters: str) -> str:
    """A multiple-choice question as the user sees it; the answer is one letter.

    Each choice is written "- text=A", the letter right after "=" with no space. That is on
    purpose: the assistant's answer is the letter alone at the start of its turn, which
    tokenizes as the bare letter "A", whereas " A" (with a space) is a different token. With
    no space here, the letter the model must say is, token for token, the one it read next
    to the right choice. A small model has to be taught this format explicitly: it cannot
    infer from the question that one letter, and nothing else, is the expected reply.
    """
    lines = [f"Multiple choice question: {question}", ""]
    lines += [f"- {choice}={letter}" for letter, choice in zip(letters, choices)]
    lines += ["", "Answer with the letter of the correct choice only."]
    return "\n".join(lines)


class MultipleChoiceTask(Task):
    """A categorical task: the reference reply is one letter; a completion is right if it is that letter."""
    eval_type = "categorical"

    def conversation(self, question: str, choices: list[str], answer_index: int, **extra) -> dict:
        letters = LETTERS[:len(choices)]
        return {"messages": [{"role": "user", "content": render_multiple_choice(question, choices, letters)},
                             {"role": "assistant", "content": letters[answer_index]}],
                "letters": list(letters), **extra}

    def evaluate(self, conversation: dict, completion: str) -> bool:
        return completion.strip() == conversation["messages"][-1]["content"]


def read_parquet_rows(repo: str, files: list[str]) -> list[dict]:
    """All rows of some parquet files of a Hugging Face dataset repo, fetched through the hub, in order."""
    import pyarrow.parquet as pq

    from nanochat import hub

    rows = []
    for filename in files:
        rows += pq.read_table(hub.download_dataset_file(repo, filename)).to_pylist()
    return rows
