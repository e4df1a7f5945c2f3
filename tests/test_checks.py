"""Every check fails on a stub and on plausible wrong implementations, with a verdict naming the problem.

The right implementations pass in solutions/ (run by nbval); here each check meets the package's
own function where the signatures agree, and the mistakes learners make.
"""
import ast
import math
import re

import pytest
import torch
import torch.nn.functional as F

from nanochat import checks
from nanochat.checks import CheckFailed, bpe
from nanochat.checks.verdict import NOT_WRITTEN
from nanochat.gpt import apply_rotary, attend, norm
from nanochat.tokenizer import SPLIT_PATTERN


def stub(*args, **kwargs):
    raise NotImplementedError("yours to write")


def fails(check, fn, *phrases):
    """Run check on fn; it must raise CheckFailed whose verdict contains every phrase."""
    with pytest.raises(CheckFailed) as failure:
        check(fn)
    for phrase in phrases:
        assert phrase in str(failure.value), str(failure.value)
    return str(failure.value)


@pytest.mark.parametrize("name", [n for n in checks.__all__ if n.startswith("check_")])
def test_every_check_fails_on_the_stub(name):
    assert NOT_WRITTEN in fails(getattr(checks, name), stub)


def test_a_crash_names_the_input():
    verdict = fails(checks.check_rope, lambda x, cos, sin: x @ cos, "raised RuntimeError", "on ")
    assert "one position" in verdict


def test_the_verdict_shows_without_a_traceback_in_jupyter():
    lines = CheckFailed("f is wrong on x\nexpected 1, got 2\nhint: h")._render_traceback_()
    assert len(lines) == 3 and "f is wrong on x" in lines[0] and lines[2].strip() == "hint: h"


def test_passing_prints_what_was_covered(capsys):
    checks.check_rope(apply_rotary)
    assert capsys.readouterr().out.startswith("✓ apply_rotary is right on all 3 cases")


# ---- 01 tokenizer

def merge_right_to_left(ids, pair, new_id):
    return list(bpe.merge(tuple(ids[::-1]), pair[::-1], new_id)[::-1])


def merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return ids


def test_merge():
    checks.check_merge(lambda ids, pair, new_id: list(bpe.merge(tuple(ids), pair, new_id)))
    fails(checks.check_merge, merge_right_to_left, "left to right")
    fails(checks.check_merge, merge_first_only, "a pair that occurs twice")


def train_without_split(text, vocab_size):
    return bpe.train([text], vocab_size, r"(?s).+")  # one chunk: merges cross word boundaries


def train_largest_pair_on_ties(text, vocab_size):
    words = {tuple(c.encode()): n for c, n in __import__("collections").Counter(re.findall(r"\S+|\s+", text)).items()}
    merges = []
    for new_id in range(256, vocab_size):
        counts = bpe.count_pairs(words)
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], p))  # largest pair wins a tie: wrong
        words = {bpe.merge(w, best, new_id): n for w, n in words.items()}
        merges.append(best)
    return merges


def test_train_bpe():
    checks.check_train_bpe(lambda text, vocab_size: bpe.train([text], vocab_size, SPLIT_PATTERN))
    fails(checks.check_train_bpe, train_without_split, "crosses a chunk boundary")
    fails(checks.check_train_bpe, train_largest_pair_on_ties, "merge #", "smallest pair")
    fails(checks.check_train_bpe, lambda text, n: bpe.train([text], n, SPLIT_PATTERN) + [(1, 2)], "no more merges", "stop when")
    fails(checks.check_train_bpe, lambda text, n: bpe.train([text], n, SPLIT_PATTERN)[:-1], "expected 3 merges, got 2")


def encode_most_frequent_first(text, merges):
    ids = list(text.encode())
    for new_id, pair in sorted(enumerate(merges, 256), key=lambda x: -x[0]):  # latest merge first: wrong order
        ids = list(bpe.merge(tuple(ids), pair, new_id))
    return ids


