"""How many bytes a training forward pass keeps for the backward, per token: measured, then fitted.

For each small model shape (width C, layers L, key/value width Ckv) this measures, with the
profiler's allocation records, the memory a bf16 forward allocates and still holds at its end
(the tensors saved for backward, and the loss), at two batch sizes; the difference divided by
the extra tokens is the cost of one token. A least-squares fit of those costs to

    bytes per token = L * (a * C + b * Ckv) + d * C

gives the coefficients nanochat/memory.py uses for the dry-run's memory estimate of big models.
torch.compile's partitioner (the same on CPU and CUDA) recomputes cheap elementwise ops in the
backward instead of saving them, so compiled and eager are measured separately.

    python bench/activation_memory.py            # eager and compiled (compiling takes ~40 s per shape)
    python bench/activation_memory.py --eager    # eager only, seconds
"""
import argparse

import numpy as np
import torch

from nanochat.gpt import GPTConfig
from nanochat.memory import held_after_forward

SHAPES = [(256, 2, 2), (256, 4, 2), (256, 4, 1), (512, 2, 4), (512, 3, 2), (384, 3, 3)]  # (C, L, kv heads); head_dim 128


def per_token_bytes(C: int, L: int, n_kv_head: int, compiled: bool, T: int = 64) -> float:
    """Bytes held after the forward for one more token, from two batch sizes."""
    config = GPTConfig(sequence_len=T, vocab_size=512, n_layer=L, n_head=C // 128, n_kv_head=n_kv_head, n_embd=C)
    small, large = (held_after_forward(config, B, T, compiled) for B in (2, 4))
    return (large - small) / (2 * T)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eager", action="store_true", help="skip the compiled measurements")
    args = parser.parse_args()
    torch.manual_seed(0)
    for compiled in ([False] if args.eager else [False, True]):
        rows, costs = [], []
        for C, L, kv in SHAPES:
            cost = per_token_bytes(C, L, kv, compiled)
            rows.append([L * C, L * kv * 128, C])
            costs.append(cost)
            print(f"{'compiled' if compiled else 'eager':>8}  C={C:4d} L={L} Ckv={kv * 128:4d}: {cost:9.0f} bytes per token", flush=True)
        (a, b, d), residual, *_ = np.linalg.lstsq(np.array(rows, float), np.array(costs), rcond=None)
        fitted = np.array(rows, float) @ np.array([a, b, d])
        worst = max(abs(f - c) / c for f, c in zip(fitted, costs))
        print(f"{'compiled' if compiled else 'eager':>8}  fit: bytes/token = L * ({a:.2f} C + {b:.2f} Ckv) + {d:.2f} C"
              f"   (worst misfit {worst:.1%})\n", flush=True)


if __name__ == "__main__":
    main()
