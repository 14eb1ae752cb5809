"""A 1-D DiT for audio on timm layers: non-overlapping patches of a [B, C, T] signal (waveform samples, mel frames
or codec latents) as tokens, DiT's adaLN-Zero blocks with a class or pooled-text condition, 1-D RoPE over the
token index (no position table, so the length is free), and a `features` hook at any depth for discriminators."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from potstill.backbones.adaln import AdaLNZeroBackbone
from potstill.backbones.dit import LabelEmbedder
from potstill.backbones.embeddings import TimestepEmbedder
from potstill.backbones.video_dit import VideoDiTBlock, VideoFinalLayer, rotation
from potstill.core.registry import BACKBONES


@dataclass
class DiT1DOptions:
    """`input_size` is the signal's length T, `in_channels` its channels and `num_classes` its class count (null:
    read from the data by train-teacher); T must be a whole number of `patch_size` patches."""

    input_size: int | None = 1024
    patch_size: int = 8
    in_channels: int | None = 1
    hidden_size: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int | None = 8
    text_dim: int = 0
    rope_theta: float = 10000.0


class PatchEmbed1D(nn.Module):
    """[B, C, T] -> tokens [B, T / patch, D] by a strided convolution (one token a patch)."""

    def __init__(self, patch: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Conv1d(channels, hidden, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.proj(x), "b d n -> b n d")


def rope_1d_angles(tokens: int, head_dim: int, theta: float, device=None) -> torch.Tensor:
    """[tokens, head_dim / 2] float64 angles: token index times theta^(-2i / head_dim) (Su et al. 2021)."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim)
    return torch.arange(tokens, dtype=torch.float64, device=device)[:, None] * freqs[None]


class DiT1D(AdaLNZeroBackbone):
    """Backbone call: `model(x [B, C, T], c_noise [B], cond, features=None)`; `cond` is class labels (long) or
    pooled text embeddings (float); with `features`, also the tokens [B, T / patch, D] after those blocks."""

    def __init__(self, options: DiT1DOptions) -> None:
        super().__init__()
        o = self.options = options
        if o.input_size is None:
            raise ValueError("backbone.input_size: set the signal length (train-teacher fills a null from its data)")
        if o.input_size % o.patch_size:
            raise ValueError(f"backbone.patch_size: the length {o.input_size} is not a whole number of "
                             f"{o.patch_size}-sample patches")
        head_dim = o.hidden_size // o.num_heads
        if o.hidden_size % o.num_heads or head_dim % 2:
            raise ValueError(f"backbone.num_heads: hidden_size {o.hidden_size} / num_heads {o.num_heads} must be a "
                             "whole, even head width for RoPE")
        self.x_embedder = PatchEmbed1D(o.patch_size, o.in_channels, o.hidden_size)
        self.t_embedder = TimestepEmbedder(o.hidden_size)
        self.y_embedder = LabelEmbedder(o.num_classes, o.hidden_size, o.class_dropout_prob) if o.num_classes else None
        self.text_embedder = nn.Linear(o.text_dim, o.hidden_size) if o.text_dim else None
        self.blocks = nn.ModuleList(VideoDiTBlock(o.hidden_size, o.num_heads, o.mlp_ratio) for _ in range(o.depth))
        self.final_layer = VideoFinalLayer(o.hidden_size, o.patch_size * o.in_channels)
        self.activation_checkpointing = False    # recompute each block in backward (train.activation_checkpointing)
        self._initialize()

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None, features: list[int] | None = None):
        o = self.options
        if x.shape[-1] % o.patch_size:
            raise ValueError(f"dit1d: a signal of {x.shape[-1]} samples is not a whole number of "
                             f"{o.patch_size}-sample patches")
        tokens = self.x_embedder(x)
        c_noise = torch.as_tensor(c_noise, device=tokens.device).expand(x.shape[0])
        c = (self.t_embedder(c_noise) + self.embed_condition(cond))[:, None]      # one modulation for all tokens
        cos_sin = rotation(rope_1d_angles(tokens.shape[1], o.hidden_size // o.num_heads, o.rope_theta, x.device),
                           tokens.dtype)
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        activations = []
        for block in self.blocks:
            args = (tokens, c, cos_sin, None, None)
            tokens = (checkpoint(block, *args, use_reentrant=False) if recompute else block(*args))[0]
            activations.append(tokens)
        out = rearrange(self.final_layer(tokens, c), "b n (p c) -> b c (n p)", p=o.patch_size)
        if features is None:
            return out
        return out, [activations[i] for i in features]


BACKBONES.register("dit1d", DiT1DOptions)(DiT1D)