def test_encode():
    checks.check_encode(lambda text, merges: bpe.encode(text, merges, SPLIT_PATTERN))
    fails(checks.check_encode, encode_most_frequent_first, "lowest merge index")
    fails(checks.check_encode, lambda text, merges: list(text.encode()), "expected 9 items, got 32")


# ---- 02 data

def test_rank_row_groups():
    checks.check_rank_row_groups(lambda s, r, w, n: [s + (r - s) % w + k * w for k in range(n)])
    fails(checks.check_rank_row_groups, lambda s, r, w, n: [s + r + k * w for k in range(n)],
          "start=5", "not a multiple of world_size")
    fails(checks.check_rank_row_groups, lambda s, r, w, n: list(range(s + r * n, s + (r + 1) * n)), "round-robin" if False else "rank r reads")


def pack_first_fit(docs, row_len):
    row, left = [], []
    for d in docs:
        (row.extend(d) if len(row) + len(d) <= row_len else left.append(d))
    return (row + [0] * row_len)[:row_len], left


def pack_crop_longest(docs, row_len):
    left, row = list(docs), []
    while len(row) < row_len:
        space = row_len - len(row)
        fitting = [d for d in left if len(d) <= space]
        doc = max(fitting, key=len) if fitting else max(left, key=len)
        left.remove(doc)
        row.extend(doc[:space])
    return row, left


def pack_no_crop(docs, row_len):
    left, row = list(docs), []
    while fitting := [d for d in left if len(d) <= row_len - len(row)]:
        doc = max(fitting, key=len)
        left.remove(doc)
        row.extend(doc)
    return row, left


def test_pack_row():
    fails(checks.check_pack_row, pack_first_fit, "first-fit")
    fails(checks.check_pack_row, pack_crop_longest, "crop the shortest")
    fails(checks.check_pack_row, pack_no_crop, "expected exactly", "crop the shortest")


def test_batch_from_rows():
    checks.check_batch_from_rows(lambda rows: (torch.tensor(rows)[:, :-1], torch.tensor(rows)[:, 1:]))
    fails(checks.check_batch_from_rows, lambda rows: (torch.tensor(rows)[:, :-1], torch.tensor(rows)[:, :-1]), "targets")
    fails(checks.check_batch_from_rows, lambda rows: (torch.tensor(rows, dtype=torch.float)[:, :-1], torch.tensor(rows)[:, 1:]),
          "int64")


# ---- 03 model

def test_rms_norm():
    checks.check_rms_norm(norm)
    fails(checks.check_rms_norm, lambda x: F.layer_norm(x, (x.size(-1),)), "LayerNorm")
    fails(checks.check_rms_norm, lambda x: x / x.pow(2).sum(-1, keepdim=True).sqrt(), "MEAN of squares")
    fails(checks.check_rms_norm, lambda x: x / (x.pow(2).mean(-1, keepdim=True) + 1e-3).sqrt(), "eps")


def rope_wrong_sign(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1)


def rope_interleaved(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


def test_rope():
    fails(checks.check_rope, rope_wrong_sign, "wrong way")
    fails(checks.check_rope, rope_interleaved, "(2i, 2i+1)")


def attention_without_mask(q, k, v):
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    return (q @ k.mT / q.size(-1) ** 0.5).softmax(-1) @ v


def attention_repeat(q, k, v):
    g = q.size(1) // k.size(1)
    return F.scaled_dot_product_attention(q, k.repeat(1, g, 1, 1), v.repeat(1, g, 1, 1), is_causal=True)


def attention_unscaled(q, k, v):
    g = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    T = q.size(2)
    return (q @ k.mT).masked_fill(torch.ones(T, T).triu(1).bool(), float("-inf")).softmax(-1) @ v


def test_causal_attention():
    checks.check_causal_attention(attend)
    fails(checks.check_causal_attention, attention_without_mask, "must not see positions after t")
    fails(checks.check_causal_attention, attention_repeat, "h // (H // Hkv)")
    fails(checks.check_causal_attention, attention_unscaled, "1/sqrt(D)")

    def without_the_diagonal(q, k, v):
        T = q.size(2)
        scores = q @ k.mT / q.size(-1) ** 0.5
        return scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(-1), float("-inf")).softmax(-1) @ v

    fails(checks.check_causal_attention, without_the_diagonal, "may attend to itself")


