"""The GPT: sizes from the depth dial, causality, the KV cache, precision, a tiny overfit."""
import math

import pytest
import torch

from nanochat.gpt import GPT, GPTConfig, build_model, config_for_depth, count_params, norm, sample_next_token


def tiny_config(**overrides) -> GPTConfig:
    """A model small enough to run in milliseconds, with GQA (4 query heads share 2 kv heads)."""
    sizes = dict(sequence_len=32, vocab_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=64)
    return GPTConfig(**{**sizes, **overrides})


def tiny_model(seed=0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return build_model(tiny_config(**overrides), "cpu")


def randomised_model(**overrides) -> GPT:
    """A tiny model whose output projections are not zero, so every layer matters."""
    model = tiny_model(**overrides)
    with torch.no_grad():
        for block in model.blocks:
            torch.nn.init.normal_(block.attn.c_proj.weight, std=0.1)
            torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.1)
        torch.nn.init.normal_(model.lm_head.weight, std=0.1)
    return model


def test_config_for_depth_sizes():
    d20 = config_for_depth(20)
    assert (d20.n_embd, d20.n_head, d20.n_kv_head, d20.head_dim) == (1280, 10, 10, 128)
    assert (config_for_depth(2).n_embd, config_for_depth(2).n_head) == (128, 1)
    assert (config_for_depth(3).n_embd, config_for_depth(3).n_head) == (256, 2)  # 192 rounds up to 2 heads
    assert config_for_depth(32).n_embd == 2048
    assert config_for_depth(20, kv_group_size=2).n_kv_head == 5
    with pytest.raises(ValueError, match="kv_group_size"):
        config_for_depth(20, kv_group_size=3)


@pytest.mark.parametrize("config", [tiny_config(), tiny_config(n_kv_head=4), tiny_config(n_kv_head=1),
                                    config_for_depth(4, vocab_size=1000), config_for_depth(20, kv_group_size=5)])
def test_count_params_formula_matches_module(config):
    with torch.device("meta"):
        model = GPT(config)
    assert count_params(config) == model.num_params()


def test_d20_has_561M_params():
    assert count_params(config_for_depth(20, vocab_size=65536)) == 560_988_160


def test_first_loss_is_near_uniform():
    model = tiny_model()
    idx = torch.randint(0, 96, (4, 32))
    loss = model(idx, idx).item()
    assert abs(loss - math.log(96)) < 0.05  # lm_head starts tiny: ~uniform predictions


def test_causality_future_tokens_do_not_change_past_logits():
    model = randomised_model()  # zero-initialised output projections would hide a leak
    idx = torch.randint(0, 96, (2, 20))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, 96, (2, 8))
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_kv_cache_decoding_equals_full_forward(n_kv_head):
    model = randomised_model(n_kv_head=n_kv_head)
    idx = torch.randint(0, 96, (2, 20))
    full = model(idx)
    cache = model.new_kv_cache(batch_size=2, max_len=20)
    pieces = [model(idx[:, :8], kv_cache=cache)]             # prefill into an empty cache
    pieces.append(model(idx[:, 8:12], kv_cache=cache))       # a chunk after a prefix
    for t in range(12, 20):                                  # then one token at a time
        pieces.append(model(idx[:, t:t + 1], kv_cache=cache))
    assert cache.get_pos() == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_batch_expansion_from_one_prompt():
    model = randomised_model()
    prompt = torch.randint(0, 96, (1, 10))
    one = model.new_kv_cache(batch_size=1, max_len=16)
    model(prompt, kv_cache=one)
    many = model.new_kv_cache(batch_size=3, max_len=16)
    many.prefill(one)
    next_tokens = torch.tensor([[5], [17], [42]])
    logits = model(next_tokens, kv_cache=many)[:, -1]
    for row in range(3):
        full = model(torch.cat([prompt, next_tokens[row:row + 1]], dim=1))[:, -1]
        torch.testing.assert_close(logits[row:row + 1], full, atol=1e-5, rtol=1e-5)


def test_kv_cache_full_raises_clear_error():
    model = tiny_model()
    cache = model.new_kv_cache(batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.zeros(1, 5, dtype=torch.long), kv_cache=cache)


def test_loss_reduction_none_and_ignore_index():
    model = randomised_model()
    idx = torch.randint(0, 96, (2, 16))
    targets = idx.roll(-1, dims=1)
    targets[:, -4:] = -1
    per_token = model(idx, targets, loss_reduction="none")
    assert per_token.shape == (2, 16)
    assert torch.all(per_token[:, -4:] == 0)
    torch.testing.assert_close(per_token[:, :-4].mean(), model(idx, targets))


def test_tiny_model_overfits_one_batch():
    model = tiny_model()
    optimizer = model.setup_optimizers()
    idx = torch.randint(0, 96, (4, 32))
    x, y = idx[:, :-1], idx[:, 1:]
    for _ in range(40):
        loss = model(x, y)
        loss.backward()
        optimizer.step()
        model.zero_grad(set_to_none=True)
    assert loss.item() < 0.1, f"loss {loss.item():.3f} after 40 steps on one batch (starts at ~{math.log(96):.2f})"


