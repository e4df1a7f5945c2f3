"""Muon and AdamW: Newton-Schulz, AdamW == torch's, and 2 ranks == 1 process."""
import pytest
import torch

import dist_optim_worker as worker
from torchrun import launch_two_ranks
from nanochat.gpt import GPTConfig, build_model
from nanochat.optim import MuonAdamW, muon_momentum, newton_schulz

# The quintic s -> a s + b s^3 + c s^5 settles singular values in a band around 1, not at 1
# (measured: ~0.68-1.13 once converged). Its largest value on [0, 1.2] is ~1.2025, a hard ceiling.
BAND = (0.65, 1.21)


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (128, 512), (384, 96)])
def test_newton_schulz_singular_values_in_band(shape):
    torch.manual_seed(0)
    s = torch.linalg.svdvals(newton_schulz(torch.randn(shape)))
    assert BAND[0] < s.min() and s.max() < BAND[1], (s.min().item(), s.max().item())


def test_newton_schulz_square_matrix_bulk_in_band():
    # A random square matrix has singular values close to 0, which 5 steps cannot lift
    # all the way: the bulk lands in the band, the smallest few stay lower.
    torch.manual_seed(0)
    s = torch.linalg.svdvals(newton_schulz(torch.randn(256, 256)))
    assert s.max() < BAND[1]
    assert ((s > BAND[0]) & (s < BAND[1])).float().mean() > 0.8


def test_newton_schulz_in_bf16_and_keeps_singular_vectors():
    torch.manual_seed(0)
    G = torch.randn(64, 192)
    s = torch.linalg.svdvals(newton_schulz(G, dtype=torch.bfloat16).float())
    assert BAND[0] - 0.05 < s.min() and s.max() < BAND[1] + 0.05
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    orthogonal = U @ Vh
    cosine = torch.nn.functional.cosine_similarity(newton_schulz(G).flatten(), orthogonal.flatten(), dim=0)
    assert cosine > 0.95  # it approximates U V^T, the nearest semi-orthogonal matrix


def test_muon_momentum_warmup():
    assert muon_momentum(0) == pytest.approx(0.85)
    assert muon_momentum(150) == pytest.approx(0.90)
    assert muon_momentum(300) == pytest.approx(0.95)
    assert muon_momentum(10_000) == pytest.approx(0.95)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch(weight_decay):
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(8, 5))
    ref = torch.nn.Parameter(ours.detach().clone())
    hyper = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-8, weight_decay=weight_decay)
    opt = MuonAdamW([dict(kind="adamw", params=[ours], **hyper)])
    ref_opt = torch.optim.AdamW([ref], **hyper)
    for _ in range(5):
        grad = torch.randn(8, 5)
        ours.grad, ref.grad = grad.clone(), grad.clone()
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(ours, ref, atol=1e-7, rtol=1e-6)


def test_muon_step_size_is_lr_over_sqrt_fan_in():
    # The update is ~orthogonal and shape-scaled: its entry RMS is ~lr/sqrt(fan_in) for any
    # shape and any gradient scale (the band of singular values costs up to ~25%).
    torch.manual_seed(0)
    for rows, cols in [(64, 256), (256, 64)]:
        for grad_scale in (1e-4, 1e2):
            p = torch.nn.Parameter(torch.zeros(rows, cols))
            opt = MuonAdamW([dict(kind="muon", params=[p], lr=0.02, momentum=0.95, nesterov=True, ns_steps=5)])
            p.grad = grad_scale * torch.randn(rows, cols)
            opt.step()
            rms = p.detach().pow(2).mean().sqrt().item()
            assert 0.75 < rms / (0.02 / cols ** 0.5) < 1.1, (rows, cols, grad_scale, rms)


def test_muon_rejects_non_matrices():
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([dict(kind="muon", params=[torch.nn.Parameter(torch.zeros(10))], lr=0.1,
                        momentum=0.9, nesterov=True, ns_steps=5)])


