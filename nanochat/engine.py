"""The inference Engine: a KV cache, prefill then decode, batched samples, and the tool-use loop.

Why a KV cache. A GPT predicts token t+1 from tokens 0..t. Generating naively (GPT.generate)
re-runs the whole sequence every step: at step t that is t tokens through every layer, and
attention compares all t queries with all t keys, O(t^2) work per step. But the keys and
values of the old tokens never change (attention is causal: a token never sees the
future), so we can keep them. Then a step feeds only the ONE new token: its query is
compared with the t cached keys, O(t) work per step, and the matmuls run on 1 token, not t.

Two phases:
  prefill  the prompt, all T tokens in one forward pass (a big, efficient matmul):
           idx (1, T) -> logits (1, T, V); the cache now holds k, v of shape
           (L, 1, Hkv, T, D) (L layers, Hkv key/value heads, D head_dim).
  decode   one token per step for every sample row together:
           idx (B, 1) -> logits (B, 1, V); each layer appends its (B, Hkv, 1, D) k and v.

To draw B samples from one prompt, the prompt is prefilled ONCE with batch 1 and its cache
is copied into every row of a batch-B cache (KVCache.prefill): B continuations for the
price of one prompt.

The tool. Chat models learn to write <|python_start|>12*3<|python_end|>. The engine watches
each row; at <|python_end|> it runs the expression and forces the result into that row,
<|output_start|>36<|output_end|>, one token per step with mask 0 (the model did not write
it), while the other rows keep sampling. Then the model reads the output and carries on.

The Engine needs only three things from a model: model(idx, kv_cache=cache) returning
logits (B, T, V) and advancing the cache, model.new_kv_cache(batch_size, max_len) returning
a nanochat.gpt.KVCache, and model.config.sequence_len. nanochat.gpt.GPT has all three.
"""
import ast
import operator
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from nanochat.execution import execute_code
from nanochat.gpt import sample_next_token

# ---- tools: what runs between <|python_start|> and <|python_end|>

MAX_EXPRESSION_CHARS = 256  # tool calls are one-liners; a long "expression" is the model rambling
_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_SIGNS = {ast.UAdd: operator.pos, ast.USub: operator.neg}
# Read-only string methods (for questions like how many r's are in "strawberry"). None can
# make a string longer, so no expression can blow up memory.
_STRING_METHODS = {"count", "find", "rfind", "index", "startswith", "endswith", "lower", "upper", "strip"}


class _Refused(Exception):
    """The expression uses something the calculator does not allow."""


