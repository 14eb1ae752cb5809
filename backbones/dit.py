"""DiT (Peebles & Xie 2023) on timm layers, with the public reference implementation's parameter names
and shapes (x_embedder, t_embedder, y_embedder, pos_embed, blocks.*.adaLN_modulation, final_layer), so
its checkpoints load; adds pooled-text conditioning and a features hook for discriminator heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from timm.layers import Attention, Mlp, PatchEmbed
from torch import nn
from torch.utils.checkpoint import checkpoint

from potstill.backbones.adaln import AdaLNZeroBackbone
from potstill.backbones.embeddings import TimestepEmbedder
from potstill.core.registry import BACKBONES


@dataclass
class DiTOptions:
    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True
    text_dim: int = 0


PRESETS: dict[str, dict] = {
    f"DiT-{size}/{patch}": {"depth": depth, "hidden_size": hidden, "num_heads": heads, "patch_size": patch}
    for size, depth, hidden, heads in [("XL", 28, 1152, 16), ("L", 24, 1024, 16), ("B", 12, 768, 12),
                                       ("S", 12, 384, 6)]
    for patch in (2, 4, 8)
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def sincos_2d(dim: int, grid: int) -> torch.Tensor:
    """DiT/MAE fixed 2-D sin-cos position table [grid*grid, dim]: first half the column, then the row."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")

    def table(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1)[:, None] * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([table(cols), table(rows)], dim=1).float()


class LabelEmbedder(nn.Module):
    """Class embeddings with one extra row, the null class used for classifier-free guidance."""

    def __init__(self, num_classes: int, hidden: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden, num_heads=heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, patch: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, patch * patch * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(AdaLNZeroBackbone):
    """Backbone call: `dit(x, c_noise, cond, features=None)`; `cond` is class labels (long) or pooled
    text embeddings (float). With `learn_sigma` the variance channels are dropped from the output. `time_extra`
    [B, hidden] is added to the time embedding (MeanFlow's interval embedding)."""

    takes_time_extra = True

    def __init__(self, options: DiTOptions) -> None:
        super().__init__()
        o = self.options = options
        self.out_channels = o.in_channels * 2 if o.learn_sigma else o.in_channels
        self.x_embedder = PatchEmbed(o.input_size, o.patch_size, o.in_channels, o.hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(o.hidden_size)
        self.y_embedder = LabelEmbedder(o.num_classes, o.hidden_size, o.class_dropout_prob) if o.num_classes else None
        self.text_embedder = nn.Linear(o.text_dim, o.hidden_size) if o.text_dim else None
        grid = o.input_size // o.patch_size
        self.pos_embed = nn.Parameter(sincos_2d(o.hidden_size, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(DiTBlock(o.hidden_size, o.num_heads, o.mlp_ratio) for _ in range(o.depth))
        self.final_layer = FinalLayer(o.hidden_size, o.patch_size, self.out_channels)
        self.activation_checkpointing = False    # recompute each block in backward (train.activation_checkpointing)
        self._initialize()

    def embed_tokens(self, x: torch.Tensor, cond) -> torch.Tensor:
        """The patch tokens [B, N, hidden] with their positions; a subclass may add per-token condition features
        (the forward has passed `cond` through `embed_condition`, and its checks, first)."""
        return self.x_embedder(x) + self.pos_embed

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None, features: list[int] | None = None,
                time_extra: torch.Tensor | None = None):
        o = self.options
        channels = x.shape[1]
        c = self.t_embedder(c_noise) + self.embed_condition(cond)
        tokens = self.embed_tokens(x, cond)
        if time_extra is not None:
            c = c + time_extra
        activations = []
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            tokens = checkpoint(block, tokens, c, use_reentrant=False) if recompute else block(tokens, c)
            activations.append(tokens)
        out = self.final_layer(tokens, c)
        grid = o.input_size // o.patch_size
        out = rearrange(out, "n (h w) (p q c) -> n c (h p) (w q)", h=grid, p=o.patch_size, q=o.patch_size)
        out = out[:, :channels]
        if features is None:
            return out
        return out, [activations[i] for i in features]


BACKBONES.register("dit", DiTOptions)(DiT)
