"""Checks for 09_engine: a decode loop on the KV cache, top-k sampling, a calculator that cannot be abused."""
import math

import torch

from nanochat.checks.verdict import Checker
from nanochat.engine import calculator as reference_calculator
from nanochat.gpt import build_model, config_for_depth


class _CountingModel:
    """Wraps a GPT and records how many tokens each forward call was given, and with which cache."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, idx, *args, kv_cache=None, **kwargs):
        self.calls.append((idx.size(1), kv_cache is not None))
        return self.model(idx, *args, kv_cache=kv_cache, **kwargs)


def _tiny_model():
    torch.manual_seed(0)
    model = build_model(config_for_depth(2, vocab_size=48, sequence_len=64), dtype=torch.float32)
    for p in model.parameters():  # random weights everywhere, so the greedy path is not trivial
        torch.nn.init.normal_(p, std=0.5)
    return model.eval()


def check_greedy_decode(greedy_decode) -> None:
    """greedy_decode(model, prompt, max_tokens) -> the greedy continuation: prefill once, then one token per step."""
    c = Checker(greedy_decode)
    model = _tiny_model()
    for prompt, n, case in [([1, 2, 3], 5, "a 3-token prompt, 5 new tokens"), ([7], 1, "one token, one new token"),
                            ([5, 9, 11, 2, 30, 4, 4], 20, "a 7-token prompt, 20 new tokens")]:
        counting = _CountingModel(model)
        with torch.no_grad():
            got = c.call(counting, list(prompt), n, case=case)
            expected = list(model.generate(list(prompt), n, temperature=0.0))
        c.expect([int(t) for t in got] if isinstance(got, (list, tuple)) else got, expected, case,
                 "prefill the prompt once, then feed only the newly chosen token each step, with the same cache; "
                 "pick argmax of the last position's logits")
        sizes = [size for size, _ in counting.calls]
        c.require(all(cached for _, cached in counting.calls), case,
                  "every forward call should pass kv_cache=cache (model.new_kv_cache(1, len(prompt) + max_tokens))")
        right = [len(prompt)] + [1] * (n - 1)
        c.require(sizes[:1] == [len(prompt)] and all(s == 1 for s in sizes[1:]) and len(sizes) in (n, n + 1), case,
                  f"tokens per forward call were {sizes}; with a KV cache that is {right}",
                  "prefill: feed the whole prompt in ONE call, so its keys and values are computed together"
                  if sizes and sizes[0] < len(prompt) else
                  "after the prefill feed only the newest token: the cache already holds the keys and values of "
                  "everything before it (re-feeding recomputes and re-appends them)")
    c.passed("short and long prompts; the same tokens as the uncached model, one token per decode step")


def check_sample_top_k(sample_top_k) -> None:
    """sample_top_k(logits (V,), k, temperature, generator) -> one token id, from softmax(top-k logits / temperature)."""
    c = Checker(sample_top_k)
    logits = torch.tensor([2.0, 1.0, 0.5, 3.0, -1.0, 0.0, 2.5, -2.0])
    for k, temperature, draws in [(1, 1.0, 50), (3, 1.0, 4000), (3, 0.5, 4000), (8, 2.0, 4000)]:
        case = f"logits {logits.tolist()}, k={k}, temperature={temperature}"
        g = torch.Generator().manual_seed(0)
        samples = [int(c.call(logits.clone(), k, temperature, g, case=case)) for _ in range(draws)]
        if k > 1:
            again = torch.Generator().manual_seed(0)
            replay = [int(c.call(logits.clone(), k, temperature, again, case=case)) for _ in range(50)]
            c.require(replay == samples[:50], case, "the same seed gave different samples",
                      "draw with the generator you are given: torch.multinomial(probs, 1, generator=generator), "
                      "so a seed reproduces a reply")
        top = logits.topk(k).indices.tolist()
        outside = sorted(set(samples) - set(top))
        c.require(not outside, case, f"sampled ids {outside}, which are not among the top {k} ({top})",
                  "keep only the k largest logits (logits.topk(k)) before sampling")
        probs = torch.zeros_like(logits)
        probs[top] = torch.softmax(logits[top] / temperature, dim=0)
        seen = torch.bincount(torch.tensor(samples), minlength=len(logits)).float() / draws
        gap = 0.5 * (seen - probs).abs().sum().item()  # total variation distance
        # with 4000 draws the gap of a right sampler is ~0.01; 0.04 leaves room for chance
        hint = ("divide the logits by the temperature before the softmax (dividing probabilities does nothing: "
                "multinomial renormalises)" if temperature != 1.0 else
                "sample from softmax of the kept logits: torch.multinomial(probs, 1, generator=generator)")
        c.require(gap < 0.04, case, f"the sampled frequencies {[round(x, 3) for x in seen.tolist()]} are "
                  f"{gap:.3f} away from softmax(top-k / T) = {[round(x, 3) for x in probs.tolist()]}", hint)
    c.passed("k=1 is argmax, frequencies match softmax(top-k logits / T) at three temperatures")


EXPRESSIONS = ["1 + 2", "48/2", "(3 + 4) * 5", "-7 * 6", "10 / 4", "0.1 + 0.2", "2 * (3 - 1.5)"]
HOSTILE = ["__import__('os').getpid()", "open('/etc/passwd').read()", "x + 1", "exec('1')",
           "(1).__class__", "2 ** 100", "[1, 2, 3]"]


def check_calculator(calculator) -> None:
    """calculator(expression) -> the value as training wrote it ("24", not "24.0"), None for anything but + - * /."""
    c = Checker(calculator)
    for expression in HOSTILE:
        got = c.call(expression, case=repr(expression))
        c.require(got is None, repr(expression), f"expected None (refused), got {str(got)[:80]!r}",
                  "never eval() model-written text: allow only number constants, BinOp(+ - * /) and UnaryOp(-, +), "
                  "and refuse every other node (names, calls, attributes, ** since 9**9**9 never finishes) before computing")
    for expression in EXPRESSIONS:
        got = c.call(expression, case=repr(expression))
        expected = reference_calculator(expression)
        try:
            value_right = got is not None and math.isclose(float(got), float(expected), rel_tol=1e-9, abs_tol=1e-12)
        except (TypeError, ValueError):
            value_right = False
        c.require(value_right, repr(expression), f"expected {expected!r}, got {got!r}",
                  "walk ast.parse(expression, mode='eval'): numbers, + - * /, unary -, parentheses")
        c.require(got == expected, repr(expression), f"the value is right but written {got!r}; training wrote {expected!r}",
                  "a whole number without '.0' (str(int(v)) when v.is_integer()), otherwise str(round(v, 10)): the model "
                  "must read results in the format it was trained on")
    c.passed("arithmetic with floats and signs; imports, files, names, calls, attributes and ** refused")
