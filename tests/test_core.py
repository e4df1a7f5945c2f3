"""CORE: prompts, continuation spans, scoring, the bundle, ranks. Stand-in models and tokenizers only."""
import json
import os
import random
import re
import sys
from os.path import commonprefix
from types import SimpleNamespace

import pytest
from torchrun import run_two_ranks
import torch
import torch.nn as nn
import yaml

from nanochat.evaluation import core

# ---------------------------------------------------------------------------------------------
# Stand-ins for nanochat.tokenizer.Tokenizer and nanochat.gpt.GPT


class ByteTokenizer:
    """Token ids are the UTF-8 bytes of the text; <|bos|> is 256."""

    BOS = 256

    def get_bos_token_id(self):
        return self.BOS

    def get_vocab_size(self):
        return 257

    def encode(self, text, prepend=None, append=None, num_threads=8):
        if isinstance(text, list):
            return [self.encode(t, prepend, append) for t in text]
        special = lambda tok: self.BOS if tok == "<|bos|>" else tok  # noqa: E731
        head = [special(prepend)] if prepend is not None else []
        tail = [special(append)] if append is not None else []
        return head + list(text.encode("utf-8")) + tail

    def decode(self, ids):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class WordTokenizer(ByteTokenizer):
    """Cuts text like GPT-style BPE does at word level: a leading space sticks to the next word.

    So "is " is ["is", " "] but "is Paris" is ["is", " Paris"]: the continuation's tokens
    are not the context's tokens followed by more, which is what the span finding must handle.
    """

    def __init__(self):
        self.vocab = {"<|bos|>": 0}

    def get_bos_token_id(self):
        return 0

    def encode(self, text, prepend=None, append=None, num_threads=8):
        if isinstance(text, list):
            return [self.encode(t, prepend, append) for t in text]
        pieces = re.findall(r" ?[^\s]+|\s+", text)
        ids = [self.vocab.setdefault(piece, len(self.vocab)) for piece in pieces]
        return ([0] if prepend is not None else []) + ids

    def decode(self, ids):
        words = {i: piece for piece, i in self.vocab.items()}
        return "".join(words[i] for i in ids if i != 0)


class OracleModel(nn.Module):
    """Knows the gold texts: where a row so far is the start of one, it predicts its next token.

    Elsewhere its logits are flat. So it always prefers the gold answer, and is greedy-correct
    on gold continuations, but only if the prompts we build are the prompts it knows.
    """

    def __init__(self, gold_rows, vocab_size=257, sequence_len=100_000):
        super().__init__()
        self.gold_rows, self.vocab_size = gold_rows, vocab_size
        self.config = SimpleNamespace(sequence_len=sequence_len)

    def forward(self, idx):
        B, T = idx.shape
        logits = torch.zeros(B, T, self.vocab_size)
        for b in range(B):
            row = idx[b].tolist()
            gold = max(self.gold_rows, key=lambda g: len(commonprefix([row, g])))
            shared = len(commonprefix([row, gold]))
            for t in range(min(shared, len(gold) - 1)):  # row[:t+1] == gold[:t+1]: next is gold[t+1]
                logits[b, t, gold[t + 1]] = 30.0
        return logits