def test_mlp():
    checks.check_mlp(lambda x, w1, w2: F.linear(F.relu(F.linear(x, w1)).square(), w2))
    fails(checks.check_mlp, lambda x, w1, w2: F.linear(F.relu(F.linear(x, w1)), w2), "square the ReLU")
    fails(checks.check_mlp, lambda x, w1, w2: F.linear(F.gelu(F.linear(x, w1)), w2), "GELU")
    fails(checks.check_mlp, lambda x, w1, w2: F.linear(F.linear(x, w1).square(), w2), "ReLU first")


# ---- 04 muon

def ns_unnormalised(G, steps):
    from nanochat.optim import NS_COEFFS
    a, b, c = NS_COEFFS
    X = G.float()
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X


def test_newton_schulz():
    from nanochat.optim import newton_schulz
    checks.check_newton_schulz(lambda G, steps: newton_schulz(G, steps, dtype=torch.float32))
    fails(checks.check_newton_schulz, ns_unnormalised, "Frobenius norm")
    fails(checks.check_newton_schulz, lambda G, steps: G / G.norm(), "4x4")


def test_muon_step():
    from nanochat.optim import newton_schulz

    def step(nesterov, scaled):
        def muon_step(p, grad, buf, lr, momentum):
            buf = buf.lerp(grad, 1 - momentum)
            update = newton_schulz(grad.lerp(buf, momentum) if nesterov else buf, 5, dtype=torch.float32)
            scale = max(1.0, p.size(0) / p.size(1)) ** 0.5 if scaled else 1.0
            return p - lr * scale * update, buf
        return muon_step

    checks.check_muon_step(step(True, True))

    def in_place(p, grad, buf, lr, momentum):
        buf.lerp_(grad, 1 - momentum)
        return p - lr * newton_schulz(grad.lerp(buf, momentum), 5, dtype=torch.float32), buf

    fails(checks.check_muon_step, in_place, "changed its input `buf` in place")
    fails(checks.check_muon_step, step(False, True), "Nesterov")
    fails(checks.check_muon_step, step(True, False), "tall", "sqrt(max(1, rows / cols))")


def adamw(bias_correction=True, decoupled=True, eps_inside=False, decay_after=False, in_place=False):
    def adamw_step(p, grad, m, v, t, lr, betas, eps, wd):
        if in_place:
            p.mul_(1 - lr * wd)
        elif decoupled and not decay_after:
            p = p * (1 - lr * wd)
        elif not decoupled:
            grad = grad + wd * p
        m = betas[0] * m + (1 - betas[0]) * grad
        v = betas[1] * v + (1 - betas[1]) * grad ** 2
        mh, vh = (m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)) if bias_correction else (m, v)
        p = p - lr * mh / ((vh + eps).sqrt() if eps_inside else vh.sqrt() + eps)
        return (p * (1 - lr * wd) if decay_after else p), m, v
    return adamw_step


def test_adamw_step():
    checks.check_adamw_step(adamw())
    fails(checks.check_adamw_step, adamw(bias_correction=False), "1 - beta1**t")
    fails(checks.check_adamw_step, adamw(decoupled=False), "m")  # L2 changes m already
    fails(checks.check_adamw_step, adamw(eps_inside=True), "eps=0.01", "eps goes outside the square root")
    fails(checks.check_adamw_step, adamw(decay_after=True), "decay the weight first")
    fails(checks.check_adamw_step, adamw(in_place=True), "changed its input `p` in place")


# ---- 05 pretrain

def schedule(off_by_one=False):
    def lr_schedule(step, n, warmup_ratio, warmdown_ratio, final):
        warmup, warmdown = round(warmup_ratio * n), round(warmdown_ratio * n)
        if step < warmup:
            return (step if off_by_one else step + 1) / warmup
        if step <= n - warmdown:
            return 1.0
        return final + (1 - final) * (n - step) / warmdown
    return lr_schedule


