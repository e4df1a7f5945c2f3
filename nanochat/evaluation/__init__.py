"""Evaluating models: how good is it, in numbers that can be compared?

    loss.py   bits per byte on held-out text: the pretraining curve, tokenizer-independent
    core.py   the CORE metric (DCLM): 22 few-shot tasks scored by likelihood, base models
    chat.py   ChatCORE: the chat tasks (ARC, MMLU, GSM8K, HumanEval, ...), chat models
"""
