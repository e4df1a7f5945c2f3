"""Checks for 10_eval: centred accuracy, ChatCORE, a multiple-choice answer from logits, CORE's choice by mean loss."""
import torch

from nanochat.checks.verdict import Checker, mistake_named
from nanochat.evaluation.chat import CHATCORE_BASELINES, centered, chatcore


def check_centered_accuracy(centered_accuracy) -> None:
    """centered_accuracy(accuracy, baseline) -> 0 for guessing, 1 for perfect, negative below chance."""
    c = Checker(centered_accuracy)
    for accuracy, baseline in [(0.25, 0.25), (1.0, 0.25), (0.5, 0.25), (0.1, 0.25), (0.3, 0.0), (0.62, 0.5)]:
        case = f"accuracy {accuracy}, baseline {baseline}"
        got = c.call(accuracy, baseline, case=case)
        c.expect(got, centered(accuracy, baseline), case, lambda g: mistake_named(g, {
            "divide by (1 - baseline) too, so a perfect score is 1 whatever the chance level": accuracy - baseline},
            "(accuracy - baseline) / (1 - baseline)"))
    c.passed("at chance, perfect, in between, below chance, no baseline")


def check_chatcore(chatcore_score) -> None:
    """chatcore_score(accuracies) -> the mean centred accuracy over the tasks given (baselines: CHATCORE_BASELINES)."""
    c = Checker(chatcore_score)
    cases = [{name: 1.0 for name in CHATCORE_BASELINES}, {name: CHATCORE_BASELINES[name] for name in CHATCORE_BASELINES},
             {"ARC-Easy": 0.4, "ARC-Challenge": 0.3, "MMLU": 0.31, "GSM8K": 0.05, "HumanEval": 0.02, "SpellingBee": 0.5},
             {"MMLU": 0.28, "GSM8K": 0.01}]
    for accuracies in cases:
        got = c.call(dict(accuracies), case=str(accuracies))
        expected = chatcore(accuracies)["chatcore"]
        raw_mean = sum(accuracies.values()) / len(accuracies)
        c.expect(got, expected, f"accuracies {accuracies}", lambda g: mistake_named(g, {
            "centre each task first: a 25% MMLU is chance, a 25% GSM8K is not": raw_mean,
            "average over the tasks present, not over all six": sum(
                centered(a, CHATCORE_BASELINES[n]) for n, a in accuracies.items()) / len(CHATCORE_BASELINES)},
            "mean over the given tasks of centered_accuracy(accuracy, CHATCORE_BASELINES[task])"))
    c.passed("perfect, at chance, realistic and partial task sets")


def check_choose_letter(choose_letter) -> None:
    """choose_letter(logits (V,), letter_ids) -> the index (0, 1, ...) of the allowed letter with the largest logit."""
    c = Checker(choose_letter)
    g = torch.Generator().manual_seed(0)
    for trial in range(4):
        logits = torch.randn(50, generator=g)
        letter_ids = torch.randperm(50, generator=g)[:4].tolist()
        best_overall = int(logits.argmax())
        if trial > 0 and best_overall in letter_ids:  # make the overall argmax a non-letter token
            logits[[i for i in range(50) if i not in letter_ids][0]] = logits.max() + 1
        case = f"letter ids {letter_ids} in a vocabulary of 50"
        got = c.call(logits.clone(), list(letter_ids), case=case)
        expected = int(logits[letter_ids].argmax())
        c.expect(int(got) if isinstance(got, (int, torch.Tensor)) else got, expected, case, lambda x: (
            "compare only the letters' logits (logits[letter_ids].argmax()): the model may prefer another token, "
            "the question asks which letter" if x == int(logits.argmax()) else
            "return the position in letter_ids (0 for the first letter), not the token id" if x in letter_ids else
            "index = logits[letter_ids].argmax()"))
    c.passed("four questions where the model's favourite token is not a letter")


def check_core_choice(core_choice) -> None:
    """core_choice(losses) -> the index of the option whose continuation has the lowest MEAN per-token loss."""
    c = Checker(core_choice)
    cases = [[torch.tensor([0.6, 0.6, 0.6, 0.6]), torch.tensor([1.0])],
             [torch.tensor([2.0]), torch.tensor([0.9, 0.9, 0.9, 0.9]), torch.tensor([1.5, 0.1])],
             [torch.tensor([0.3, 0.3, 0.3]), torch.tensor([0.3, 0.3, 0.3])]]
    for losses in cases:
        case = f"per-token losses {[l.tolist() for l in losses]}"
        got = c.call([l.clone() for l in losses], case=case)
        means = [l.mean().item() for l in losses]
        expected = min(range(len(means)), key=means.__getitem__)
        sums = [l.sum().item() for l in losses]
        c.expect(int(got) if isinstance(got, (int, torch.Tensor)) else got, expected, case, lambda x: (
            "use the mean loss: a summed loss penalises longer options for their length"
            if x == min(range(len(sums)), key=sums.__getitem__) else
            "on a tie, the first option wins" if means[x] == means[expected] else "argmin over options of losses[i].mean()"))
    c.passed("options of different lengths, a tie")
