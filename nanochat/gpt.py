"""The GPT: one depth dial sets every size; RoPE, QK-norm, ReLU^2 MLP, GQA, no biases, a KV cache.

Shapes in comments use B batch, T tokens (time), C = n_embd (width), H query heads,
Hkv key/value heads, D = head_dim, V vocab, L layers.

Precision is chosen explicitly, not with autocast. Weights are always stored in fp32 (the
"master" copy the optimizer updates). Activations live in the model's compute dtype (bf16
on CUDA sm80+, fp32 on CPU, see nanochat.common.compute_dtype): the embedding output is
cast to it, and every Linear casts its fp32 weight to the activation dtype at the moment of
the matmul. The logits are cast back to fp32 for the softcap and the loss.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanochat import common
from nanochat.fused_loss import softcap_cross_entropy
from nanochat.optim import MuonAdamW

HEAD_DIM = 128        # every model uses heads of 128 channels; depth only changes how many
ROTARY_BASE = 10_000  # RoPE's slowest frequency turns once every ~2*pi*10000 tokens
SOFTCAP = 15.0        # logits are squashed smoothly into (-15, 15)
ROTARY_FACTOR = 10    # precompute rotations for 10x the training context (long generations)

# PyTorch >= 2.5 lets SDPA share key/value heads between query heads itself (GQA).
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)

# FlashAttention-3 is faster on Hopper (sm90) GPUs; it is optional and used only when it
# imports and the first GPU is a Hopper. Everything else goes through PyTorch's SDPA.
# Any failure to import counts as "not installed": a wheel built for another torch or CUDA
# fails with OSError (undefined symbol) or RuntimeError, not ImportError, and must not stop a run.
try:
    from flash_attn_interface import flash_attn_func as _fa3_func
except Exception:  # noqa: BLE001 - see above
    _fa3_func = None
USE_FA3 = _fa3_func is not None and torch.cuda.is_available() and torch.cuda.get_device_capability(0) == (9, 0)


@dataclass
class GPTConfig:
    """Every size of the model. Use config_for_depth() rather than filling it in by hand."""
    sequence_len: int = 2048
    vocab_size: int = 65536
    n_layer: int = 20
    n_head: int = 10
    n_kv_head: int = 10
    n_embd: int = 1280

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head} (GQA groups)")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even: RoPE rotates channel pairs")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def config_for_depth(depth: int, vocab_size: int = 65536, sequence_len: int = 2048, kv_group_size: int = 1) -> GPTConfig:
    """Derive every size from the one dial, depth, the way nanochat does.

    width = 64 * depth, rounded up to whole heads of 128 channels:
      d2 -> 128 (1 head), d3/d4 -> 256 (2 heads), d20 -> 1280 (10 heads), d32 -> 2048 (16).
    Tiny depths therefore get one or two full-size heads rather than many tiny heads.
    kv_group_size query heads share one key/value head (GQA). The default 1 (plain
    multi-head attention, n_kv_head == n_head) is what nanochat's speedrun uses; a larger
    group shrinks the KV cache by that factor at inference, for a small loss in quality.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    n_embd = math.ceil(64 * depth / HEAD_DIM) * HEAD_DIM
    n_head = n_embd // HEAD_DIM
    if n_head % kv_group_size:
        raise ValueError(f"depth {depth} has {n_head} heads, which kv_group_size={kv_group_size} does not divide")
    return GPTConfig(sequence_len=sequence_len, vocab_size=vocab_size, n_layer=depth,
                     n_head=n_head, n_kv_head=n_head // kv_group_size, n_embd=n_embd)


def count_params(config: GPTConfig) -> int:
    """The parameter count in closed form (no biases, no norm weights: only matrices)."""
    C, V, L, D = config.n_embd, config.vocab_size, config.n_layer, config.head_dim
    attention = C * config.n_head * D + 2 * C * config.n_kv_head * D + config.n_head * D * C  # q, k+v, out
    mlp = C * 4 * C + 4 * C * C                                                               # up, down
    return V * C + L * (attention + mlp) + C * V                                              # wte, blocks, lm_head


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without a learned scale: every vector gets RMS 1 (one fewer thing to tune)."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_cos_sin(seq_len: int, head_dim: int, base: float = ROTARY_BASE, device=None):
    """Angles for RoPE: position t turns channel pair i by t * base^(-2i/D). Returns cos, sin: (T, D/2)."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    positions = torch.arange(seq_len, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair (i, i + D/2) of q or k by its position's angle.

    x: (B, T, H, D), cos/sin: (1, T, 1, D/2). A rotation keeps lengths, and the dot
    product of two rotated vectors depends only on the difference of their angles, so
    attention scores see relative positions.
    """
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention where the Tq queries are the last Tq of the Tk keys. q: (B, H, Tq, D), k/v: (B, Hkv, Tk, D)."""
    gqa = {}
    if q.size(1) != k.size(1):  # GQA: each key/value head serves a group of query heads
        if _SDPA_HAS_GQA:
            gqa = {"enable_gqa": True}
        else:  # older PyTorch: copy each key/value head once per query head in its group
            k, v = (t.repeat_interleave(q.size(1) // k.size(1), dim=1) for t in (k, v))
    Tq, Tk = q.size(2), k.size(2)
    if Tq == Tk:  # training, or the first chunk into an empty cache
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, **gqa)
    # Decoding with a cache: query i sits at position Tk - Tq + i and sees keys 0..that position.
    mask = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(diagonal=Tk - Tq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **gqa)


def _fa3_applies(q: torch.Tensor) -> bool:
    """FlashAttention-3 takes this call: installed, a Hopper GPU, bf16 (its only fast dtype here)."""
    return USE_FA3 and q.is_cuda and q.dtype == torch.bfloat16


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v, causal, as the model computes it. q: (B, T, H, D), k/v: (B, T, Hkv, D) -> (B, T, H, D).

    FlashAttention-3 on a Hopper GPU in bf16, else PyTorch's SDPA (attend). Notebook 03 calls
    this too, so its walk-through takes the same kernel as the model on any machine.
    """
    if _fa3_applies(q):
        y = _fa3_func(q, k, v, causal=True)  # FA3 takes (B, T, H, D) and does GQA itself
        return y[0] if isinstance(y, tuple) else y  # some FA3 versions also return the log-sum-exp
    return attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


class CastLinear(nn.Linear):
    """A bias-free Linear whose fp32 weight is cast to the input's dtype for the matmul."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class KVCache:
    """Keys and values of the tokens seen so far, so each new token costs one step, not a re-run.

    k and v are pre-allocated: (L, B, Hkv, max_len, D). `pos` counts the tokens already in
    the cache; the model writes every layer's new k/v at pos..pos+T, then advances pos by T.
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_len: int, device, dtype):
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0

    def get_pos(self) -> int:
        """How many tokens are cached: the position of the next token."""
        return self.pos

    def reset(self) -> None:
        """Forget everything (the buffers are reused)."""
        self.pos = 0

    def insert_kv(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor):
        """Store one layer's new k, v (B, Hkv, T, D) and return all its keys and values so far."""
        end = self.pos + k.size(2)
        if end > self.max_len:
            raise ValueError(f"KV cache is full: {end} tokens do not fit in max_len={self.max_len}; make a bigger cache")
        self.k[layer_idx, :, :, self.pos:end] = k
        self.v[layer_idx, :, :, self.pos:end] = v
        return self.k[layer_idx, :, :, :end], self.v[layer_idx, :, :, :end]

    def advance(self, num_tokens: int) -> None:
        """Move past the tokens that every layer has now inserted."""
        self.pos += num_tokens

    def prefill(self, other: "KVCache") -> None:
        """Copy a batch-1 cache (a prompt processed once) into every row, to sample B continuations."""
        if other.k.size(1) != 1:
            raise ValueError(f"prefill expects a batch-1 cache, got batch {other.k.size(1)}")
        if other.pos > self.max_len:
            raise ValueError(f"the source cache holds {other.pos} tokens, more than max_len={self.max_len}")
        self.k[:, :, :, :other.pos] = other.k[:, :, :, :other.pos]  # broadcasts over the batch rows
        self.v[:, :, :, :other.pos] = other.v[:, :, :, :other.pos]
        self.pos = other.pos


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with RoPE, QK-norm and grouped key/value heads."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.c_q = CastLinear(config.n_embd, self.n_head * self.head_dim)
        self.c_k = CastLinear(config.n_embd, self.n_kv_head * self.head_dim)
        self.c_v = CastLinear(config.n_embd, self.n_kv_head * self.head_dim)
        self.c_proj = CastLinear(self.n_head * self.head_dim, config.n_embd)

    def project_qkv(self, x, cos, sin):
        """q (B, T, H, D) and k, v (B, T, Hkv, D), with q and k rotated (RoPE) and normed (QK-norm)."""
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
        # QK-norm: unit-RMS queries and keys keep attention logits in a sane range. (A
        # rotation does not change the RMS, so the order of these two does not matter.)
        return norm(apply_rotary(q, cos, sin)), norm(apply_rotary(k, cos, sin)), v

    def forward(self, x, cos, sin, kv_cache=None):
        B, T, C = x.shape
        q, k, v = self.project_qkv(x, cos, sin)
        if kv_cache is None:  # training, or a forward without a cache
            y = causal_attention(q, k, v)  # (B, T, H, D)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, D)
            k, v = kv_cache.insert_kv(self.layer_idx, k, v)  # now all Tk tokens so far
            y = attend(q, k, v).transpose(1, 2)  # (B, T, H, D)
        return self.c_proj(y.reshape(B, T, C))

    def attention_probs(self, x, cos, sin) -> torch.Tensor:
        """The weights SDPA applies without showing them: softmax(q k^T / sqrt(D)), causal. (B, H, T, T)."""
        q, k, _ = self.project_qkv(x, cos, sin)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # GQA: each kv head serves a group
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        T = x.size(1)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)


