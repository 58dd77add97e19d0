"""Transformer blocks from the 2D layers, with Megatron-Core's GPT math: pre-LayerNorm, fused QKV
laid out per head as (q, k, v) (Megatron's `linear_qkv` order), optional QK-layernorm over each
head, causal softmax attention scaled by 1/sqrt(head_dim), GELU MLP, residual connections. Module
names are Megatron-Core's, so a full Megatron state dict maps onto them by name.

Heads: the QKV output is split over grid columns, so column j holds whole heads (q, k and v of
heads j·n/q … (j+1)·n/q - 1) for the token block of its row, and attention is local. Needs the heads
divisible by q and whole sequences in each token block (the batch, not the sequence, is split over
rows).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from integration.tp2d.grid import Grid2D
from integration.tp2d.layers import LayerNorm2D, Linear2D


class SelfAttention2D(nn.Module):
    def __init__(
        self,
        hidden: int,
        heads: int,
        grid: Grid2D,
        bias: bool = True,
        init_std: float = 0.02,
        output_std: float | None = None,
        qk_layernorm: bool = False,
        eps: float = 1e-5,
    ):
        super().__init__()
        if heads % grid.q:
            raise ValueError(f"attention heads {heads} are not divisible by the grid side {grid.q}")
        self.local_heads, self.head_dim = heads // grid.q, hidden // heads
        self.linear_qkv = Linear2D(hidden, 3 * hidden, grid, bias, init_std)
        self.linear_proj = Linear2D(hidden, hidden, grid, bias, output_std or init_std)
        # Over one head's dimension: local to each rank, replicated over the grid. Each rank's
        # gradient covers its own heads and tokens; the caller sums them over tensor parallel
        # (integration.stability.hooks.sum_partial_replicated_grads matches these names).
        self.q_layernorm = nn.LayerNorm(self.head_dim, eps=eps) if qk_layernorm else None
        self.k_layernorm = nn.LayerNorm(self.head_dim, eps=eps) if qk_layernorm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [b/q, s, hidden/q] → [b/q, s, hidden/q]."""
        b, s, _ = x.shape
        qkv = self.linear_qkv(x).view(b, s, self.local_heads, 3, self.head_dim)
        q, k, v = qkv.unbind(3)  # [b/q, s, heads/q, d]
        if self.q_layernorm is not None:
            q, k = self.q_layernorm(q), self.k_layernorm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.linear_proj(out.transpose(1, 2).reshape(b, s, self.local_heads * self.head_dim))


class MLP2D(nn.Module):
    def __init__(
        self,
        hidden: int,
        ffn: int,
        grid: Grid2D,
        bias: bool = True,
        init_std: float = 0.02,
        output_std: float | None = None,
    ):
        super().__init__()
        self.linear_fc1 = Linear2D(hidden, ffn, grid, bias, init_std)
        self.linear_fc2 = Linear2D(ffn, hidden, grid, bias, output_std or init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class TransformerLayer2D(nn.Module):
    """x + attn(ln1(x)), then + mlp(ln2(x)) — Megatron-Core's GPT layer without dropout."""

    def __init__(
        self,
        hidden: int,
        heads: int,
        ffn: int,
        grid: Grid2D,
        bias: bool = True,
        eps: float = 1e-5,
        init_std: float = 0.02,
        output_std: float | None = None,
        qk_layernorm: bool = False,
    ):
        super().__init__()
        self.input_layernorm = LayerNorm2D(hidden, grid, eps)
        self.self_attention = SelfAttention2D(
            hidden, heads, grid, bias, init_std, output_std, qk_layernorm, eps
        )
        self.pre_mlp_layernorm = LayerNorm2D(hidden, grid, eps)
        self.mlp = MLP2D(hidden, ffn, grid, bias, init_std, output_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attention(self.input_layernorm(x))
        return x + self.mlp(self.pre_mlp_layernorm(x))