def test_bf16_forward_and_backward_on_cpu():
    torch.manual_seed(0)
    fp32 = build_model(tiny_config(), "cpu", dtype=torch.float32)
    bf16 = build_model(tiny_config(), "cpu", dtype=torch.bfloat16)
    bf16.load_state_dict(fp32.state_dict())
    assert bf16.wte.weight.dtype == torch.float32  # master weights stay fp32
    idx = torch.randint(0, 96, (2, 16))
    logits = bf16(idx)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    loss = bf16(idx, idx)
    loss.backward()
    assert bf16.lm_head.weight.grad.dtype == torch.float32
    assert abs(loss.item() - fp32(idx, idx).item()) < 0.05


def test_setup_optimizers_groups_and_lr_scaling():
    model = build_model(config_for_depth(2, vocab_size=64, sequence_len=16), "cpu")
    optimizer = model.setup_optimizers(embedding_lr=0.2)
    kinds = {g["kind"]: g for g in optimizer.param_groups}
    assert all(p.ndim == 2 for p in kinds["muon"]["params"])
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    wte_group = next(g for g in optimizer.param_groups if g["params"][0] is model.wte.weight)
    assert wte_group["lr"] == pytest.approx(0.2 * (128 / 768) ** -0.5)


def test_estimate_flops_counts_matmuls_and_attention():
    config = config_for_depth(20, vocab_size=65536)
    with torch.device("meta"):
        model = GPT(config)
    matmul_params = count_params(config) - 65536 * 1280
    assert model.estimate_flops() == 6 * matmul_params + 12 * 20 * 10 * 128 * 2048


def test_generate_greedy_matches_argmax_and_is_seeded():
    model = randomised_model()
    prompt = [1, 2, 3]
    greedy = list(model.generate(prompt, 6, temperature=0.0))
    ids = prompt[:]
    for _ in range(6):
        ids.append(model(torch.tensor([ids]))[0, -1].argmax().item())
    assert greedy == ids[3:]
    assert list(model.generate(prompt, 6, top_k=1)) == greedy  # top-1 sampling is greedy
    assert list(model.generate(prompt, 8, seed=7)) == list(model.generate(prompt, 8, seed=7))


def test_sample_next_token_respects_top_k():
    logits = torch.tensor([[0.0, 5.0, 4.0, -3.0]]).repeat(200, 1)
    rng = torch.Generator().manual_seed(0)
    picks = sample_next_token(logits, rng, temperature=1.0, top_k=2)
    assert picks.shape == (200, 1) and set(picks.flatten().tolist()) == {1, 2}


def test_attention_probs_are_what_the_layer_applies():
    """Weights x values through c_proj must give the layer's own attention output, GQA included."""
    model = randomised_model(n_head=4, n_kv_head=2, n_embd=64)
    idx = torch.randint(0, model.config.vocab_size, (2, 12))
    cos, sin = model.rotary(0, 12)
    x = norm(model.wte(idx))
    x = model.blocks[0](x, cos, sin)  # the input of layer 1
    attn, h = model.blocks[1].attn, norm(x)
    probs = model.attention_probs(idx, 1)  # (B, H, T, T)
    assert probs.shape == (2, 4, 12, 12)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 12)) and (probs.triu(1) == 0).all()  # causal rows
    _, _, v = attn.project_qkv(h, cos, sin)
    v = v.transpose(1, 2).repeat_interleave(2, dim=1)  # (B, H, T, D)
    y = (probs @ v).transpose(1, 2).reshape(2, 12, -1)
    assert torch.allclose(attn.c_proj(y), attn(h, cos, sin), atol=1e-5)


@pytest.mark.parametrize("returns_lse", [False, True])
def test_the_flash_attention_path_takes_and_gives_the_models_layout(monkeypatch, returns_lse):
    """FA3 cannot run here, so a stand-in with its interface (B, T, H, D), causal, GQA inside, takes the
    calls the model would send it on an H100: the model's output must not change."""
    from nanochat import gpt

    def fake_fa3(q, k, v, causal):
        assert causal and q.shape[:2] == k.shape[:2] and q.size(2) % k.size(2) == 0  # (B, T, heads, D)
        group = q.size(2) // k.size(2)
        k, v = (t.repeat_interleave(group, dim=2) for t in (k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                             is_causal=True).transpose(1, 2)
        return (y, None) if returns_lse else y

    torch.manual_seed(0)
    model = build_model(GPTConfig(sequence_len=16, vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64))
    idx = torch.randint(0, 64, (2, 16))
    sdpa = model(idx)
    calls = []
    monkeypatch.setattr(gpt, "_fa3_func", lambda *a, **k: calls.append(1) or fake_fa3(*a, **k))
    monkeypatch.setattr(gpt, "_fa3_applies", lambda q: True)
    assert torch.allclose(model(idx), sdpa, atol=1e-5) and len(calls) == 2  # one call per layer
    cache = model.new_kv_cache(batch_size=2, max_len=16)
    model(idx[:, :8], kv_cache=cache)  # with a cache: SDPA (decode needs the cached keys), never FA3
    assert len(calls) == 2