def test_lr_schedule():
    checks.check_lr_schedule(schedule())
    fails(checks.check_lr_schedule, schedule(off_by_one=True), "off by one in the warmup")
    fails(checks.check_lr_schedule, lambda s, n, w, d, f: 1 - s / n, "num_steps=10")


def test_accumulate_gradients():
    def unscaled(model, micro):
        for x, y in micro:
            model(x, y).backward()

    def zeroing(model, micro):
        for x, y in micro:
            model.zero_grad()
            (model(x, y) / len(micro)).backward()

    fails(checks.check_accumulate_gradients, unscaled, "2.00x too large", "divide each micro-batch's loss")
    fails(checks.check_accumulate_gradients, zeroing, "do not zero the gradients")


def test_bits_per_byte():
    def bpb(nats=False, per_token=False, specials=False):
        def bits_per_byte(losses, targets, token_bytes):
            nbytes = torch.where(targets >= 0, token_bytes[targets.clamp(min=0)], 0)
            keep = (targets >= 0) if specials else nbytes > 0
            total = losses[keep].sum() / (1 if nats else math.log(2))
            return (total / (keep.sum() if per_token else nbytes.sum())).item()
        return bits_per_byte

    checks.check_bits_per_byte(bpb())
    fails(checks.check_bits_per_byte, bpb(nats=True), "divide by ln 2")
    fails(checks.check_bits_per_byte, bpb(per_token=True), "bits per token")
    fails(checks.check_bits_per_byte, bpb(specials=True), "special tokens")


# ---- 06 midtrain, 07 sft

def render(supervise_user=False, supervise_end=True, supervise_output=False):
    def render_conversation(tokenizer, messages):
        ids, mask = tokenizer.render_conversation(messages)
        out = []
        region = None
        for t, m in zip(ids, mask):
            name = tokenizer.id_to_token(t) if t >= tokenizer.get_vocab_size() - 9 else None
            region = name if name in ("<|user_start|>", "<|output_start|>") else region
            in_user, in_output = region == "<|user_start|>", region == "<|output_start|>"
            if name in ("<|user_end|>", "<|output_end|>"):
                region = None
            if supervise_user and in_user or supervise_output and in_output:
                m = 1
            if not supervise_end and name == "<|assistant_end|>":
                m = 0
            out.append(m)
        return ids, out
    return render_conversation


def test_render_conversation():
    checks.check_render_conversation(render())
    fails(checks.check_render_conversation, render(supervise_user=True), "user's turns")
    fails(checks.check_render_conversation, render(supervise_end=False), "supervise <|assistant_end|>")
    fails(checks.check_render_conversation, render(supervise_output=True), "tool's output", "'<|output_start|>'")
    verdict = fails(checks.check_render_conversation, render(supervise_user=True), "token 1, '<|user_start|>': expected mask 0")
    assert "the user's turns" in verdict


def test_inputs_and_targets():
    def shifted(ids, mask, shift=True):
        ids, m = torch.tensor(ids), torch.tensor(mask, dtype=torch.bool)
        return ids[:-1], torch.where(m[1:] if shift else m[:-1], ids[1:], -1)

    checks.check_inputs_and_targets(shifted)
    fails(checks.check_inputs_and_targets, lambda i, m: shifted(i, m, shift=False), "shift the mask")


def test_gsm8k_parts():
    from nanochat.tasks.gsm8k import CALCULATION, answer_parts
    checks.check_gsm8k_parts(answer_parts)

    def keep_value(answer):
        return [dict(p, text=p["text"] + "=" + answer_parts(answer)[i + 1]["text"]) if p["type"] == "python" else p
                for i, p in enumerate(answer_parts(answer))]

    def keep_empty(answer):
        parts, last = [], 0
        for m in CALCULATION.finditer(answer):
            parts += [{"type": "text", "text": answer[last:m.start()]}, {"type": "python", "text": m.group(1)},
                      {"type": "python_output", "text": m.group(2)}]
            last = m.end()
        return parts + [{"type": "text", "text": answer[last:]}]

    fails(checks.check_gsm8k_parts, keep_value, "keep the value out of the python part")
    fails(checks.check_gsm8k_parts, keep_empty, "drop empty text parts")


