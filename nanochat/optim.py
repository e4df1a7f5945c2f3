"""Muon for the 2-D matrices, AdamW for the rest: one optimizer, for one process or N ranks.

Muon (Keller Jordan, 2024) takes SGD-momentum's update for a weight matrix and replaces
it by the nearest semi-orthogonal matrix (all singular values ~1), computed with a few
Newton-Schulz iterations. Every direction of the update then moves by the same amount,
however lopsided the raw gradient was. It only makes sense for matrices that map one
vector space to another, so the embedding, the lm_head (and any vector parameters) use AdamW.

Distributed (torch.distributed initialised with world_size W > 1) this optimizer replaces
DDP. Each parameter has one owner rank, and only the owner keeps its optimizer state and
computes its update (ZeRO-1: the optimizer state is sharded; every rank still holds all the
weights and gradients). Muon needs whole matrices (Newton-Schulz mixes all of a
matrix), so ownership is by whole tensors. The rule (`MuonAdamW.units`):
  - within a param group, same-shaped tensors are taken W at a time: tensor j of such a
    chunk belongs to rank j. A chunk travels as one reduce-scatter (rank j receives the sum
    of every rank's gradient of tensor j) and, after the update, one all-gather (every rank
    receives every owner's new values).
  - the tensors left over (the last count % W of each shape, and tensors alone in their group
    such as the embedding and lm_head) go round-robin, each on its own: reduce onto the
    owner, update, broadcast from it.
d20 on 8 GPUs has 120 block matrices of 3 shapes (80 square, 20 + 20 of the MLP): 14 chunks,
8 leftovers, and the 2 AdamW tensors: 24 + 24 collectives a step instead of 122 + 122. All of
them start at once, so the owners compute while later chunks are still on the wire; the price
is one concatenated copy of the chunked gradients in flight (~1.4 GB at d20, after backward has
freed the activations). reduce-scatter (of one concatenated tensor), all-gather, reduce and
broadcast exist on nccl and gloo, so there is no backend-specific path. With W == 1 every
tensor is rank 0's and nothing is communicated: the single-process optimizer is the same code.

The communication starts after backward, not during it. On paper that costs little: d20 on
8xH100 sends its 2.2 GB of fp32 gradients once each way per step, ~10-15 ms over NVLink,
against a ~0.56 s step at 40% MFU: ~3%. Overlapping it with backward (DDP's way: launch
each reduce from a gradient hook) would not win that back here either, because the GPU
profiles compile the model and a compiled backward is one graph that hands over all
gradients at its end.
"""
import math

import torch
import torch.distributed as dist

from nanochat import common

# Newton-Schulz quintic: each step maps a singular value s -> a*s + b*s^3 + c*s^5. These
# coefficients (from the Muon write-up) make the slope at 0 steep (a = 3.4), so even small
# singular values grow fast, at the price of settling in a band around 1 (~0.7-1.2), not at 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


