"""HumanEval: 164 Python functions to complete, checked by running their unit tests.

Repo openai/openai_humaneval; a row is {task_id, prompt (signature + docstring),
canonical_solution (the body), test (a check(candidate) function), entry_point}. The user
gives the prompt; the reference reply is the whole function in a code block. A completion
is right when its first fenced code block (or the whole reply, if it has none), after the
prompt's imports, passes the task's tests in the sandbox (nanochat.execution).
"""
import re
import sys

from nanochat.execution import execute_code
from nanochat.tasks.common import Task, read_parquet_rows

REPO = "openai/openai_humaneval"
FENCED = re.compile(r"```(?:python|py)?[^\n]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    """The first fenced code block of a reply, or the reply itself when it has none."""
    m = FENCED.search(completion)
    return m.group(1) if m else completion


def imports_of(prompt: str) -> str:
    """The prompt's import lines: a reply that rewrites the function often leaves them out."""
    return "\n".join(line for line in prompt.splitlines() if line.startswith(("import ", "from ")))


class HumanEval(Task):
    name = "HumanEval"

    def __init__(self, timeout: float = 5.0, **kwargs):
        super().__init__(**kwargs)
        self.timeout = timeout
        self.rows = read_parquet_rows(REPO, ["openai_humaneval/test-00000-of-00001.parquet"])

    def num_examples(self) -> int:
        return len(self.rows)

    def get_example(self, index: int) -> dict:
        row = self.rows[index]
        solution = f"```python\n{row['prompt']}{row['canonical_solution']}```"
        return {"messages": [{"role": "user", "content": row["prompt"]},
                             {"role": "assistant", "content": solution}],
                "test": row["test"], "entry_point": row["entry_point"], "task_id": row["task_id"]}

    def program(self, conversation: dict, completion: str) -> str:
        """What runs in the sandbox: imports, the completed function, its tests, the call that checks it."""
        return "\n\n".join([imports_of(conversation["messages"][0]["content"]), extract_code(completion),
                            conversation["test"], f"check({conversation['entry_point']})"])

    def evaluate(self, conversation: dict, completion: str) -> bool:
        # strict on Linux: a model's code runs in the namespaces or not at all
        program = self.program(conversation, completion)
        return execute_code(program, timeout=self.timeout, strict=sys.platform.startswith("linux")).success
