"""The fused, chunked head + softcap + cross-entropy equals the plain computation: losses and gradients."""
import pytest
import torch
import torch.nn.functional as F

from nanochat.gpt import SOFTCAP, build_model, config_for_depth
from nanochat.fused_loss import softcap_cross_entropy


def reference(x, weight, targets, softcap):
    """The naive version: full logits, softcap, cross-entropy (what the fused one must equal)."""
    s = softcap * torch.tanh((x @ weight.to(x.dtype).t()).float() / softcap)
    return F.cross_entropy(s, targets, ignore_index=-1, reduction="none")


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("chunk_rows", [7, 64, 1000])
def test_losses_and_gradients_match_the_plain_computation(dtype, tolerance, chunk_rows):
    torch.manual_seed(0)
    n, c, v = 50, 16, 97
    x = (torch.randn(n, c) * 3).to(dtype).requires_grad_()
    weight = torch.randn(v, c, requires_grad=True)  # stored fp32, as the model's
    targets = torch.randint(0, v, (n,))
    targets[::5] = -1  # not targets: no loss, no gradient
    grad_out = torch.rand(n)  # an arbitrary weighting of the rows, as a masked mean would give
    ours = softcap_cross_entropy(x, weight, targets, SOFTCAP, "none", chunk_rows)
    (ours * grad_out).sum().backward()
    gx, gw = x.grad.clone(), weight.grad.clone()
    x.grad, weight.grad = None, None
    theirs = reference(x, weight, targets, SOFTCAP)
    (theirs * grad_out).sum().backward()
    assert ours.dtype == torch.float32 and (ours[::5] == 0).all()
    torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(gx.float(), x.grad.float(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(gw, weight.grad, atol=tolerance, rtol=tolerance)
    assert gw.dtype == weight.dtype and gx.dtype == x.dtype


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("chunk_rows", [7, 1000])
def test_the_mean_computes_its_gradients_in_the_forward_pass_and_still_matches(dtype, tolerance, chunk_rows):
    torch.manual_seed(1)
    x = torch.randn(40, 16).to(dtype).requires_grad_()
    weight = torch.randn(97, 16, requires_grad=True)
    targets = torch.randint(0, 97, (40,))
    targets[::3] = -1
    ours = softcap_cross_entropy(x, weight, targets, SOFTCAP, "mean", chunk_rows)
    (3.0 * ours).backward()  # a scaled loss (gradient accumulation divides it) scales the gradients
    gx, gw = x.grad.clone(), weight.grad.clone()
    x.grad, weight.grad = None, None
    theirs = reference(x, weight, targets, SOFTCAP)
    theirs = theirs.sum() / (targets >= 0).sum()
    (3.0 * theirs).backward()
    torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(gx.float(), x.grad.float(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(gw, weight.grad, atol=tolerance, rtol=tolerance)
    with torch.no_grad():  # evaluation: the same losses, no gradient work
        torch.testing.assert_close(softcap_cross_entropy(x, weight, targets, SOFTCAP, "none", chunk_rows),
                                   reference(x, weight, targets, SOFTCAP), atol=tolerance, rtol=tolerance)


def test_the_model_trains_the_same_with_either_loss():
    torch.manual_seed(0)
    model = build_model(config_for_depth(1, vocab_size=300, sequence_len=32))
    idx = torch.randint(0, 300, (3, 32))
    targets = torch.randint(0, 300, (3, 32))
    targets[:, :5] = -1
    results = {}
    for fused in (True, False):
        model.zero_grad()
        model.fused_loss = fused
        loss = model(idx, targets)
        loss.backward()
        per_token = model(idx, targets, loss_reduction="none")
        results[fused] = (loss.detach(), per_token.detach(), [p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(results[True][0], results[False][0])
    torch.testing.assert_close(results[True][1], results[False][1])
    assert results[True][1].shape == (3, 32) and (results[True][1][:, :5] == 0).all()
    for fused_grad, plain_grad in zip(results[True][2], results[False][2]):
        torch.testing.assert_close(fused_grad, plain_grad, atol=1e-5, rtol=1e-4)


def test_it_compiles():
    torch.manual_seed(0)
    x = torch.randn(20, 8, requires_grad=True)
    weight = torch.randn(33, 8, requires_grad=True)
    targets = torch.randint(-1, 33, (20,))
    compiled = torch.compile(lambda a, b: softcap_cross_entropy(a, b, targets, SOFTCAP, "mean", 8), dynamic=False)
    compiled(x, weight).backward()
    gx = x.grad.clone()
    x.grad = None
    plain = reference(x, weight, targets, SOFTCAP)
    (plain.sum() / (targets >= 0).sum()).backward()
    torch.testing.assert_close(gx, x.grad, atol=1e-5, rtol=1e-5)


def test_a_short_training_run_has_the_same_loss_curve_either_way():
    curves = {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = build_model(config_for_depth(1, vocab_size=300, sequence_len=32))
        model.fused_loss = fused
        optimizer = model.setup_optimizers()
        idx = torch.randint(0, 300, (4, 32), generator=torch.Generator().manual_seed(1))
        curve = []
        for _ in range(6):  # the same batch each step: the model memorises it, the loss falls
            targets = torch.roll(idx, -1, dims=1)
            targets[:, -1] = -1
            loss = model(idx, targets)
            loss.backward()
            optimizer.step()
            model.zero_grad(set_to_none=True)
            curve.append(loss.item())
        curves[fused] = curve
    assert curves[True][-1] < curves[True][0]  # it learns
    torch.testing.assert_close(torch.tensor(curves[True]), torch.tensor(curves[False]), atol=1e-4, rtol=1e-4)


def test_a_softcap_beyond_the_shifted_softmaxs_range_is_refused():
    x, w, y = torch.randn(4, 8), torch.randn(16, 8), torch.tensor([1, 2, -1, 3])
    with pytest.raises(ValueError, match=r"softcap must be in \(0, 40\]"):
        softcap_cross_entropy(x, w, y, softcap=50.0)