def calculator(expression: str) -> str | None:
    """Evaluate a tool call: arithmetic (+ - * / and parentheses) or a string method; None if refused or failed.

    Implemented by walking Python's syntax tree and allowing only number literals, the four
    operators, signs, and a few read-only methods on string literals (plus len). There is
    no eval(): a name, an import, an attribute other than those methods, `**` (9**9**9
    would never finish) or anything else is refused before it runs. That is why this runs
    in-process: it cannot reach anything to escape with, and it takes microseconds, where
    a sandboxed interpreter (execute_code, python_tool) costs ~70 ms per call (bench/sandbox.py).
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    try:
        value = _evaluate(ast.parse(expression.strip(), mode="eval").body)
    except (SyntaxError, _Refused, ArithmeticError, ValueError, TypeError):
        return None  # 1/0, "abc".index("z"), a typo...: no output, like a silent calculator
    return _format(value)


def _evaluate(node: ast.AST):
    """Evaluate one node of the allowed grammar, refusing everything else."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if not (_is_number(left) and _is_number(right)):
            raise _Refused("arithmetic only on numbers")  # "ab" * 10**9 would be a memory bomb
        return _ARITHMETIC[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _SIGNS:
        operand = _evaluate(node.operand)
        if not _is_number(operand):
            raise _Refused("a sign needs a number")
        return _SIGNS[type(node.op)](operand)
    if isinstance(node, ast.Call) and not node.keywords:
        args = [_evaluate(arg) for arg in node.args]
        if isinstance(node.func, ast.Name) and node.func.id == "len" and len(args) == 1 and isinstance(args[0], str):
            return len(args[0])
        if isinstance(node.func, ast.Attribute) and node.func.attr in _STRING_METHODS:
            receiver = _evaluate(node.func.value)
            if isinstance(receiver, str) and all(isinstance(a, (str, int)) for a in args):
                return getattr(receiver, node.func.attr)(*args)
    raise _Refused(f"{type(node).__name__} is not allowed in a calculator expression")


def _is_number(value) -> bool:
    return type(value) in (int, float)


def _format(value) -> str:
    """The result as the model saw it in training: 48/2 -> "24" (not "24.0"), 0.1+0.2 -> "0.3"."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return str(round(value, 10))  # drop float noise like 0.30000000000000004
    return str(value)


def python_tool(code: str) -> str | None:
    """A real Python tool: run the code in the sandbox, return what it printed (or its error).

    Strict on Linux: where the kernel sandbox cannot be made (no bubblewrap), this raises
    SandboxUnavailable, with the fix, instead of running a model's code unisolated."""
    result = execute_code(code, timeout=5.0, max_memory_mb=256, max_output_chars=1000,
                          strict=sys.platform.startswith("linux"))
    return result.stdout.strip() if result.success else result.error


# ---- the engine

@dataclass
class _Row:
    """Where one sample row is: finished? inside a tool call? which tokens must it be fed next?"""
    forced: deque = field(default_factory=deque)  # tool output waiting to be fed, one per step
    python_tokens: list | None = None              # the tool call being written, None when outside one
    last_token: int = -1
    done: bool = False


class Engine:
    """Generates from a model with a KV cache, many samples at once, running the tool when asked.

    tool: a function from the text between <|python_start|> and <|python_end|> to the
    text to feed back (None: feed nothing). The default is the calculator; python_tool
    runs real Python in the sandbox; tool=None turns tool use off (tool calls are then
    just text, as in GPT.generate).
    """

    def __init__(self, model, tokenizer, tool: Callable[[str], str | None] | None = calculator):
        self.model, self.tokenizer, self.tool = model, tokenizer, tool
        special = tokenizer.encode_special
        self.python_start, self.python_end = special("<|python_start|>"), special("<|python_end|>")
        self.output_start, self.output_end = special("<|output_start|>"), special("<|output_end|>")
        # A row is finished when the assistant hands the turn back, or starts a new document.
        self.stop_tokens = {special("<|assistant_end|>"), tokenizer.get_bos_token_id()}

    def cache_length(self, prompt_len: int, max_tokens: int | None) -> tuple[int, int]:
        """How many tokens to generate and how long the KV cache must be: (max_tokens, max_len)."""
        if max_tokens is None:  # generate until the model's context is full
            context = self.model.config.sequence_len
            if prompt_len >= context:
                raise ValueError(f"the prompt has {prompt_len} tokens, but the model's context (config.sequence_len) "
                                 f"is {context}: no room is left to generate. Shorten the prompt (e.g. drop old "
                                 f"turns of the conversation) or pass max_tokens explicitly.")
            return context - prompt_len, context
        if max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0 (or None for 'until the context is full'), got {max_tokens}")
        return max_tokens, prompt_len + max_tokens

    @torch.inference_mode()
    def generate(self, tokens: list[int], num_samples: int = 1, max_tokens: int | None = None,
                 temperature: float = 1.0, top_k: int | None = None, seed: int = 42
                 ) -> Iterator[tuple[list[int], list[int]]]:
        """Yield (token_column, mask_column) per step: one next token per sample row.

        mask is 1 where the model sampled the token, 0 where the engine forced it (tool
        output). A row stops at <|assistant_end|> or <|bos|> (that token is yielded);
        after that it yields its stop token again with mask 0 until every row is done or
        max_tokens steps have passed. Row i samples with its own generator seeded with
        seed + i, so a row's text does not depend on how many rows run beside it (without
        tool calls, row 0 draws what GPT.generate(seed=seed) draws, up to float rounding).
        The checks on the arguments run at the first next(), as with any generator.
        """
        prompt = list(tokens)
        if not prompt:
            raise ValueError("the prompt is empty: start it with at least <|bos|>")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        max_tokens, max_len = self.cache_length(len(prompt), max_tokens)
        if max_tokens == 0:
            return

        # Prefill: the whole prompt once, batch 1. Only the last position's logits matter.
        prompt_cache = self.model.new_kv_cache(batch_size=1, max_len=max_len)
        device = prompt_cache.k.device  # the cache lives where the model computes
        idx = torch.tensor([prompt], dtype=torch.long, device=device)       # (1, T)
        logits = self.model(idx, kv_cache=prompt_cache)[:, -1, :]          # (1, V)
        # Copy the prompt's keys and values into every row: (L, 1, ...) -> (L, B, ...).
        cache = self.model.new_kv_cache(batch_size=num_samples, max_len=max_len)
        cache.prefill(prompt_cache)
        del prompt_cache
        logits = logits.expand(num_samples, -1)                             # (B, V), a view, no copy

        rngs = [torch.Generator(device=device).manual_seed(seed + i) for i in range(num_samples)]
        rows = [_Row() for _ in range(num_samples)]
        for step in range(max_tokens):
            if step > 0:  # decode: feed every row's last token, get every row's next logits
                idx = torch.tensor([[row.last_token] for row in rows], dtype=torch.long, device=device)  # (B, 1)
                logits = self.model(idx, kv_cache=cache)[:, -1, :]                                     # (B, V)
            drawn = self._sample_rows(rows, logits, rngs, temperature, top_k)
            column, mask = zip(*(self._next_token(row, drawn.get(i)) for i, row in enumerate(rows)))
            yield list(column), list(mask)
            if all(row.done for row in rows):
                return

    @staticmethod
    def _sample_rows(rows: list[_Row], logits: torch.Tensor, rngs, temperature, top_k) -> dict[int, int]:
        """{row index: sampled token} for the rows that sample this step (not done, no forced tool output).

        Each row draws with its own generator, but the ids come to the CPU together: one
        device-to-host copy (one GPU sync) per step, not one per row.
        """
        need = [i for i, row in enumerate(rows) if not row.done and not row.forced]
        if not need:
            return {}
        if temperature == 0.0:  # greedy needs no generator: one argmax over the batch
            picks = logits[need].argmax(dim=-1)
        else:
            picks = torch.cat([sample_next_token(logits[i:i + 1], rngs[i], temperature, top_k) for i in need])
        return dict(zip(need, picks.view(-1).tolist()))

    def _next_token(self, row: _Row, drawn: int | None) -> tuple[int, int]:
        """Choose one row's next token (forced tool output, else its drawn sample) and update its state. Returns (token, mask)."""
        if row.done:
            return row.last_token, 0
        if row.forced:
            token, sampled = row.forced.popleft(), 0
        else:
            token, sampled = drawn, 1
        row.last_token = token
        if token in self.stop_tokens:
            row.done = True
        elif self.tool is None:
            pass
        elif token == self.python_start:
            row.python_tokens = []
        elif token == self.python_end and row.python_tokens is not None:
            result = self.tool(self.tokenizer.decode(row.python_tokens))
            row.python_tokens = None
            if result is not None:
                row.forced.extend([self.output_start, *self.tokenizer.encode(result), self.output_end])
        elif row.python_tokens is not None:
            row.python_tokens.append(token)
        return token, sampled

    def generate_batch(self, tokens: list[int], num_samples: int = 1, **kwargs) -> tuple[list[list[int]], list[list[int]]]:
        """Run generate to the end. Returns (sequences, masks): prompt + completion per row, without the stop token.

        masks[i][j] is 0 for the prompt and forced tool output, 1 for sampled tokens (what
        RL trains on).
        """
        sequences = [list(tokens) for _ in range(num_samples)]
        masks = [[0] * len(tokens) for _ in range(num_samples)]
        finished = [False] * num_samples
        for column, mask_column in self.generate(tokens, num_samples=num_samples, **kwargs):
            for i, (token, sampled) in enumerate(zip(column, mask_column)):
                if finished[i]:
                    continue
                if token in self.stop_tokens:
                    finished[i] = True
                    continue
                sequences[i].append(token)
                masks[i].append(sampled)
        return sequences, masks