def test_pack_padded_row():
    from nanochat.checks.data import reference_pack_row
    checks.check_pack_padded_row(lambda docs, row_len, pad_id: reference_pack_row(docs, row_len, pad_id))

    def cropping(docs, row_len, pad_id):
        return pack_crop_longest(docs, row_len)

    fails(checks.check_pack_padded_row, cropping, "never split a conversation")


def test_collate():
    def collate(rows, pad, pad_is_target=False):
        L = max(len(i) for i, _ in rows)
        ids = torch.tensor([i + [pad] * (L - len(i)) for i, _ in rows])
        mask = torch.tensor([m + [int(pad_is_target)] * (L - len(m)) for _, m in rows], dtype=torch.bool)
        return ids[:, :-1], torch.where(mask[:, 1:], ids[:, 1:], -1)

    checks.check_collate(collate)
    fails(checks.check_collate, lambda rows, pad: collate(rows, pad, pad_is_target=True), "padding is not a target")


def test_masked_loss():
    def ce(logits, targets, over_all=False):
        per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-1, reduction="none")
        return per_token.sum() / (targets.numel() if over_all else (targets != -1).sum())

    checks.check_masked_loss(ce)
    fails(checks.check_masked_loss, lambda l, t: ce(l, t, over_all=True), "supervised targets only")
    fails(checks.check_masked_loss, lambda l, t: F.cross_entropy(l.flatten(0, 1), t.flatten(), ignore_index=-1,
                                                                 reduction="sum"), "do not sum")


# ---- 08 grpo

def test_group_advantages():
    fails(checks.check_group_advantages, lambda r: list(r), "subtract the group's mean")
    fails(checks.check_group_advantages,
          lambda r: ((torch.tensor(r) - torch.tensor(r).mean()) / (torch.tensor(r).std() + 1e-4)).tolist(), "no division")


def test_policy_gradient_loss():
    checks.check_policy_gradient_loss(lambda lp, m, a: -(lp * a[:, None] * m).sum() / m.sum())
    fails(checks.check_policy_gradient_loss, lambda lp, m, a: (lp * a[:, None] * m).sum() / m.sum(), "the sign")
    fails(checks.check_policy_gradient_loss, lambda lp, m, a: -(lp * a[:, None]).sum() / m.sum(), "multiply by the mask")
    fails(checks.check_policy_gradient_loss, lambda lp, m, a: -(lp * a[:, None] * m).mean(), "mask.sum()")
    fails(checks.check_policy_gradient_loss,
          lambda lp, m, a: torch.tensor(-(lp * a[:, None] * m).sum().item() / m.sum().item()), "connected to logprobs")


def test_gsm8k_reward():
    from nanochat.tasks.gsm8k import final_number
    checks.check_gsm8k_reward(lambda c, r: float(final_number(c) is not None and final_number(c) == final_number(r)))

    def first_answer(c, r):
        found = re.findall(r"####\s*(-?[0-9][0-9,]*)", c)
        return float(bool(found) and found[0].replace(",", "") == final_number(r))

    def with_commas(c, r):
        found = re.findall(r"####\s*(-?[0-9][0-9,]*)", c)
        return float(bool(found) and found[-1] == re.findall(r"####\s*(-?[0-9][0-9,]*)", r)[-1])

    fails(checks.check_gsm8k_reward, first_answer, "LAST")
    fails(checks.check_gsm8k_reward, with_commas, "'#### 1234'")


# ---- 09 engine

