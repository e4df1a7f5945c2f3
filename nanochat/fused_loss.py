"""The language-model head, softcap and cross-entropy, fused and chunked: the full logits never exist.

For N = B*T rows of hidden states x (N, C) and the head's weight W (V, C), training needs

    z = x W^T            (N, V)   the logits
    s = cap * tanh(z/cap)         the softcap: no logit beyond +-cap
    loss_i = logsumexp(s_i) - s_i[y_i]     (0 where y_i = -1: not a target)

Done naively, autograd keeps z, tanh(z/cap), s and the softmax, each N x V floats: at
B*T = 4096 and V = 32768 that is 512 MiB apiece, and the elementwise work on them costs
a large share of a CPU step. Here rows go through in chunks, and no chunk's logits outlive
it: they are turned into the gradients right away, with

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

Each elementwise pass over a chunk x V block reads and writes memory and does little
arithmetic, so on a CPU the passes, not the flops, set the cost. A chunk therefore lives in
two blocks, t and e, worked on in place, and the softmax needs no max pass: s = cap * t lies in
(-cap, cap), so exp(s - cap) is in (e^(-2 cap), 1], which neither overflows nor (for cap up
to ~40) underflows in fp32. With S = sum_j exp(s_j - cap): logsumexp(s) = cap + log S and
softmax(s) = exp(s - cap) / S.
"""
import torch

DEFAULT_CHUNK_ROWS = 1024  # 1024 x 32768 fp32 = 128 MiB per live block
MAX_SOFTCAP = 40.0  # exp(-2 * 40) ~ 2e-35 is still a normal fp32 number: the shift by cap stays exact enough


class _Blocks:
    """The two (chunk, V) fp32 blocks every chunk works in, allocated once per call.

    A fresh 128 MiB block costs its page faults on first touch, every chunk again; reusing
    two blocks pays them once. The last chunk may be shorter: it uses the blocks' first rows.
    """

    def __init__(self, rows: int, vocab: int, device):
        self.t = torch.empty(rows, vocab, dtype=torch.float32, device=device)
        self.e = torch.empty(rows, vocab, dtype=torch.float32, device=device)

    def take(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.t[:rows], self.e[:rows]


def _chunk_forward(x, w, y, softcap, blocks: _Blocks):
    """One chunk: (losses, logsumexp, t = tanh(z/cap), e = exp(s - cap), S = e summed) for targets y (-1: loss 0)."""
    t, e = blocks.take(x.size(0))
    if x.dtype == torch.float32:
        torch.mm(x, w.t(), out=t)                 # z, (chunk, V), in the block t lives in
    else:
        t.copy_(x @ w.t())                        # bf16 product, kept in fp32
    t.mul_(1.0 / softcap).tanh_()                 # t = tanh(z/cap), in place
    torch.sub(t, 1.0, out=e).mul_(softcap).exp_()  # exp(s - cap) = exp(cap (t - 1)), in the second block
    sum_e = e.sum(dim=1)
    lse = softcap + sum_e.log()
    picked = softcap * t.gather(1, y.clamp(min=0).unsqueeze(1)).squeeze(1)  # s at the target
    return torch.where(y >= 0, lse - picked, 0.0), lse, t, e, sum_e


def _chunk_grad_logits(t, e, sum_e, y, row_scale):
    """dL/dz for one chunk, in e's memory: (softmax(s) - onehot(y)) * row_scale * (1 - t^2); rows with y = -1 get 0.

    Overwrites e and t (t becomes t^2): both are dead after this.
    """
    scale = torch.where(y >= 0, row_scale, 0.0)
    g = e.mul_((scale / sum_e).unsqueeze(1))                                # softmax(s) * scale
    g.scatter_add_(1, y.clamp(min=0).unsqueeze(1), -scale.unsqueeze(1))    # minus the one-hot, scaled
    t.square_()
    return g.addcmul_(g, t, value=-1.0)                                     # g (1 - t^2) = g - g t^2


def _all_losses(x, weight, targets, softcap, chunk_rows):
    """Every row's (loss, logsumexp), chunk by chunk: no gradient work (evaluation, or a backward to come)."""
    w = weight.to(x.dtype)  # the weight is stored fp32; the matmul runs in the activations' dtype
    blocks = _Blocks(min(chunk_rows, x.size(0)), weight.size(0), x.device)
    chunks = [_chunk_forward(x[i:i + chunk_rows], w, targets[i:i + chunk_rows], softcap, blocks)[:2]
              for i in range(0, x.size(0), chunk_rows)]
    return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])


