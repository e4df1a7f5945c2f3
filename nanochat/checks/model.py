"""Checks for 03_model: RMSNorm, rotary embeddings, causal attention with GQA, the ReLU^2 MLP."""
import torch
import torch.nn.functional as F

from nanochat.checks.verdict import Checker, mistake_named
from nanochat.gpt import apply_rotary, attend, norm, rotary_cos_sin


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def check_rms_norm(rms_norm) -> None:
    """rms_norm(x) -> x scaled so that every vector along the last dim has RMS 1 (no learned scale)."""
    c = Checker(rms_norm)
    for x, case in [(torch.tensor([[3.0, 4.0]]), "x = [[3, 4]]"),
                    (_randn(2, 5, 8) * 3 + 1, "x of shape (2, 5, 8), mean 1, std 3"),
                    (_randn(4, 64, seed=1) * 1e-2, "small values (std 0.01), where eps matters")]:
        got = c.call(x.clone(), case=case)
        mistakes = {"that is LayerNorm: RMSNorm does not subtract the mean": F.layer_norm(x, (x.size(-1),)),
                    "divide by the root of the MEAN of squares, not of the sum": x / x.pow(2).sum(-1, keepdim=True).sqrt(),
                    "normalise over the last dimension (each vector), not the whole tensor": x / x.pow(2).mean().sqrt()}
        c.expect(got, norm(x), case, lambda g: mistake_named(g, mistakes, "x / sqrt(mean(x**2 over the last dim) + eps), "
                                                                  "eps = torch.finfo(x.dtype).eps (as F.rms_norm)"),
                 atol=1e-4)
    c.passed("a hand example, shifted and scaled random vectors, small values where eps matters")


def _interleaved(x, cos, sin):
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2)


def check_rope(apply_rope) -> None:
    """apply_rope(x, cos, sin) -> x (B, T, H, D) with each channel pair (i, i + D/2) rotated by its angle."""
    c = Checker(apply_rope)
    for B, T, H, D, case in [(1, 1, 1, 2, "one position, one pair: D=2"), (2, 6, 3, 8, "x of shape (2, 6, 3, 8)"),
                             (1, 16, 2, 16, "16 positions, head_dim 16")]:
        x = _randn(B, T, H, D, seed=D)
        cos, sin = rotary_cos_sin(T, D) if T > 1 else (torch.tensor([[0.6]]), torch.tensor([[0.8]]))
        cos, sin = cos[None, :, None, :], sin[None, :, None, :]
        got = c.call(x.clone(), cos, sin, case=case)
        x1, x2 = x.chunk(2, dim=-1)
        mistakes = {
            "you rotate the wrong way: the rotation is (x1 cos - x2 sin, x1 sin + x2 cos)":
                torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos], dim=-1),
            "you pair channels (2i, 2i+1); this model pairs channel i with channel i + D/2 (x.chunk(2, dim=-1))":
                _interleaved(x, cos, sin)}
        c.expect(got, apply_rotary(x, cos, sin), f"{case}, cos/sin of shape {tuple(cos.shape)}",
                 lambda g: mistake_named(g, mistakes, "split x into halves x1, x2 (pairs (i, i + D/2)) and return "
                                                      "cat(x1 cos - x2 sin, x1 sin + x2 cos)"))
    c.passed("D=2 by hand, random q/k of several shapes; rotation direction and channel pairing")


def check_causal_attention(causal_attention) -> None:
    """causal_attention(q, k, v) -> softmax(q k^T / sqrt(D), causal) v; q: (B, H, T, D), k, v: (B, Hkv, T, D)."""
    c = Checker(causal_attention)
    for B, H, Hkv, T, D, case in [(1, 1, 1, 1, 4, "a single position"), (2, 2, 2, 5, 8, "2 heads, no grouping"),
                                  (1, 4, 2, 6, 8, "4 query heads sharing 2 key/value heads (GQA)"),
                                  (2, 6, 3, 7, 16, "6 query heads, 3 key/value heads")]:
        q, k, v = _randn(B, H, T, D, seed=1), _randn(B, Hkv, T, D, seed=2), _randn(B, Hkv, T, D, seed=3)
        got = c.call(q.clone(), k.clone(), v.clone(), case=case)
        expected = attend(q, k, v)
        scores = q @ k.repeat_interleave(H // Hkv, 1).mT / D ** 0.5
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        groups = H // Hkv
        mistakes = {
            "position t must not see positions after t: mask the scores above the diagonal with -inf before softmax":
                scores.softmax(-1) @ v.repeat_interleave(groups, 1),
            "a position may attend to itself: mask only strictly above the diagonal (triu(diagonal=1))":
                scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(-1), float("-inf")).softmax(-1)
                @ v.repeat_interleave(groups, 1),
            "scale the scores by 1/sqrt(D) (head_dim), so their spread does not grow with D":
                (scores * D ** 0.5).masked_fill(~causal, float("-inf")).softmax(-1) @ v.repeat_interleave(groups, 1),
            "query head h shares key/value head h // (H // Hkv) (repeat_interleave), not h % Hkv (repeat)":
                F.scaled_dot_product_attention(q, k.repeat(1, groups, 1, 1), v.repeat(1, groups, 1, 1), is_causal=True)}
        c.expect(got, expected, f"{case}: q {tuple(q.shape)}, k and v {tuple(k.shape)}",
                 lambda g: mistake_named(g, mistakes,
                                         "scores = q @ k^T / sqrt(D), -inf above the diagonal, softmax over keys, times v"))
    c.passed("one position, plain multi-head, grouped-query attention; causality, scale and head grouping")


def check_mlp(mlp) -> None:
    """mlp(x, w_fc, w_proj) -> w_proj(relu(w_fc x)^2), with weights stored (out, in) like nn.Linear."""
    c = Checker(mlp)
    for C, case in [(4, "width 4"), (16, "width 16")]:
        x, w_fc, w_proj = _randn(2, 3, C, seed=C), _randn(4 * C, C, seed=1) / C ** 0.5, _randn(C, 4 * C, seed=2) / C
        got = c.call(x.clone(), w_fc, w_proj, case=case)
        h = x @ w_fc.T
        mistakes = {"square the ReLU: relu(h) ** 2 (ReLU^2), not relu(h)": F.relu(h) @ w_proj.T,
                    "ReLU first, then square: squaring alone lets negative pre-activations through": h.square() @ w_proj.T,
                    "this model uses ReLU^2, not GELU": F.gelu(h) @ w_proj.T}
        c.expect(got, F.relu(h).square() @ w_proj.T, f"{case}: x {tuple(x.shape)}, w_fc {tuple(w_fc.shape)}",
                 lambda g: mistake_named(g, mistakes, "h = x @ w_fc.T, then relu(h) squared, then @ w_proj.T"), atol=1e-4)
    c.passed("two widths; the activation, and weights stored (out, in)")
