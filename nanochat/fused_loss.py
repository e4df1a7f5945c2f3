"""The language-model head, softcap and cross-entropy, fused and chunked: the full logits never exist.

For N = B*T rows of hidden states x (N, C) and the head's weight W (V, C), training needs

    z = x W^T            (N, V)   the logits
    s = cap * tanh(z/cap)         the softcap: no logit beyond +-cap
    loss_i = logsumexp(s_i) - s_i[y_i]     (0 where y_i = -1: not a target)

Done naively, autograd keeps z, tanh(z/cap), s and the softmax, each N x V floats: at
B*T = 4096 and V = 32768 that is 512 MiB apiece, and the elementwise work on them costs
a large share of a CPU step. Here rows go through in chunks: the forward keeps only each
row's logsumexp (N floats); the backward recomputes a chunk's logits and turns them into
the gradients right away, with

    dloss_i/ds_ij = softmax(s_i)_j - [j = y_i]
    ds/dz         = 1 - tanh(z/cap)^2
    dL/dx = (g * dloss/dz) W,   dL/dW = sum over chunks of (g * dloss/dz)^T x

(g: the incoming gradient of each row's loss). Peak extra memory is a few chunk x V blocks.

Two ways to get the gradients, chosen by the reduction:
  mean   (training): every row's g is the same, 1/(number of targets), so the gradients are
         worked out in the forward pass, chunk by chunk, while the chunk's logits are at hand;
         the backward only scales them. The matmuls are those of the plain computation.
  none   (per-token losses: bpb, RL's weighted tokens): g differs per row and is known only
         in the backward, which recomputes each chunk's logits (one more N*C*V matmul).
Without gradients (evaluation) only the losses are computed, chunk by chunk.
"""
import torch

DEFAULT_CHUNK_ROWS = 1024  # 1024 x 32768 fp32 = 128 MiB per live block


def _chunk_losses(x, w, y, softcap):
    """One chunk: (losses, logsumexp, tanh(z/cap)) for rows x against targets y (-1: loss 0)."""
    t = torch.tanh((x @ w.t()).float() / softcap)  # (chunk, V)
    s = softcap * t
    lse = torch.logsumexp(s, dim=-1)
    picked = s.gather(1, y.clamp(min=0).unsqueeze(1)).squeeze(1)
    return torch.where(y >= 0, lse - picked, torch.zeros_like(picked)), lse, t


def _chunk_grad_logits(t, lse, y, row_scale, softcap):
    """dL/dz for one chunk: (softmax(s) - onehot(y)) * row_scale * (1 - t^2); rows with y = -1 get 0."""
    g = torch.exp(softcap * t - lse.unsqueeze(1))  # softmax(s)
    g.scatter_add_(1, y.clamp(min=0).unsqueeze(1), -(y >= 0).float().unsqueeze(1))  # minus the one-hot
    g.mul_(torch.where(y >= 0, row_scale, torch.zeros_like(row_scale)).unsqueeze(1))
    return g.mul_(1 - t * t)


def _all_losses(x, weight, targets, softcap, chunk_rows):
    """Every row's (loss, logsumexp), chunk by chunk: no gradient work (evaluation, or a backward to come)."""
    w = weight.to(x.dtype)  # the weight is stored fp32; the matmul runs in the activations' dtype
    chunks = [_chunk_losses(x[i:i + chunk_rows], w, targets[i:i + chunk_rows], softcap)[:2]
              for i in range(0, x.size(0), chunk_rows)]
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])


class _FusedMeanCrossEntropy(torch.autograd.Function):
    """The mean loss over the real targets, with both gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, x, weight, targets, softcap: float, chunk_rows: int):
        w = weight.to(x.dtype)
        count = (targets >= 0).sum().clamp(min=1)
        scale = (1.0 / count).float()
        total = torch.zeros((), device=x.device, dtype=torch.float32)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, min(start + chunk_rows, x.size(0)))
            y = targets[rows]
            losses, lse, t = _chunk_losses(x[rows], w, y, softcap)
            total = total + losses.sum()
            g = _chunk_grad_logits(t, lse, y, scale.expand(y.shape), softcap).to(x.dtype)
            grad_x[rows] = g @ w
            grad_w.add_((g.t() @ x[rows]).float())
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        return total * scale

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        return (grad_x * grad_loss.to(grad_x.dtype), (grad_w * grad_loss).to(ctx.weight_dtype), None, None, None)


class _ChunkedSoftcapCrossEntropy(torch.autograd.Function):
    """Per-row losses; the backward recomputes each chunk's logits to apply the rows' own gradients."""

    @staticmethod
    def forward(ctx, x, weight, targets, softcap: float, chunk_rows: int):
        losses, lse = _all_losses(x, weight, targets, softcap, chunk_rows)
        ctx.save_for_backward(x, weight, targets, lse)
        ctx.softcap, ctx.chunk_rows = softcap, chunk_rows
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        x, weight, targets, lse = ctx.saved_tensors
        softcap, chunk_rows = ctx.softcap, ctx.chunk_rows
        w = weight.to(x.dtype)
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, min(start + chunk_rows, x.size(0)))
            t = torch.tanh((x[rows] @ w.t()).float() / softcap)  # recomputed, (chunk, V)
            g = _chunk_grad_logits(t, lse[rows], targets[rows], grad_losses[rows].float(), softcap).to(x.dtype)
            if grad_x is not None:
                grad_x[rows] = g @ w
            if grad_w is not None:
                grad_w.add_((g.t() @ x[rows]).float())
        return grad_x, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None, None


def softcap_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                          reduction: str = "none", chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """The softcapped head x W^T against targets (-1 = none), in chunks: per-row losses (N,) fp32
    for reduction="none", their mean over the real targets for "mean"."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        losses, _ = _all_losses(x, weight, targets, softcap, chunk_rows)
        return losses if reduction == "none" else losses.sum() / (targets >= 0).sum().clamp(min=1)
    if reduction == "mean":
        return _FusedMeanCrossEntropy.apply(x, weight, targets, softcap, chunk_rows)
    return _ChunkedSoftcapCrossEntropy.apply(x, weight, targets, softcap, chunk_rows)
