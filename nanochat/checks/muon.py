"""Checks for 04_muon: Newton-Schulz orthogonalisation, a Muon step, an AdamW step."""
import torch

from nanochat.checks.verdict import Checker, mistake_named
from nanochat.optim import NS_COEFFS, adamw_update, muon_update, newton_schulz


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _unchanged(c, case, **tensors_and_copies):
    """Fail if the learner changed an input in place (the task asks for new tensors)."""
    for name, (tensor, copy) in tensors_and_copies.items():
        c.require(torch.equal(tensor, copy), case, f"your function changed its input `{name}` in place",
                  "return new tensors (p - ..., buf.lerp(...)) instead of p.sub_(...), buf.lerp_(...)")


def check_newton_schulz(orthogonalise) -> None:
    """orthogonalise(G, steps) -> ~U V^T for G = U S V^T, by the quintic iteration with NS_COEFFS (fp32)."""
    c = Checker(orthogonalise)
    a, b, cc = NS_COEFFS
    for shape, steps, case in [((4, 4), 5, "a 4x4 matrix, 5 steps"), ((8, 32), 5, "a wide 8x32 matrix"),
                               ((48, 12), 5, "a tall 48x12 matrix"), ((16, 16), 1, "one step on 16x16"),
                               ((16, 16), 5, "a matrix of huge entries (x 1000)")]:
        G = _randn(*shape, seed=shape[0]) * (1000 if "huge" in case else 1)
        got = c.call(G.clone(), steps, case=case)
        unnormalised = G.clone()
        for _ in range(steps):
            A = unnormalised @ unnormalised.mT
            unnormalised = a * unnormalised + (b * A + cc * A @ A) @ unnormalised
        c.expect(got, newton_schulz(G, steps, dtype=torch.float32), f"{case}: G of shape {tuple(shape)}",
                 lambda g: mistake_named(g, {
                     "divide G by its Frobenius norm first: the iteration only converges when every singular value is <= 1":
                         unnormalised},
                     "X = G / ||G||_F; then `steps` times: A = X X^T, X = a X + (b A + c A A) X, with (a, b, c) = NS_COEFFS"),
                 atol=1e-3, rtol=1e-3)
    s = torch.linalg.svdvals(c.call(_randn(32, 64, seed=9), 5, case="a 32x64 matrix"))
    c.require(bool((s > 0.5).all() and (s < 1.5).all()), "a random 32x64 matrix, 5 steps",
              f"singular values should all land near 1 (0.5..1.5), got {s.min():.3f}..{s.max():.3f}")
    c.passed("square, wide and tall matrices, one step, huge entries; singular values pushed to ~1")


def reference_muon_step(p, grad, buf, lr, momentum):
    """The package's muon_update on copies: returns the new parameter and momentum buffer."""
    p, state = p.clone(), {"momentum_buffer": buf.clone()}
    muon_update(p, grad, state, {"momentum": momentum, "nesterov": True, "ns_steps": 5, "lr": lr})
    return p, state["momentum_buffer"]


def check_muon_step(muon_step) -> None:
    """muon_step(p, grad, buf, lr, momentum) -> (new p, new buf): Nesterov momentum, orthogonalise, shape-scaled step."""
    c = Checker(muon_step)
    for shape, case in [((8, 8), "a square 8x8 weight"), ((32, 8), "a tall 32x8 weight (more outputs than inputs)"),
                        ((8, 32), "a wide 8x32 weight")]:
        p, grad, buf = _randn(*shape, seed=1), _randn(*shape, seed=2), _randn(*shape, seed=3) * 0.5
        lr, momentum = 0.02, 0.95
        given = (p.clone(), grad.clone(), buf.clone())
        got = c.call(*given, lr, momentum, case=case)
        _unchanged(c, case, p=(given[0], p), grad=(given[1], grad), buf=(given[2], buf))
        expected = reference_muon_step(p, grad, buf, lr, momentum)
        new_buf = buf.lerp(grad, 1 - momentum)
        scale = max(1.0, shape[0] / shape[1]) ** 0.5
        orth = lambda u: newton_schulz(u, 5, dtype=torch.float32)  # noqa: E731
        mistakes = {
            "that is plain momentum: Nesterov steps along grad.lerp(buf, momentum), a look ahead, not along buf":
                p - lr * scale * orth(new_buf),
            "scale the step by sqrt(max(1, rows / cols)), so every shape moves its outputs by the same RMS":
                p - lr * orth(grad.lerp(new_buf, momentum)),
            "the buffer is an average: buf = momentum * buf + (1 - momentum) * grad (buf.lerp_(grad, 1 - momentum))":
                p - lr * scale * orth(grad.lerp(momentum * buf + grad, momentum))}
        c.require(isinstance(got, tuple) and len(got) == 2, case, "expected a pair (new_p, new_buf)")
        c.expect(got[1], expected[1], f"{case}: the new momentum buffer",
                 "buf = momentum * buf + (1 - momentum) * grad", atol=1e-4)
        c.expect(got[0], expected[0], f"{case}: the new parameter", lambda g: mistake_named(g, mistakes,
                 "update = orthogonalise(grad.lerp(buf, momentum)); p - lr * sqrt(max(1, rows/cols)) * update "
                 "(this uses your orthogonalise: make its check pass first)"), atol=1e-4)
    c.passed("square, tall and wide weights; the momentum buffer, Nesterov's look-ahead and the shape scale")


