"""A GPT-style decoder (nanoGPT's shape), byte-level by default, for pipeline and hybrid plans.

Separate q/k/v projections rather than one fused qkv: a fused projection does not shard
correctly under tensor-parallel column splitting (docs/facts.md, Tensor parallel), and
separate ones cost the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Named sizes for `size=...`; d_ff defaults to 4 * d_model. 175b is GPT-3's shape as Megatron-LM
# trained it (Narayanan et al. 2021, Table 1: vocabulary padded to 51200). Parameter counts are about
# 12 * n_layer * d_model**2 plus the embeddings (and the head unless tied). 70b widens the
# MLP to 4.5 * d_model so that two matrices reach Llama-2-70B's size (it has three).
SIZES: dict[str, dict[str, int]] = {
    "toy": dict(vocab_size=256, seq_len=64, d_model=64, n_layer=2, n_head=4),
    "1m": dict(vocab_size=256, seq_len=128, d_model=128, n_layer=5, n_head=4),
    "125m": dict(vocab_size=50257, seq_len=1024, d_model=768, n_layer=12, n_head=12),
    "7b": dict(vocab_size=32000, seq_len=2048, d_model=4096, n_layer=32, n_head=32),
    "70b": dict(vocab_size=32000, seq_len=2048, d_model=8192, n_layer=80, n_head=64, d_ff=36864),
    "175b": dict(vocab_size=51200, seq_len=2048, d_model=12288, n_layer=96, n_head=96),
}


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256
    """Tokens in the vocabulary; 256 for the byte-level corpus."""
    seq_len: int = 64
    """Context length T (positions in the learned position embedding)."""
    d_model: int = 64
    """Embedding width C."""
    n_layer: int = 2
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads; must divide d_model."""
    d_ff: int = 0
    """MLP hidden width; 0 means 4 * d_model."""
    tie_embeddings: bool = False
    """Share the token embedding with the output head (GPT-2 does)."""

    def __post_init__(self) -> None:
        sizes = dict(
            vocab_size=self.vocab_size,
            seq_len=self.seq_len,
            d_model=self.d_model,
            n_layer=self.n_layer,
            n_head=self.n_head,
        )
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v <= 0}
        if bad:
            raise ValueError(f"gpt sizes must be positive integers, got {bad}")
        if self.d_model % self.n_head:
            raise ValueError(f"gpt d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.d_ff < 0:
            raise ValueError(f"gpt d_ff must be >= 0, got {self.d_ff}")

    @property
    def ff_width(self) -> int:
        return self.d_ff or 4 * self.d_model


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        # No key bias: it adds q.b to a whole row of attention scores, which softmax
        # cancels, so its gradient is zero up to rounding, and Adam would turn that
        # rounding noise into updates of size lr.
        self.k = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # batch, sequence length, embedding dim
        hd = C // self.n_head
        # Heads counted from the projections' width, not n_head: split by columns across a
        # tensor group (planner.tensor_parallel), a rank's q holds n_head / tp of them.
        q = self.q(x).view(B, T, -1, hd).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k(x).view(B, T, -1, hd).transpose(1, 2)
        v = self.v(x).view(B, T, -1, hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class MLPSublayer(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.ff_width)
        self.act = nn.GELU()
        self.proj = nn.Linear(cfg.ff_width, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLPSublayer(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class PositionEmbedding(nn.Module):
    """Adds learned position embeddings; its own module so a stage cut can fall after it."""

    init_std = 0.02  # read by planner.zoo.init: an embedding table, not a projection

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.seq_len, cfg.d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, C)
        return x + self.weight[: x.shape[1]]


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = PositionEmbedding(cfg)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # idx: (B, T) token ids
        x = self.pos_emb(self.tok_emb(idx))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # logits: (B, T, vocab_size)