class MLP(nn.Module):
    """Two matmuls with ReLU^2 between: sparse like ReLU, smooth at 0, cheap."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = CastLinear(config.n_embd, 4 * config.n_embd)
        self.c_proj = CastLinear(4 * config.n_embd, config.n_embd)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())


class Block(nn.Module):
    """One transformer layer: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp = MLP(config)

    def forward(self, x, cos, sin, kv_cache=None):
        x = x + self.attn(norm(x), cos, sin, kv_cache)
        return x + self.mlp(norm(x))


class GPT(nn.Module):
    """Token ids in, next-token logits (or the loss) out. Build it with build_model()."""

    def __init__(self, config: GPTConfig, compute_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.lm_head = CastLinear(config.n_embd, config.vocab_size)  # untied from wte
        # The loss through nanochat/fused_loss.py (chunked; never the full logits). False: the plain
        # head + F.cross_entropy, kept to compare against (tests, bench/train_throughput.py).
        # On CUDA neither has been measured against the other yet (bench/gpu_check.py's "loss"
        # check does, on a GPU node); fused is the default there too, as it never holds the logits.
        self.fused_loss = True
        # RoPE tables are derived, not learned: kept out of the state_dict, filled by init_weights().
        rotary_len = ROTARY_FACTOR * config.sequence_len
        self.register_buffer("cos", torch.empty(rotary_len, config.head_dim // 2), persistent=False)
        self.register_buffer("sin", torch.empty(rotary_len, config.head_dim // 2), persistent=False)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Starting values for every weight, and the RoPE tables.

        Input matrices (q, k, v, mlp up): normal with std 1/sqrt(fan_in), so unit-RMS inputs
        give unit-RMS outputs. Output projections (attn and mlp c_proj): zero, so every
        block starts as the identity and the residual stream is just the embedding.
        Embedding: std 1 (it is RMS-normed right away). lm_head: std 0.001, so the first
        predictions are almost uniform and the first loss is ~ln(V).
        """
        nn.init.normal_(self.wte.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=0.001)
        for block in self.blocks:
            for linear in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                nn.init.normal_(linear.weight, std=linear.in_features ** -0.5)
            nn.init.zeros_(block.attn.c_proj.weight)
            nn.init.zeros_(block.mlp.c_proj.weight)
        cos, sin = rotary_cos_sin(self.cos.size(0), self.config.head_dim, device=self.cos.device)
        self.cos.copy_(cos)
        self.sin.copy_(sin)

    @property
    def device(self) -> torch.device:
        return self.wte.weight.device

    def forward(self, idx, targets=None, kv_cache=None, loss_reduction="mean"):
        """idx: (B, T) token ids. Returns logits (B, T, V) fp32, or the loss if targets are given.

        Targets equal to -1 are ignored. loss_reduction="none" gives per-token losses (B, T).
        With a kv_cache, idx holds only the new tokens; they sit at positions pos..pos+T.
        """
        B, T = idx.shape
        cos, sin = self.rotary(kv_cache.get_pos() if kv_cache is not None else 0, T)
        x = norm(self.wte(idx).to(self.compute_dtype))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(T)
        x = norm(x)
        if targets is None:
            logits = self.lm_head(x).float()                  # (B, T, V)
            return SOFTCAP * torch.tanh(logits / SOFTCAP)     # no logit can run away
        if loss_reduction not in ("mean", "none"):
            raise ValueError(f"loss_reduction must be 'mean' or 'none', not {loss_reduction!r}")
        targets = targets.reshape(-1)
        if self.fused_loss:  # the same numbers without the (B*T, V) logits in memory (nanochat/fused_loss.py)
            loss = softcap_cross_entropy(x.reshape(B * T, -1), self.lm_head.weight, targets, SOFTCAP, loss_reduction)
        else:
            logits = SOFTCAP * torch.tanh(self.lm_head(x).float() / SOFTCAP)
            loss = F.cross_entropy(logits.view(B * T, -1), targets, ignore_index=-1, reduction="none")
            if loss_reduction == "mean":
                loss = loss.sum() / (targets >= 0).sum().clamp(min=1)  # the mean over the real targets
        return loss.view(B, T) if loss_reduction == "none" else loss   # per token: 0 where the target is -1

    def rotary(self, pos: int, T: int):
        """RoPE's cos, sin for positions pos..pos+T, shaped (1, T, 1, D/2) to broadcast over batch and heads."""
        if pos + T > self.cos.size(0):
            raise ValueError(f"position {pos + T} is past the {self.cos.size(0)} precomputed RoPE positions")
        return (self.cos[None, pos:pos + T, None, :].to(self.compute_dtype),
                self.sin[None, pos:pos + T, None, :].to(self.compute_dtype))

    @torch.no_grad()
    def attention_probs(self, idx: torch.Tensor, layer: int) -> torch.Tensor:
        """The attention probabilities (B, H, T, T) of one layer for the sequences idx (B, T), in fp32."""
        cos, sin = self.rotary(0, idx.size(1))
        x = norm(self.wte(idx).to(self.compute_dtype))
        for block in self.blocks[:layer]:
            x = block(x, cos, sin)
        return self.blocks[layer].attn.attention_probs(norm(x), cos, sin).float()

    def new_kv_cache(self, batch_size: int, max_len: int) -> KVCache:
        """An empty KV cache on this model's device, in its compute dtype."""
        return KVCache(self.config, batch_size, max_len, self.device, self.compute_dtype)

    def num_params(self) -> int:
        """Parameters counted from the module itself (compare with count_params(config))."""
        return sum(p.numel() for p in self.parameters())

    def estimate_flops(self) -> int:
        """Training FLOPs per token (forward + backward), the way PaLM's appendix B and nanochat count.

        6 per weight that takes part in a matmul (2 forward, 4 backward); the embedding is a
        lookup, so it is left out. Attention adds 12 * L * H * D * T for q@k^T and att@v over
        the full context T (no discount for the causal mask).
        """
        c = self.config
        matmul_params = self.num_params() - self.wte.weight.numel()
        return 6 * matmul_params + 12 * c.n_layer * c.n_head * c.head_dim * c.sequence_len

    def setup_optimizers(self, matrix_lr=0.02, embedding_lr=0.2, unembedding_lr=0.004,
                         weight_decay=0.0, adam_betas=(0.8, 0.95)) -> MuonAdamW:
        """One optimizer, nanochat's grouping: Muon for the blocks' matrices, AdamW for wte and lm_head.

        The AdamW learning rates were tuned at width 768 and are scaled by (width/768)^-0.5.
        Every group remembers its starting lr as "initial_lr" for the schedule.
        """
        scale = (self.config.n_embd / 768) ** -0.5
        matrices = list(self.blocks.parameters())
        adamw = dict(kind="adamw", betas=adam_betas, eps=1e-10, weight_decay=weight_decay)
        groups = [
            dict(params=[self.lm_head.weight], lr=unembedding_lr * scale, **adamw),
            dict(params=[self.wte.weight], lr=embedding_lr * scale, **adamw),
            dict(kind="muon", params=matrices, lr=matrix_lr, momentum=0.95, nesterov=True, ns_steps=5),
        ]
        assert len(matrices) + 2 == len(list(self.parameters())), "every parameter needs exactly one group"
        for group in groups:
            group["initial_lr"] = group["lr"]
        return MuonAdamW(groups)

    @torch.inference_mode()
    def generate(self, tokens, max_tokens, temperature=1.0, top_k=None, seed=42):
        """Yield max_tokens sampled ids after the prompt `tokens` (a list of ids).

        Deliberately naive: every step re-runs the whole sequence, no KV cache. It is slow,
        and obviously right, which makes it the reference the inference Engine is tested against.
        """
        rng = torch.Generator(device=self.device).manual_seed(seed)
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        for _ in range(max_tokens):
            logits = self.forward(ids)[:, -1, :]  # (1, V)
            next_id = sample_next_token(logits, rng, temperature, top_k)  # (1, 1)
            ids = torch.cat([ids, next_id], dim=1)
            yield next_id.item()


def sample_next_token(logits, rng, temperature=1.0, top_k=None) -> torch.Tensor:
    """Pick one id per row of logits (B, V): argmax at temperature 0, else sample. Returns (B, 1)."""
    if temperature == 0.0:
        return logits.argmax(dim=-1, keepdim=True)
    if top_k is not None:
        top_logits, top_ids = logits.topk(min(top_k, logits.size(-1)), dim=-1)
        choice = torch.multinomial(F.softmax(top_logits / temperature, dim=-1), 1, generator=rng)
        return top_ids.gather(-1, choice)
    return torch.multinomial(F.softmax(logits / temperature, dim=-1), 1, generator=rng)


def build_model(config: GPTConfig, device="cpu", dtype: torch.dtype | None = None) -> GPT:
    """Make a GPT on `device`, initialised, computing in `dtype` (default: the device's best).

    The module is first built on the meta device (shapes only, no memory, instant even for
    billions of parameters), then to_empty() allocates the fp32 weights on the real device
    and init_weights() fills them.
    """
    dtype = dtype or common.compute_dtype(device)
    with torch.device("meta"):
        model = GPT(config, compute_dtype=dtype)
    model.to_empty(device=device)
    model.init_weights()
    return model