class RandomBigramModel(nn.Module):
    """A random table of next-token logits per current token: a model that knows nothing."""

    def __init__(self, vocab_size=257, sequence_len=100_000, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.table = nn.Parameter(torch.randn(vocab_size, vocab_size, generator=generator))
        self.config = SimpleNamespace(sequence_len=sequence_len)

    def forward(self, idx):
        return self.table[idx]  # (B, T, V)


def gold_rows(tokenizer, task_meta, data, gold_of=lambda item: item.get("gold", 0)):
    """The token rows of each item's prompt with the answer gold_of(item) (few-shot included)."""
    rows = []
    for index, item in enumerate(data):
        fewshot = core.fewshot_examples(data, index, task_meta["num_fewshot"])
        prompts = core.RENDERERS[task_meta["task_type"]](item, fewshot, task_meta["continuation_delimiter"])
        chosen = prompts[1] if task_meta["task_type"] == "language_modeling" else prompts[gold_of(item)]
        rows.append(tokenizer.encode(chosen, prepend=tokenizer.get_bos_token_id()))
    return rows


# ---------------------------------------------------------------------------------------------
# Fixtures: a few hand-written items per task type

MC_DATA = [
    {"query": "Question: What color is a clear daytime sky?", "choices": ["blue", "green", "red"], "gold": 0},
    {"query": "Question: How many legs does a spider have?\n", "choices": ["six", "eight"], "gold": 1},
    {"query": "Question: Which of these is a fruit?", "choices": ["carrot", "apple", "potato", "onion"], "gold": 1},
    {"query": "Question: At what temperature does water freeze?", "choices": ["0 C", "100 C", "50 C"], "gold": 0},
    {"query": "Question: What do bees make?", "choices": ["milk", "silk", "honey"], "gold": 2},
]
SCHEMA_DATA = [
    {"context_options": ["The trophy did not fit in the suitcase because the trophy",
                         "The trophy did not fit in the suitcase because the suitcase"],
     "continuation": "was too big.", "gold": 0},
    {"context_options": ["The councilmen refused the demonstrators a permit because the councilmen",
                         "The councilmen refused the demonstrators a permit because the demonstrators"],
     "continuation": "advocated violence.", "gold": 1},
    {"context_options": ["Sarah was a better surgeon than Maria so Sarah",
                         "Sarah was a better surgeon than Maria so Maria"],
     "continuation": "got the harder cases.", "gold": 0},
]
LM_DATA = [
    {"context": "The capital of France is", "continuation": "Paris"},
    {"context": "The country of Novosibirsk is", "continuation": "Russia"},
    {"context": "The sport played by Shane Victorino is", "continuation": "baseball"},
    {"context": "The native language of Daniel Schneidermann is", "continuation": " French"},
]
MC = {"label": "mc", "task_type": "multiple_choice", "num_fewshot": 2, "continuation_delimiter": "\nAnswer: "}
SCHEMA = {"label": "schema", "task_type": "schema", "num_fewshot": 1, "continuation_delimiter": " "}
LM = {"label": "lm", "task_type": "language_modeling", "num_fewshot": 2, "continuation_delimiter": " "}
FIXTURES = [(MC, MC_DATA), (SCHEMA, SCHEMA_DATA), (LM, LM_DATA)]


def random_mc_items(n, seed=0):
    """n four-choice questions made of random words, the gold answer a random one of them."""
    rng = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    return [{"query": f"Question {i}: {' '.join(rng.choices(words, k=5))}?",
             "choices": [" ".join(rng.choices(words, k=2)) for _ in range(4)], "gold": rng.randrange(4)}
            for i in range(n)]


def spans_as_text(tokenizer, prepared):
    return [tokenizer.decode(row[start:end]) for row, (start, end) in zip(prepared.rows, prepared.spans)]


# ---------------------------------------------------------------------------------------------
# Few-shot selection and item order


def test_fewshot_is_deterministic_and_never_shows_the_item_itself():
    data = [{"id": i} for i in range(6)]
    for index in range(6):
        shots = core.fewshot_examples(data, index, 5)
        assert sorted(s["id"] for s in shots) == [i for i in range(6) if i != index]
        assert core.fewshot_examples(data, index, 3) == core.fewshot_examples(data, index, 3)
    big = [{"id": i} for i in range(1000)]
    picks = [tuple(s["id"] for s in core.fewshot_examples(big, i, 3)) for i in range(20)]
    assert len(set(picks)) == 20  # seeded per item: different items, different examples
    assert core.fewshot_examples(data, 0, 0) == [] and len(core.fewshot_examples(data[:2], 0, 10)) == 1


def test_item_order_is_a_fixed_shuffle_and_max_per_task_takes_its_head():
    order = core.item_order(100)
    assert sorted(order) == list(range(100)) and order != list(range(100))
    assert core.item_order(100) == order and core.item_order(100, 10) == order[:10]


# ---------------------------------------------------------------------------------------------
# Rendering: the exact prompt strings


def test_multiple_choice_prompts():
    prompts = core.render_multiple_choice(MC_DATA[1], [MC_DATA[0], MC_DATA[4]], "\nAnswer: ")
    shots = ("Question: What color is a clear daytime sky?\nAnswer: blue\n\n"
             "Question: What do bees make?\nAnswer: honey\n\n")
    assert prompts == [shots + "Question: How many legs does a spider have?\nAnswer: six",
                       shots + "Question: How many legs does a spider have?\nAnswer: eight"]
    # the delimiter alone sets the spacing, whatever whitespace the data carries
    messy = {"query": "Q: 2+2?\nAnswer: ", "choices": ["4"], "gold": 0}
    assert core.render_multiple_choice(messy, [], " ") == ["Q: 2+2?\nAnswer: 4"]


def test_schema_prompts():
    prompts = core.render_schema(SCHEMA_DATA[0], [SCHEMA_DATA[2]], " ")
    shot = "Sarah was a better surgeon than Maria so Sarah got the harder cases.\n\n"
    assert prompts == [shot + "The trophy did not fit in the suitcase because the trophy was too big.",
                       shot + "The trophy did not fit in the suitcase because the suitcase was too big."]


def test_language_modeling_prompts():
    assert core.render_language_modeling(LM_DATA[3], [LM_DATA[0]], " ") == [
        "The capital of France is Paris\n\nThe native language of Daniel Schneidermann is ",
        "The capital of France is Paris\n\nThe native language of Daniel Schneidermann is French",
    ]
    messy = {"context": "Q: who?", "continuation": "Byrd "}
    assert core.render_language_modeling(messy, [], "\nAnswer: ")[1] == "Q: who?\nAnswer: Byrd"


# ---------------------------------------------------------------------------------------------
# Where the continuation tokens are


def test_spans_with_byte_tokens():
    tok = ByteTokenizer()
    mc = core.prepare_item(tok, dict(MC, num_fewshot=0), MC_DATA, 2, max_len=10_000)
    assert spans_as_text(tok, mc) == ["carrot", "apple", "potato", "onion"] and mc.gold == 1
    assert all(row[0] == tok.BOS for row in mc.rows)
    assert tok.decode(mc.rows[1]) == "Question: Which of these is a fruit?\nAnswer: apple"

    schema = core.prepare_item(tok, dict(SCHEMA, num_fewshot=0), SCHEMA_DATA, 0, max_len=10_000)
    assert spans_as_text(tok, schema) == [" was too big.", " was too big."]
    assert [tok.decode(r) for r in schema.rows] == [o + " was too big." for o in SCHEMA_DATA[0]["context_options"]]

    lm = core.prepare_item(tok, dict(LM, num_fewshot=0), LM_DATA, 3, max_len=10_000)
    assert len(lm.rows) == 1 and spans_as_text(tok, lm) == ["French"]


def test_spans_when_the_tokenizer_merges_the_space_into_the_answer():
    tok = WordTokenizer()
    lm = core.prepare_item(tok, dict(LM, num_fewshot=0), LM_DATA, 0, max_len=10_000)
    assert spans_as_text(tok, lm) == [" Paris"]  # "is " -> [is][ ], but "is Paris" -> [is][ Paris]
    mc = core.prepare_item(tok, dict(MC, num_fewshot=0, continuation_delimiter=" "), MC_DATA, 1, max_len=10_000)
    assert spans_as_text(tok, mc) == [" six", " eight"]


def test_spans_start_where_the_options_differ_and_are_never_empty():
    tok = ByteTokenizer()
    meta = {"task_type": "multiple_choice", "num_fewshot": 0, "continuation_delimiter": " "}
    shared_start = core.prepare_item(tok, meta, [{"query": "Q:", "choices": ["sixty", "seventy"], "gold": 0}], 0, 10_000)
    assert spans_as_text(tok, shared_start) == ["ixty", "eventy"]  # a shared "s" tells nothing apart
    nested = core.prepare_item(tok, meta, [{"query": "Q:", "choices": ["Paris", "Paris, France"], "gold": 0}], 0, 10_000)
    assert spans_as_text(tok, nested) == ["s", "s, France"]


def test_long_prompts_are_cropped_from_the_left_keeping_the_continuation():
    tok = ByteTokenizer()
    full = core.prepare_item(tok, MC, MC_DATA, 1, max_len=10_000)
    cropped = core.prepare_item(tok, MC, MC_DATA, 1, max_len=60)
    assert max(len(r) for r in full.rows) > 60 and all(len(r) <= 60 for r in cropped.rows)
    assert spans_as_text(tok, cropped) == spans_as_text(tok, full) == ["six", "eight"]
    assert all(f[-len(c):] == c for f, c in zip(full.rows, cropped.rows))  # the same tokens, the oldest gone


def test_unknown_task_type_is_named():
    with pytest.raises(ValueError, match="unknown task type 'generation'"):
        core.prepare_item(ByteTokenizer(), {"task_type": "generation"}, MC_DATA, 0, 100)


# ---------------------------------------------------------------------------------------------
# Scoring


@pytest.mark.parametrize("task_meta,data", FIXTURES, ids=["multiple_choice", "schema", "language_modeling"])
def test_an_oracle_scores_one_and_a_contrarian_zero(task_meta, data):
    tok = ByteTokenizer()
    oracle = OracleModel(gold_rows(tok, task_meta, data))
    accuracy = core.evaluate_task(oracle, tok, task_meta, data, "cpu")
    assert accuracy == 1.0 and core.centered_accuracy(accuracy, 0.25) == 1.0
    # the same model, but it learned a wrong answer for every item: it must get all of them wrong
    if task_meta["task_type"] == "language_modeling":
        wrong = [dict(item, continuation=item["continuation"].strip() + "x") for item in data]
        contrarian = OracleModel(gold_rows(tok, task_meta, wrong))
    else:
        options = "choices" if task_meta["task_type"] == "multiple_choice" else "context_options"
        contrarian = OracleModel(gold_rows(tok, task_meta, data, lambda item: (item["gold"] + 1) % len(item[options])))
    assert core.evaluate_task(contrarian, tok, task_meta, data, "cpu") == 0.0


def test_language_modeling_needs_every_token_greedy_correct():
    tok, meta = ByteTokenizer(), dict(LM, num_fewshot=0)
    almost = [dict(item, continuation=item["continuation"].strip()[:-1] + "#") for item in LM_DATA]
    assert core.evaluate_task(OracleModel(gold_rows(tok, meta, almost)), tok, meta, LM_DATA, "cpu") == 0.0
    assert core.evaluate_task(OracleModel(gold_rows(tok, meta, LM_DATA)), tok, meta, LM_DATA, "cpu") == 1.0


def test_a_random_model_is_no_better_than_guessing():
    data = random_mc_items(600)
    accuracy = core.evaluate_task(RandomBigramModel(), ByteTokenizer(), dict(MC, num_fewshot=0), data, "cpu")
    # 600 items at p=0.25: the centered score has a standard deviation of about 0.024
    assert abs(core.centered_accuracy(accuracy, 0.25)) < 0.1


def test_two_ranks_score_the_same_items_as_one():
    tok, model = ByteTokenizer(), RandomBigramModel(seed=1)
    data = random_mc_items(40)
    order = core.item_order(len(data), 30)
    alone = dict(zip(order, core.evaluate_items(model, tok, MC, data, "cpu", order)))
    assert 0 < sum(alone.values()) < 30
    for rank in range(2):
        mine = order[rank::2]
        assert dict(zip(mine, core.evaluate_items(model, tok, MC, data, "cpu", mine))) == {i: alone[i] for i in mine}


# ---------------------------------------------------------------------------------------------
# Whole bundles


def write_bundle(root, tasks, present):
    """A tiny eval bundle: core.yaml + eval_meta_data.csv + the jsonl of the `present` tasks."""
    entries = [{"label": label, "dataset_uri": f"cat/{label}.jsonl", "num_fewshot": [meta["num_fewshot"]],
                "icl_task_type": meta["task_type"], "continuation_delimiter": meta["continuation_delimiter"]}
               for label, (meta, _) in tasks.items()]
    os.makedirs(os.path.join(root, "eval_data", "cat"))
    with open(os.path.join(root, "core.yaml"), "w") as f:
        yaml.safe_dump({"icl_tasks": entries}, f)
    with open(os.path.join(root, "eval_meta_data.csv"), "w") as f:
        f.write("Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description\n")
        for label, (_, data) in tasks.items():
            f.write(f"{label},cat,x,0,{len(data)},{50 if label == 'schema' else 25},,\"a, task\"\n")
    for label in present:
        with open(os.path.join(root, "eval_data", "cat", f"{label}.jsonl"), "w") as f:
            f.writelines(json.dumps(item) + "\n" for item in tasks[label][1])
    return str(root)


def test_core_label_says_when_tasks_are_missing(tmp_path):
    tok = ByteTokenizer()
    tasks = {"mc": (MC, MC_DATA), "schema": (SCHEMA, SCHEMA_DATA)}
    oracle = OracleModel(gold_rows(tok, MC, MC_DATA) + gold_rows(tok, SCHEMA, SCHEMA_DATA))

    full = core.evaluate_core(oracle, tok, "cpu", bundle_dir=write_bundle(tmp_path / "a", tasks, ["mc", "schema"]))
    assert full["label"] == "CORE" and full["core"] == 1.0 and full["tasks_missing"] == []
    assert full["accuracy"] == {"mc": 1.0, "schema": 1.0}

    partial = core.evaluate_core(oracle, tok, "cpu", bundle_dir=write_bundle(tmp_path / "b", tasks, ["schema"]))
    assert partial["label"] == "CORE-1" and partial["tasks_missing"] == ["mc"] and partial["tasks_present"] == ["schema"]

    chosen = core.evaluate_core(oracle, tok, "cpu", bundle_dir=str(tmp_path / "a"), tasks=["mc"])
    assert chosen["label"] == "CORE-1"
    with pytest.raises(ValueError, match="unknown CORE task"):
        core.evaluate_core(oracle, tok, "cpu", bundle_dir=str(tmp_path / "a"), tasks=["mmlu"])


def test_random_baseline_centers_the_accuracy(tmp_path):
    tok = ByteTokenizer()
    right = gold_rows(tok, MC, MC_DATA)
    wrong = gold_rows(tok, MC, MC_DATA, lambda item: (item["gold"] + 1) % len(item["choices"]))
    half_oracle = OracleModel(right[:3] + wrong[3:])  # knows the answers to 3 of the 5 questions
    result = core.evaluate_core(half_oracle, tok, "cpu", bundle_dir=write_bundle(tmp_path, {"mc": (MC, MC_DATA)}, ["mc"]))
    accuracy = 3 / 5
    assert result["accuracy"]["mc"] == accuracy and result["centered"]["mc"] == pytest.approx((accuracy - 0.25) / 0.75)


def test_not_a_bundle_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_eval_bundle"):
        core.evaluate_core(RandomBigramModel(), ByteTokenizer(), "cpu", bundle_dir=str(tmp_path))


def test_the_real_bundle_is_core_20_without_squad_and_coqa(base_dir, data_pack):
    model = RandomBigramModel(sequence_len=512)  # shorter than many 10-shot prompts: cropping runs too
    result = core.evaluate_core(model, ByteTokenizer(), "cpu", max_per_task=4)  # downloads the bundle
    assert os.path.isfile(os.path.join(base_dir, "eval_bundle", "core.yaml"))
    assert result["label"] == "CORE-20" and sorted(result["tasks_missing"]) == ["coqa", "squad"]
    assert len(result["tasks_present"]) == len(result["accuracy"]) == 20
    assert all(a in (0, 0.25, 0.5, 0.75, 1) for a in result["accuracy"].values())  # 4 items each
    assert result["centered"]["boolq"] == pytest.approx((result["accuracy"]["boolq"] - 0.62) / 0.38)
    assert result["core"] == pytest.approx(sum(result["centered"].values()) / 20)


# ---------------------------------------------------------------------------------------------
# Under torchrun: 2 gloo ranks, all-reduced


def _distributed_worker(out_path):
    """Run by each rank (python tests/test_core.py OUT under torchrun)."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    model = CountingModel(RandomBigramModel(seed=2))
    accuracy = core.evaluate_task(model, ByteTokenizer(), MC, DIST_DATA, "cpu", max_per_task=45)
    calls = [None] * dist.get_world_size()
    dist.all_gather_object(calls, model.calls)
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump({"accuracy": accuracy, "world_size": dist.get_world_size(), "calls": calls}, f)
    dist.destroy_process_group()


class CountingModel(nn.Module):
    """Counts forward passes (one per item), to see how a rank's share of the work was cut."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, 0

    def forward(self, idx):
        self.calls += 1
        return self.model(idx)


DIST_DATA = random_mc_items(60, seed=3)


@pytest.mark.distributed
def test_torchrun_two_ranks_match_one_process(tmp_path):
    result = run_two_ranks(__file__, tmp_path / "result.json")
    alone = core.evaluate_task(RandomBigramModel(seed=2), ByteTokenizer(), MC, DIST_DATA, "cpu", max_per_task=45)
    assert result["world_size"] == 2 and result["accuracy"] == alone
    assert sorted(result["calls"]) == [22, 23]  # each rank scored its own half of the 45 items
    assert 0 < alone < 1  # a split that lost or double-counted items would show


if __name__ == "__main__":
    _distributed_worker(sys.argv[1])
