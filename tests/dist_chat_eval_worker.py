"""One rank of the distributed chat-evaluation test: grade the guessing model on ARC-Easy."""
import json
import sys

from chat_models import GuessingModel

from nanochat.common import destroy_distributed, init_distributed
from nanochat.evaluation.chat import evaluate_task
from nanochat.tasks.arc import ARC
from nanochat.tokenizer import Tokenizer


def main(out_path: str, max_problems: int):
    info = init_distributed("cpu", timeout_s=120)
    tokenizer = Tokenizer.bytes_only()
    result = evaluate_task(GuessingModel(tokenizer), tokenizer, ARC("ARC-Easy", "test"), "cpu",
                           max_problems=max_problems)
    if info.rank == 0:
        with open(out_path, "w") as f:
            json.dump({"correct": result.correct, "total": result.total}, f)
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
