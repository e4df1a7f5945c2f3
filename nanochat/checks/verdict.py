"""How a check compares a learner's function with the package's own, and says what it found.

A check calls the learner's function on a few inputs (random ones and the edge cases where
mistakes show), compares each answer with the reference's, and stops at the first wrong one
with a verdict that teaches: which input, what was expected, what came back, and, when the
answer matches a known mistake, which mistake it is. A wrong answer raises CheckFailed, so a
notebook run (nbval, papermill) fails on it; in Jupyter it shows as the verdict alone,
without a traceback.
"""
from __future__ import annotations

from typing import Callable

import torch

NOT_WRITTEN = "is not written yet: replace `raise NotImplementedError` in its cell with your code, run that cell, then this one"


class CheckFailed(AssertionError):
    """A wrong answer. Its message is the verdict."""

    def _render_traceback_(self) -> list[str]:
        """IPython shows this instead of a traceback: the verdict is the whole story."""
        return [f"\x1b[31m✗ {line}\x1b[0m" if i == 0 else f"  {line}" for i, line in enumerate(str(self).splitlines())]


def short(value, limit: int = 300) -> str:
    """A value as a short string: tensors show their shape, long texts are cut."""
    if isinstance(value, torch.Tensor):
        torch.set_printoptions(precision=4, threshold=20, edgeitems=3)
        text = f"tensor of shape {tuple(value.shape)}, {value.dtype}: {value}".replace("\n", " ")
        torch.set_printoptions(profile="default")
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def same(got, expected, atol: float = 1e-5, rtol: float = 1e-4) -> bool:
    """Equal values: tensors and floats within tolerance, everything else exactly (recursively)."""
    if isinstance(expected, torch.Tensor):
        return (isinstance(got, torch.Tensor) and got.shape == expected.shape
                and torch.allclose(got.double(), expected.double(), atol=atol, rtol=rtol, equal_nan=True))
    if isinstance(expected, float):
        return isinstance(got, (int, float)) and abs(got - expected) <= atol + rtol * abs(expected)
    if isinstance(expected, (list, tuple)):
        return (isinstance(got, (list, tuple)) and len(got) == len(expected)
                and all(same(g, e, atol, rtol) for g, e in zip(got, expected)))
    if isinstance(expected, dict):
        return isinstance(got, dict) and got.keys() == expected.keys() and all(
            same(got[k], expected[k], atol, rtol) for k in expected)
    if isinstance(expected, bool):  # True must not pass for 1
        return type(got) is bool and got == expected
    return got == expected


def difference(got, expected) -> str:
    """Where two answers first differ, in words."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a tensor, got {type(got).__name__}"
        if got.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
        if not torch.isfinite(got).all() and torch.isfinite(expected).all():
            where = tuple(int(i) for i in torch.nonzero(~torch.isfinite(got))[0])
            return f"got {got[where].item()} at index {where} (expected {expected[where].item():.5g}): the values blew up"
        gap = (got.double() - expected.double()).abs()
        where = tuple(int(i) for i in torch.nonzero(gap == gap.max())[0])
        return (f"values differ: largest gap {gap.max().item():.3g} at index {where} "
                f"(expected {expected[where].item():.5g}, got {got[where].item():.5g})")
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(got) != len(expected):
            return f"expected {len(expected)} items, got {len(got)}:\n  expected {short(expected)}\n  got      {short(got)}"
        i = next(i for i, (g, e) in enumerate(zip(got, expected)) if not same(g, e))
        return f"first difference at position {i}: expected {short(expected[i], 120)}, got {short(got[i], 120)}"
    return f"expected {short(expected)}, got {short(got)}"


class Checker:
    """Runs one learner function case by case; the first wrong case raises CheckFailed."""

    def __init__(self, fn: Callable, name: str | None = None):
        self.fn, self.name, self.cases = fn, name or getattr(fn, "__name__", "your function"), 0

    def call(self, *args, case: str, **kwargs):
        """The learner's answer on this case; a crash becomes a verdict naming the input."""
        try:
            return self.fn(*args, **kwargs)
        except NotImplementedError:
            raise CheckFailed(f"{self.name} {NOT_WRITTEN}.") from None
        except CheckFailed:
            raise
        except Exception as error:  # the learner's code crashed: say on what
            raise CheckFailed(f"{self.name} raised {type(error).__name__}: {error}\non {case}") from None

    def fail(self, case: str, detail: str, hint: str | None = None):
        """Stop with a verdict: the case, what differs, and the hint if there is one."""
        lines = [f"{self.name} is wrong on {case}", detail]
        if hint:
            lines.append(f"hint: {hint}")
        raise CheckFailed("\n".join(lines))

    def expect(self, got, expected, case: str, hint: str | Callable | None = None, atol=1e-5, rtol=1e-4):
        """Compare with the reference; on a mismatch the hint (a string, or a function of got) is shown."""
        self.cases += 1
        if not same(got, expected, atol, rtol):
            self.fail(case, difference(got, expected), hint(got) if callable(hint) else hint)

    def require(self, condition: bool, case: str, detail: str, hint: str | None = None):
        """A property that must hold (causality, a range, a count); fail with detail if it does not."""
        self.cases += 1
        if not condition:
            self.fail(case, detail, hint)

    def passed(self, covered: str) -> None:
        """The verdict when every case was right."""
        print(f"✓ {self.name} is right on all {self.cases} cases: {covered}.")


def mistake_named(got, mistakes: dict[str, object], otherwise: str | None = None) -> str | None:
    """The name of the known mistake whose output equals got (compared like `same`), else `otherwise`."""
    for name, output in mistakes.items():
        if output is None:  # this mistake cannot show on this case
            continue
        try:
            if same(got, output):
                return name
        except Exception:  # a malformed answer matches no mistake
            pass
    return otherwise
