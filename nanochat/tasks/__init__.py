"""The chat tasks, one dataset per file, each a list of conversations that can grade a reply.

    common.py       Task, TaskMixture, TaskSequence, multiple-choice rendering
    arc.py          ARC-Easy, ARC-Challenge        categorical
    mmlu.py         MMLU (and its auxiliary_train) categorical
    gsm8k.py        GSM8K, with calculator calls   generative
    humaneval.py    HumanEval, run in the sandbox  generative
    smoltalk.py     SmolTalk conversations         (training only)
    spellingbee.py  SpellingBee, SimpleSpelling    generative
    customjson.py   a JSONL of conversations (identity)
"""