@torch.no_grad()
def newton_schulz(G: torch.Tensor, steps: int = 5, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximately orthogonalise G: keep its singular vectors, push its singular values to ~1.

    For G = U S V^T this returns ~U V^T. Runs in bf16 on CUDA (sm80+), fp32 elsewhere,
    unless dtype says otherwise; returns that dtype.
    """
    a, b, c = NS_COEFFS
    X = G.to(dtype or common.compute_dtype(G.device))
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT  # work on the wide orientation, so X @ X^T is the smaller square matrix
    X = X / (X.norm() + 1e-7)  # the Frobenius norm bounds the spectral norm: every s is now <= 1
    for _ in range(steps):
        A = X @ X.mT                     # = U S^2 U^T
        X = a * X + (b * A + c * A @ A) @ X  # = U (a S + b S^3 + c S^5) V^T
    return X.mT if tall else X


def muon_momentum(step: int, warmup_steps: int = 300, start: float = 0.85, end: float = 0.95) -> float:
    """Muon's momentum at this step: ramps linearly from start to end over the first warmup_steps.

    The training loop sets it each step:
        for group in optimizer.param_groups:
            if group["kind"] == "muon": group["momentum"] = muon_momentum(step)
    """
    return start + min(step / warmup_steps, 1.0) * (end - start)


def muon_update(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
    """Nesterov momentum, orthogonalise, then a step of the same size whatever the gradient's scale."""
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(p)
    buf, momentum = state["momentum_buffer"], group["momentum"]
    buf.lerp_(grad, 1 - momentum)  # buf = momentum * buf + (1 - momentum) * grad
    update = grad.lerp(buf, momentum) if group["nesterov"] else buf  # Nesterov: look ahead along buf
    update = newton_schulz(update, group["ns_steps"])
    # A semi-orthogonal (rows, cols) matrix has entry RMS 1/sqrt(max(rows, cols)). This scale
    # brings it to 1/sqrt(cols) = 1/sqrt(fan_in) for every shape: the same scale as the init.
    shape_scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
    p.add_(update.to(p.dtype), alpha=-group["lr"] * shape_scale)


def adamw_update(p: torch.Tensor, grad: torch.Tensor, state: dict, group: dict) -> None:
    """AdamW: bias-corrected moment estimates, decoupled weight decay (same math as torch.optim.AdamW)."""
    if not state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p)     # running mean of the gradient
        state["exp_avg_sq"] = torch.zeros_like(p)  # running mean of its square
    state["step"] += 1
    lr, (beta1, beta2), t = group["lr"], group["betas"], state["step"]
    if group["weight_decay"]:
        p.mul_(1 - lr * group["weight_decay"])  # decoupled: decay the weight, not the gradient
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    # Both averages start at 0, so early on they are too small by (1 - beta^t): divide it out.
    denom = state["exp_avg_sq"].sqrt().div_(math.sqrt(1 - beta2 ** t)).add_(group["eps"])
    p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1 ** t))


UPDATES = {"muon": muon_update, "adamw": adamw_update}


def owner_rank(index: int, world_size: int) -> int:
    """The rank that owns leftover tensor number `index` (counted over all groups): round-robin."""
    return index % world_size