def test_a_multi_rank_state_of_the_old_ownership_rule_is_refused(monkeypatch):
    model, optimizer = worker.make_model()
    worker.train(model, optimizer, range(1))
    state = optimizer.state_dict()
    state["world_size"] = 2
    del state["ownership"]  # saved before the rule was tagged: round-robin by index
    monkeypatch.setattr("nanochat.common.get_world_size", lambda: 2)
    with pytest.raises(ValueError, match="older 'round-robin' rule.*--force"):
        optimizer.load_state_dict(state)


def test_state_dict_refuses_another_world_size():
    model, optimizer = worker.make_model()
    worker.train(model, optimizer, range(1))
    state = optimizer.state_dict()
    state["world_size"] = 2
    with pytest.raises(ValueError, match="saved by 2 rank"):
        optimizer.load_state_dict(state)


@pytest.mark.distributed
def test_two_ranks_match_one_process(tmp_path):
    launch_two_ranks(worker.__file__, tmp_path, timeout=300)

    model, optimizer = worker.make_model()  # one process, whole batches: the reference
    worker.train(model, optimizer, range(worker.TOTAL_STEPS))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    n_params = len(list(model.parameters()))
    owners = [owner for _, _, owner in optimizer.ownership(world_size=2)]
    assert [r["owned"] for r in ranks] == [owners.count(0), owners.count(1)]  # state is sharded
    assert 0 < owners.count(0) < n_params
    # Each owner averaged the two ranks' gradients: the same as one process on the whole batch.
    # (Muon and Adam barely notice a gradient's scale, so a sum would pass the weights check below.)
    owned_grads = {**ranks[0]["grads"], **ranks[1]["grads"]}
    assert len(owned_grads) == n_params
    for name, p in model.named_parameters():
        torch.testing.assert_close(owned_grads[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)
    for name, value in model.state_dict().items():
        assert torch.equal(ranks[0]["state"][name], ranks[1]["state"][name]), f"ranks disagree on {name}"
        torch.testing.assert_close(ranks[0]["state"][name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_ownership_chunks_same_shaped_matrices():
    model = build_model(GPTConfig(sequence_len=8, vocab_size=32, n_layer=3, n_head=2, n_kv_head=1, n_embd=16))
    optimizer = model.setup_optimizers()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    units = optimizer.units(world_size=2)
    owned = optimizer.ownership(world_size=2)
    assert sorted(id(p) for _, p, _ in owned) == sorted(id(p) for p in params)  # each parameter once
    for group, tensors, owners in units:
        assert all(p.shape == tensors[0].shape for p in tensors)
        assert all(any(p is q for q in group["params"]) for p in tensors)  # a unit never mixes groups
        assert len(tensors) in (1, 2)  # a chunk of world_size or a leftover
        if len(tensors) == 2:
            assert owners == [0, 1]
    # 3 layers x (q, proj), (k, v), fc, mlp proj: per shape 6, 6, 3, 3 matrices -> 3 + 3 + 1 + 1 chunks
    # and 1 + 1 leftovers, plus lm_head and wte: 4 leftovers, spread round-robin
    assert [len(t) for _, t, _ in units].count(2) == 8
    leftovers = [owners[0] for _, t, owners in units if len(t) == 1]
    assert sorted(leftovers) == [0, 0, 1, 1]
    counts = [sum(owner == r for _, _, owner in owned) for r in (0, 1)]
    assert counts == [len(params) // 2, len(params) // 2]  # balanced
    assert {owner for _, _, owner in optimizer.ownership()} == {0}  # one process owns everything


def test_a_chunk_with_some_gradients_missing_is_refused(monkeypatch):
    model, optimizer = worker.make_model()
    model(*worker.batch(0)).backward()
    monkeypatch.setattr("nanochat.common.get_world_size", lambda: 2)  # chunks of 2 (no messages are reached)
    chunk = next(params for _, params, _ in optimizer.units(2) if len(params) == 2)
    chunk[1].grad = None
    with pytest.raises(ValueError, match="1 of 2 same-shaped"):
        optimizer.step()