def test_greedy_decode():
    @torch.no_grad()
    def uncached(model, prompt, n):
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        return ids[len(prompt):]

    @torch.no_grad()
    def refeeding(model, prompt, n):
        cache, ids = model.new_kv_cache(1, 4 * (len(prompt) + n)), list(prompt)
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]), kv_cache=cache)[0, -1].argmax()))
        return ids[len(prompt):]

    fails(checks.check_greedy_decode, uncached, "kv_cache=cache")
    fails(checks.check_greedy_decode, refeeding, "3-token prompt")

    @torch.no_grad()
    def token_by_token_prefill(model, prompt, n):
        cache = model.new_kv_cache(1, len(prompt) + n)
        for token in prompt:
            logits = model(torch.tensor([[token]]), kv_cache=cache)
        out = []
        for _ in range(n):
            out.append(int(logits[0, -1].argmax()))
            logits = model(torch.tensor([[out[-1]]]), kv_cache=cache)
        return out

    fails(checks.check_greedy_decode, token_by_token_prefill, "feed the whole prompt in ONE call")


def test_sample_top_k():
    def sampler(top_k=True, temperature_on_probs=False):
        def sample_top_k(logits, k, temperature, generator):
            values, ids = logits.topk(k if top_k else logits.numel())
            probs = torch.softmax(values, -1) / temperature if temperature_on_probs else torch.softmax(values / temperature, -1)
            return int(ids[torch.multinomial(probs, 1, generator=generator)])
        return sample_top_k

    checks.check_sample_top_k(sampler())
    fails(checks.check_sample_top_k, sampler(top_k=False), "not among the top")
    fails(checks.check_sample_top_k, sampler(temperature_on_probs=True), "before the softmax")
    fails(checks.check_sample_top_k, lambda logits, k, t, g: int(logits.argmax()), "away from softmax")

    def ignoring_the_generator(logits, k, temperature, generator):
        values, ids = logits.topk(k)
        return int(ids[torch.distributions.Categorical(logits=values / temperature).sample()])

    fails(checks.check_sample_top_k, ignoring_the_generator, "the same seed gave different samples")


def test_calculator():
    from nanochat.engine import _format, calculator
    checks.check_calculator(calculator)

    def with_eval(expression):
        try:
            return str(eval(expression))
        except Exception:
            return None

    def without_signs(expression):
        def value(node):
            if isinstance(node, ast.Constant):
                return node.value
            if isinstance(node, ast.BinOp):
                return {ast.Add: lambda a, b: a + b, ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
                        ast.Sub: lambda a, b: a - b}[type(node.op)](value(node.left), value(node.right))
            raise ValueError
        try:
            return _format(value(ast.parse(expression, mode="eval").body))
        except Exception:
            return None

    fails(checks.check_calculator, with_eval, "never eval()")

    def unformatted(expression):
        value = calculator(expression)
        return None if value is None else str(float(value))

    fails(checks.check_calculator, unformatted, "written '3.0'; training wrote '3'")
    fails(checks.check_calculator, without_signs, "'-7 * 6'")


# ---- 10 eval

def test_centered_and_chatcore():
    from nanochat.evaluation.chat import CHATCORE_BASELINES, centered, chatcore
    checks.check_centered_accuracy(centered)
    checks.check_chatcore(lambda acc: chatcore(acc)["chatcore"])
    fails(checks.check_centered_accuracy, lambda a, b: a - b, "divide by (1 - baseline)")
    fails(checks.check_chatcore, lambda acc: sum(acc.values()) / len(acc), "centre each task first")
    fails(checks.check_chatcore, lambda acc: sum(centered(a, CHATCORE_BASELINES[n]) for n, a in acc.items()) / 6,
          "tasks present")


def test_choose_letter():
    checks.check_choose_letter(lambda logits, ids: int(logits[ids].argmax()))
    fails(checks.check_choose_letter, lambda logits, ids: int(logits.argmax()), "compare only the letters")
    fails(checks.check_choose_letter, lambda logits, ids: ids[int(logits[ids].argmax())], "not the token id")


def test_core_choice():
    fails(checks.check_core_choice, lambda losses: min(range(len(losses)), key=lambda i: losses[i].sum().item()),
          "mean loss")
    fails(checks.check_core_choice, lambda losses: max(i for i in range(len(losses))
                                                       if losses[i].mean() == min(l.mean() for l in losses)), "first option")