class MuonAdamW(torch.optim.Optimizer):
    """Each param group has kind "muon" (lr, momentum, nesterov, ns_steps) or "adamw" (lr, betas, eps, weight_decay).

    Every rank must hold the same parameters in the same order, and the same ones must
    have gradients (a chunk or leftover whose gradients are None is skipped; a chunk with
    only some of them None is refused).
    """

    OWNERSHIP = "shape-chunks"  # the rule units() implements; saved with the state (see load_state_dict)

    def __init__(self, param_groups: list[dict]):
        for group in param_groups:
            if group.get("kind") not in UPDATES:
                raise ValueError(f"param group kind must be one of {list(UPDATES)}, got {group.get('kind')!r}")
            if group["kind"] == "muon":
                for p in group["params"]:
                    if p.ndim != 2:
                        raise ValueError(f"Muon only orthogonalises 2-D matrices; got a {tuple(p.shape)} "
                                         f"parameter: put it in an 'adamw' group")
        super().__init__(param_groups, defaults={})

    def units(self, world_size: int | None = None) -> list[tuple[dict, list[torch.Tensor], list[int]]]:
        """(group, tensors, owner ranks) in the order step() communicates them.

        A unit of W tensors is a chunk (one reduce-scatter, one all-gather; owners 0..W-1);
        a unit of one tensor is a leftover (one reduce, one broadcast). world_size defaults
        to the process group's (1 without one).
        """
        world = world_size or common.get_world_size()
        units, leftovers = [], 0
        for group in self.param_groups:
            by_shape = {}  # first appearance order, so every rank builds the same units
            for p in group["params"]:
                by_shape.setdefault((tuple(p.shape), p.dtype), []).append(p)
            for same in by_shape.values():
                full = len(same) - len(same) % world
                for i in range(0, full, world):
                    units.append((group, same[i:i + world], list(range(world))))
                for p in same[full:]:
                    units.append((group, [p], [owner_rank(leftovers, world)]))
                    leftovers += 1
        return units

    def ownership(self, world_size: int | None = None) -> list[tuple[dict, torch.Tensor, int]]:
        """(group, parameter, owner rank) for every parameter, in the order step() visits them."""
        return [(group, p, owner) for group, params, owners in self.units(world_size)
                for p, owner in zip(params, owners)]

    @torch.no_grad()
    def step(self) -> None:
        """Average the gradients across ranks and update every parameter (each on its owner rank).

        Afterwards an owner's p.grad holds the mean gradient it used (on other ranks p.grad is
        scratch: a backend may have written partial sums into it).
        """
        rank, world = common.get_rank(), common.get_world_size()
        units = []
        for group, params, owners in self.units(world):
            missing = sum(p.grad is None for p in params)
            if missing and missing < len(params):
                raise ValueError(f"{missing} of {len(params)} same-shaped {tuple(params[0].shape)} parameters have no "
                                 f"gradient: they travel together, so all or none of them must have one")
            if not missing:
                units.append((group, params, owners))
        # 1. Sum each gradient onto its owner, all units at once: the owners below start
        #    computing as soon as their unit has arrived, while later ones are still moving.
        pending = [self._reduce(params, owners, rank) if world > 1 else (None, None) for _, params, owners in units]
        gathers = []
        for (group, params, owners), (work, received) in zip(units, pending):
            if work is not None:
                work.wait()
            # 2. The owner turns the sum into the mean and updates its tensor.
            for p, owner in zip(params, owners):
                if owner == rank:
                    if received is not None:
                        p.grad.copy_(received)
                    if world > 1:
                        p.grad.div_(world)
                    UPDATES[group["kind"]](p, p.grad, self.state[p], group)
            # 3. Everyone receives the owners' new values.
            if world > 1:
                gathers.append(self._gather(params, owners, rank))
        for work in gathers:
            work.wait()

    @staticmethod
    def _reduce(params: list[torch.Tensor], owners: list[int], rank: int):
        """Start summing a unit's gradients onto their owners: (pending work, buffer receiving
        this rank's sum, or None when it lands in the owner's p.grad)."""
        if len(params) == 1:
            return dist.reduce(params[0].grad, dst=owners[0], async_op=True), None
        received = torch.empty_like(params[owners.index(rank)].grad)  # its own buffer: no input aliased
        stacked = torch.cat([p.grad for p in params])  # (W * rows, cols): block j is summed onto rank j
        return dist.reduce_scatter_tensor(received, stacked, async_op=True), received

    @staticmethod
    def _gather(params: list[torch.Tensor], owners: list[int], rank: int):
        """Start sending the owners' new values to every rank; returns the pending work."""
        if len(params) == 1:
            return dist.broadcast(params[0], src=owners[0], async_op=True)
        return dist.all_gather(params, params[owners.index(rank)], async_op=True)

    def state_dict(self) -> dict:
        """This rank's shard: state only for the parameters it owns, tagged with the world size
        and the ownership rule."""
        state = super().state_dict()
        state["world_size"] = common.get_world_size()
        state["ownership"] = self.OWNERSHIP
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Load this rank's shard; the run must have as many ranks as the one that saved it."""
        state_dict = dict(state_dict)
        saved_world = state_dict.pop("world_size", 1)
        saved_rule = state_dict.pop("ownership", "round-robin")  # states saved before chunks had no tag
        world = common.get_world_size()
        if saved_world != world:
            raise ValueError(f"this optimizer state was saved by {saved_world} rank(s) but this run has {world}: "
                             f"each rank owns different parameters, so resume with {saved_world} rank(s)")
        if world > 1 and saved_rule != self.OWNERSHIP:
            raise ValueError(f"this optimizer state was sharded by the older '{saved_rule}' rule, this code shards "
                             f"by '{self.OWNERSHIP}': finish the run with the code that started it, or start the "
                             f"stage over (nanochat run --force)")
        super().load_state_dict(state_dict)
