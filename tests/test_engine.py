"""The Engine: same tokens as the naive reference, cached logits = recomputed logits, seeds, stops, the tool."""
import pytest
import torch

from nanochat.engine import Engine, calculator, python_tool
from nanochat.gpt import GPTConfig, KVCache
from nanochat.tokenizer import Tokenizer
from test_gpt import randomised_model


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are 64 wide: a second thread only adds overhead (and stalls badly on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """256 byte tokens + the 9 specials (ids 256..264): no training needed."""
    return Tokenizer.bytes_only()


@pytest.fixture(scope="module")
def model():
    """A tiny random GPT over the byte tokenizer's 265 ids, with every layer switched on."""
    return randomised_model(vocab_size=265, sequence_len=64)


def chat_prompt(tokenizer, text: str) -> list[int]:
    """<|bos|><|user_start|>text<|user_end|><|assistant_start|>: where the assistant starts writing."""
    return tokenizer.render_for_completion([{"role": "user", "content": text}, {"role": "assistant", "content": ""}])


def naive_reference(model, engine, prompt, max_tokens, **kwargs) -> list[int]:
    """GPT.generate's tokens, cut after the first stop token (the Engine stops there; GPT.generate does not)."""
    out = []
    for token in model.generate(prompt, max_tokens, **kwargs):
        out.append(token)
        if token in engine.stop_tokens:
            break
    return out


def rows_of(columns) -> list[list[int]]:
    """Turn the generator's columns (one token per row per step) into one token list per row."""
    return [list(row) for row in zip(*[column for column, _ in columns])]


PROMPTS = ["hi", "What is 2+2?", "Tell me a story about a cat."]


@pytest.mark.parametrize("text", PROMPTS)
def test_greedy_equals_naive_generate(model, tokenizer, text):
    engine = Engine(model, tokenizer, tool=None)  # no tool: GPT.generate has none either
    prompt = chat_prompt(tokenizer, text)
    expected = naive_reference(model, engine, prompt, 16, temperature=0.0)
    one = rows_of(engine.generate(prompt, num_samples=1, max_tokens=16, temperature=0.0))
    assert one[0] == expected
    three = rows_of(engine.generate(prompt, num_samples=3, max_tokens=16, temperature=0.0))
    assert three == [expected] * 3  # greedy: every row the same


@pytest.mark.parametrize("top_k", [None, 5])
def test_sampled_row_zero_equals_naive_generate_with_same_seed(model, tokenizer, top_k):
    engine = Engine(model, tokenizer, tool=None)
    prompt = chat_prompt(tokenizer, "hello there")
    expected = naive_reference(model, engine, prompt, 16, temperature=1.0, top_k=top_k, seed=123)
    rows = rows_of(engine.generate(prompt, num_samples=3, max_tokens=16, temperature=1.0, top_k=top_k, seed=123))
    assert rows[0][:len(expected)] == expected  # row i draws from a generator seeded seed + i


class RecordingModel(torch.nn.Module):
    """Wraps a model and keeps the last-position logits of every forward call the Engine makes."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def new_kv_cache(self, batch_size, max_len):
        return self.model.new_kv_cache(batch_size, max_len)

    def forward(self, idx, kv_cache=None):
        logits = self.model(idx, kv_cache=kv_cache)
        self.calls.append(logits[:, -1].clone())
        return logits


def test_cached_logits_equal_full_recompute_at_every_step(model, tokenizer):
    recorder = RecordingModel(model)
    engine = Engine(recorder, tokenizer, tool=None)
    prompt = chat_prompt(tokenizer, "abc")
    columns = list(engine.generate(prompt, num_samples=2, max_tokens=12, temperature=1.0, seed=0))
    rows = rows_of(columns)
    assert len(recorder.calls) == len(columns)  # one prefill, then one decode step per further token
    for step, cached in enumerate(recorder.calls):
        for row in range(2):
            sequence = prompt + rows[row][:step]  # everything the model had seen at this step
            full = model(torch.tensor([sequence]))[:, -1]
            torch.testing.assert_close(cached[row if step else 0].unsqueeze(0), full, atol=1e-5, rtol=1e-5)


def test_sampling_is_reproducible_and_rows_differ(model, tokenizer):
    engine = Engine(model, tokenizer, tool=None)
    prompt = chat_prompt(tokenizer, "Write something.")
    kwargs = dict(num_samples=4, max_tokens=12, temperature=1.0)
    first, masks = engine.generate_batch(prompt, seed=7, **kwargs)
    again, _ = engine.generate_batch(prompt, seed=7, **kwargs)
    other, _ = engine.generate_batch(prompt, seed=8, **kwargs)
    assert first == again
    assert first != other
    assert len({tuple(row) for row in first}) == 4, "every row should have drawn its own sample"
    assert all(row[:len(prompt)] == prompt for row in first)
    assert all(len(m) == len(r) and m[len(prompt):] == [1] * (len(r) - len(prompt)) for m, r in zip(masks, first))


class ScriptedModel(torch.nn.Module):
    """A stand-in model that writes a fixed script per row, whatever the engine forces in between.

    It remembers what it was fed by storing the token ids themselves in a real KVCache (one
    layer, one head, head_dim 2), so its memory goes through the Engine's prefill copy just
    like a real model's keys. Its turn is everything after the last <|assistant_start|>,
    not counting tool output (<|output_start|> ... <|output_end|>); it then says the next
    token of its script (the last one, forever, once the script runs out). The prompt is
    prefilled with batch 1, so every row's first token comes from scripts[0].
    """

    def __init__(self, tokenizer, scripts, sequence_len=64):
        super().__init__()
        vocab = tokenizer.get_vocab_size()
        self.config = GPTConfig(sequence_len=sequence_len, vocab_size=vocab, n_layer=1, n_head=1, n_kv_head=1, n_embd=2)
        self.scripts = scripts
        special = tokenizer.encode_special
        self.assistant_start = special("<|assistant_start|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")
        self.seen = []  # every row's full history at the last call

    def new_kv_cache(self, batch_size, max_len):
        return KVCache(self.config, batch_size, max_len, "cpu", torch.float32)

    def forward(self, idx, kv_cache=None):
        B, T = idx.shape
        ids = idx.float()[:, None, :, None].expand(B, 1, T, 2)  # (B, Hkv=1, T, D=2): a token's key is its id
        keys, _ = kv_cache.insert_kv(0, ids, ids)
        kv_cache.advance(T)
        self.seen = keys[:, 0, :, 0].long().tolist()  # (B, tokens so far)
        logits = torch.zeros(B, T, self.config.vocab_size)  # only the last position is scripted: all the Engine reads
        for b in range(B):
            logits[b, -1, self.next_token(b, self.seen[b])] = 10.0
        return logits

    def next_token(self, row: int, history: list[int]) -> int:
        turn = history[len(history) - history[::-1].index(self.assistant_start):]
        said, in_output = 0, False
        for token in turn:
            if token == self.output_start:
                in_output = True
            elif token == self.output_end:
                in_output = False
            elif not in_output:
                said += 1
        script = self.scripts[row]
        return script[min(said, len(script) - 1)]


def test_rows_stop_independently(tokenizer):
    end, bos = tokenizer.encode_special("<|assistant_end|>"), tokenizer.get_bos_token_id()
    scripts = [tokenizer.encode("Abc") + [end], tokenizer.encode("Abcdefg") + [end], tokenizer.encode("Ab") + [bos]]
    engine = Engine(ScriptedModel(tokenizer, scripts), tokenizer)
    prompt = chat_prompt(tokenizer, "go")
    columns = list(engine.generate(prompt, num_samples=3, max_tokens=50, temperature=0.0))
    assert len(columns) == 8  # stops when the longest row is done, not at max_tokens
    rows = rows_of(columns)
    assert rows[0][:4] == scripts[0] and rows[0][4:] == [end] * 4  # a finished row repeats its stop token...
    assert [mask[0] for _, mask in columns] == [1] * 4 + [0] * 4  # ...with mask 0
    assert rows[2][:3] == scripts[2]
    sequences, masks = engine.generate_batch(prompt, num_samples=3, max_tokens=50, temperature=0.0)
    assert [tokenizer.decode(s[len(prompt):]) for s in sequences] == ["Abc", "Abcdefg", "Ab"]
    assert [m[len(prompt):] for m in masks] == [[1] * 3, [1] * 7, [1] * 2]


def test_tool_output_is_forced_while_other_rows_keep_sampling(tokenizer):
    special = tokenizer.encode_special
    enc = tokenizer.encode
    py_start, py_end = special("<|python_start|>"), special("<|python_end|>")
    out_start, out_end, end = special("<|output_start|>"), special("<|output_end|>"), special("<|assistant_end|>")
    tool_row = enc("A") + [py_start] + enc("12*3") + [py_end] + enc(" so 36.") + [end]
    chat_row = enc("Alphabet soup, yum!") + [end]
    model = ScriptedModel(tokenizer, [tool_row, chat_row])
    engine = Engine(model, tokenizer)
    prompt = chat_prompt(tokenizer, "What is 12*3?")
    sequences, masks = engine.generate_batch(prompt, num_samples=2, max_tokens=40, temperature=0.0)

    forced = [out_start] + enc("36") + [out_end]
    written_before = enc("A") + [py_start] + enc("12*3") + [py_end]
    expected = written_before + forced + enc(" so 36.")
    assert sequences[0][len(prompt):] == expected
    assert masks[0][len(prompt):] == [1] * len(written_before) + [0] * len(forced) + [1] * len(" so 36.")
    # the other row never paused: every token it got was sampled
    assert sequences[1][len(prompt):] == chat_row[:-1] and masks[1][len(prompt):] == [1] * (len(chat_row) - 1)
    # the forced tokens went into the model's cache, like any other token
    start = len(prompt) + len(written_before)
    assert model.seen[0][start:start + len(forced)] == forced


def test_failed_tool_call_forces_nothing(tokenizer):
    special = tokenizer.encode_special
    script = [special("<|python_start|>")] + tokenizer.encode("1/0") + [special("<|python_end|>")] \
        + tokenizer.encode("hm") + [special("<|assistant_end|>")]
    engine = Engine(ScriptedModel(tokenizer, [script]), tokenizer)
    sequences, masks = engine.generate_batch(chat_prompt(tokenizer, "divide"), max_tokens=30, temperature=0.0)
    prompt_len = len(chat_prompt(tokenizer, "divide"))
    assert sequences[0][prompt_len:] == script[:-1] and masks[0][prompt_len:] == [1] * (len(script) - 1)


def test_python_tool_runs_code_in_the_sandbox(tokenizer):
    special = tokenizer.encode_special
    script = [special("<|python_start|>")] + tokenizer.encode("print(6*7)") + [special("<|python_end|>")] \
        + tokenizer.encode("!") + [special("<|assistant_end|>")]
    engine = Engine(ScriptedModel(tokenizer, [script]), tokenizer, tool=python_tool)
    prompt = chat_prompt(tokenizer, "run it")
    sequences, masks = engine.generate_batch(prompt, max_tokens=40, temperature=0.0)
    completion = tokenizer.decode(sequences[0][len(prompt):])
    assert completion == "<|python_start|>print(6*7)<|python_end|><|output_start|>42<|output_end|>!"


@pytest.mark.parametrize("expression, result", [
    ("12*3", "36"), ("(1 + 2) / 4", "0.75"), ("48/2", "24"), ("-3 - -2", "-1"), ("0.1 + 0.2", "0.3"),
    ("1.5 * 4", "6"), ('"strawberry".count("r")', "3"), ("'Strawberry'.lower().count('s')", "1"), ('len("hello")', "5"),
])
def test_calculator_evaluates_arithmetic_and_string_methods(expression, result):
    assert calculator(expression) == result


@pytest.mark.parametrize("expression", [
    "2**10", "9**9**9", "__import__('os').system('ls')", "open('x').read()", "x + 1", "1/0", "'ab' * 10**9",
    "(1).__class__", "'a'.join(['b'])", "[1, 2]", "lambda: 1", "7 % 3", "1 +", "1" + "+1" * 200,
])
def test_calculator_refuses_everything_else(expression):
    assert calculator(expression) is None


def test_prompt_longer_than_the_context_is_a_clear_error(model, tokenizer):
    engine = Engine(model, tokenizer)
    too_long = [tokenizer.get_bos_token_id()] + tokenizer.encode("x" * 70)  # sequence_len is 64
    with pytest.raises(ValueError, match="sequence_len"):
        next(engine.generate(too_long))
    nearly_full = [tokenizer.get_bos_token_id()] + tokenizer.encode("x" * 61)  # 62 tokens: room for 2
    assert len(list(engine.generate(nearly_full, temperature=0.0))) <= 2
    with pytest.raises(ValueError, match="empty"):
        next(engine.generate([]))


def test_max_tokens_bounds_the_steps(model, tokenizer):
    scripted = ScriptedModel(tokenizer, [tokenizer.encode("la")] * 2)  # never says <|assistant_end|>
    columns = list(Engine(scripted, tokenizer).generate(chat_prompt(tokenizer, "sing"), num_samples=2, max_tokens=9))
    assert len(columns) == 9 and all(len(c) == 2 and m == [1, 1] for c, m in columns)
    assert list(Engine(model, tokenizer).generate(chat_prompt(tokenizer, "x"), max_tokens=0)) == []