def _accumulate(grad_x, grad_w, g, w, x_rows, rows) -> None:
    """grad_x[rows] = g W and grad_w += g^T x, written straight into their memory (no (V, C) temporary)."""
    if grad_x is not None:
        torch.mm(g, w, out=grad_x[rows])
    if grad_w is not None:
        if grad_w.dtype == g.dtype:
            grad_w.addmm_(g.t(), x_rows)
        else:  # bf16 activations: the product in bf16, accumulated in fp32
            grad_w.add_((g.t() @ x_rows).float())


class _FusedMeanCrossEntropy(torch.autograd.Function):
    """The mean loss over the real targets, with both gradients computed in the forward pass."""

    @staticmethod
    def forward(ctx, x, weight, targets, softcap: float, chunk_rows: int):
        w = weight.to(x.dtype)
        count = (targets >= 0).sum().clamp(min=1)
        scale = (1.0 / count).float()
        total = torch.zeros((), device=x.device, dtype=torch.float32)
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device)  # contiguous: mm writes rows into it
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32)
        blocks = _Blocks(min(chunk_rows, x.size(0)), weight.size(0), x.device)
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, min(start + chunk_rows, x.size(0)))
            y = targets[rows]
            losses, _, t, e, sum_e = _chunk_forward(x[rows], w, y, softcap, blocks)
            total = total + losses.sum()
            g = _chunk_grad_logits(t, e, sum_e, y, scale.expand(y.shape)).to(x.dtype)
            _accumulate(grad_x, grad_w, g, w, x[rows], rows)
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
        losses, _ = _all_losses(x, weight, targets, softcap, chunk_rows)
        ctx.save_for_backward(x, weight, targets)
        ctx.softcap, ctx.chunk_rows = softcap, chunk_rows
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        x, weight, targets = ctx.saved_tensors
        softcap, chunk_rows = ctx.softcap, ctx.chunk_rows
        w = weight.to(x.dtype)
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, device=weight.device, dtype=torch.float32) if ctx.needs_input_grad[1] else None
        blocks = _Blocks(min(chunk_rows, x.size(0)), weight.size(0), x.device)
        for start in range(0, x.size(0), chunk_rows):
            rows = slice(start, min(start + chunk_rows, x.size(0)))
            _, _, t, e, sum_e = _chunk_forward(x[rows], w, targets[rows], softcap, blocks)  # recomputed
            g = _chunk_grad_logits(t, e, sum_e, targets[rows], grad_losses[rows].float()).to(x.dtype)
            _accumulate(grad_x, grad_w, g, w, x[rows], rows)
        return grad_x, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None, None


def softcap_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float,
                          reduction: str = "none", chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """The softcapped head x W^T against targets (-1 = none), in chunks: per-row losses (N,) fp32
    for reduction="none", their mean over the real targets for "mean"."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")
    if not 0 < softcap <= MAX_SOFTCAP:
        raise ValueError(f"softcap must be in (0, {MAX_SOFTCAP:g}] for the shifted softmax, got {softcap}")
    if not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        losses, _ = _all_losses(x, weight, targets, softcap, chunk_rows)
        return losses if reduction == "none" else losses.sum() / (targets >= 0).sum().clamp(min=1)
    if reduction == "mean":
        return _FusedMeanCrossEntropy.apply(x, weight, targets, softcap, chunk_rows)
    return _ChunkedSoftcapCrossEntropy.apply(x, weight, targets, softcap, chunk_rows)