def check_adamw_step(adamw_step) -> None:
    """adamw_step(p, grad, m, v, t, lr, betas, eps, weight_decay) -> (p, m, v) after step t (1, 2, ...)."""
    c = Checker(adamw_step)
    betas = (0.8, 0.95)
    p, m, v = _randn(5, 3, seed=1), torch.zeros(5, 3), torch.zeros(5, 3)
    # three steps in a row, then a step where eps matters (tiny gradients, large eps) and one with a large lr * wd
    settings = [(0.01, 1e-8, 0.1, 1.0), (0.01, 1e-8, 0.1, 1.0), (0.01, 1e-8, 0.1, 1.0), (0.01, 1e-2, 0.1, 1e-3),
                (0.2, 1e-8, 0.5, 1.0)]
    for t, (lr, eps, wd, grad_scale) in enumerate(settings, start=1):
        grad = _randn(5, 3, seed=10 + t) * grad_scale
        state = {"step": t - 1, "exp_avg": m.clone(), "exp_avg_sq": v.clone()}
        expected_p = p.clone()
        adamw_update(expected_p, grad, state, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": wd})
        case = f"step t={t} (lr={lr}, betas={betas}, eps={eps}, weight_decay={wd}, gradients of size ~{grad_scale})"
        inputs = {"p": p.clone(), "grad": grad.clone(), "m": m.clone(), "v": v.clone()}
        given = (p.clone(), grad.clone(), m.clone(), v.clone())
        got = c.call(*given, t, lr, betas, eps, wd, case=case)
        _unchanged(c, case, **{name: (x, inputs[name]) for name, x in zip(inputs, given)})
        c.require(isinstance(got, tuple) and len(got) == 3, case, "expected a triple (p, m, v)")
        m1, v1 = m.lerp(grad, 1 - betas[0]), v * betas[1] + (1 - betas[1]) * grad ** 2
        mh, vh = m1 / (1 - betas[0] ** t), v1 / (1 - betas[1] ** t)
        l2 = p - lr * (m.lerp(grad + wd * p, 1 - betas[0]) / (1 - betas[0] ** t)) / (
            (v * betas[1] + (1 - betas[1]) * (grad + wd * p) ** 2).sqrt() / (1 - betas[1] ** t) ** 0.5 + eps)
        mistakes = {
            "divide m by (1 - beta1**t) and v by (1 - beta2**t): both start at 0, so early averages are too small":
                p * (1 - lr * wd) - lr * m1 / (v1.sqrt() + eps),
            "decoupled weight decay shrinks the weight, p *= 1 - lr * wd; it is not added to the gradient (that is L2)": l2,
            "apply the decoupled weight decay: p *= 1 - lr * weight_decay, before the Adam step": p - lr * mh / (vh.sqrt() + eps),
            "decay the weight first, then take the Adam step (p *= 1 - lr*wd; p -= ...), not the other way round":
                (p - lr * mh / (vh.sqrt() + eps)) * (1 - lr * wd),
            "eps goes outside the square root: sqrt(v_hat) + eps": p * (1 - lr * wd) - lr * mh / (vh + eps).sqrt()}
        c.expect(got[1], state["exp_avg"], f"{case}: m", "m = beta1 * m + (1 - beta1) * grad", atol=1e-5)
        c.expect(got[2], state["exp_avg_sq"], f"{case}: v", "v = beta2 * v + (1 - beta2) * grad**2", atol=1e-5)
        c.expect(got[0], expected_p, f"{case}: p", lambda g: mistake_named(g, mistakes,
                 "p *= 1 - lr*wd; p -= lr * (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps)"), atol=1e-6)
        p, m, v = expected_p, state["exp_avg"], state["exp_avg_sq"]
    c.passed("five steps in a row: both moments, bias correction, eps outside the root, decoupled weight decay first")
