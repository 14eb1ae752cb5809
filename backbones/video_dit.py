"""A video DiT on timm layers: DiT's adaLN-Zero blocks over frame-major patch tokens of [B, C, F, H, W] clips,
modulated per frame (one noise time per frame, diffusion forcing), with 3-D RoPE over (frame, row, column) and no
absolute position table, so any frame count works and a rolling window extrapolates to long videos. Bidirectional
by default; with `causal` it trains under the block-causal mask and streams chunks with a KV cache (core/causal.py).

RoPE split of a head's dimension d (even, >= 8): rows and columns get 2 * (d // 8) each, frames the rest (about
half); each part rotates interleaved pairs at frequencies rope_theta^(-2i / part)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from timm.layers import Mlp, PatchEmbed
from torch import nn
from torch.utils.checkpoint import checkpoint

from potstill.backbones.adaln import AdaLNZeroBackbone
from potstill.backbones.dit import LabelEmbedder
from potstill.backbones.embeddings import TimestepEmbedder
from potstill.core import sequence_parallel
from potstill.core.causal import (
    CachePolicy,
    KVCache,
    block_causal_mask,
    check_window,
    chunk_ends,
    expand_to_tokens,
    frame_mask,
)
from potstill.core.registry import BACKBONES


@dataclass
class VideoDiTOptions:
    input_size: int | None = 12
    patch_size: int = 2
    in_channels: int = 1
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 10
    text_dim: int = 0
    causal: bool = False
    chunk_frames: int = 1
    rope_theta: float = 10000.0


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [B, F*T, D] modulated by its frame's shift and scale [B, F, D]."""
    frames = shift.shape[1]
    x = rearrange(x, "b (f t) d -> b f t d", f=frames)
    return rearrange(x * (1 + scale[:, :, None]) + shift[:, :, None], "b f t d -> b (f t) d")


def gated(x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x [B, F*T, D] times its frame's gate [B, F, D]."""
    x = rearrange(x, "b (f t) d -> b f t d", f=gate.shape[1])
    return rearrange(x * gate[:, :, None], "b f t d -> b (f t) d")


class Rope3D(nn.Module):
    """Rotary angles over (frame, row, column) of frame-major tokens; frames are absolute indices."""

    def __init__(self, head_dim: int, grid: int, theta: float) -> None:
        super().__init__()
        if head_dim % 2 or head_dim < 8:
            raise ValueError(f"video_dit: hidden_size / num_heads = {head_dim} must be even and >= 8 for 3-D RoPE")
        spatial = 2 * (head_dim // 8)
        self.parts = (head_dim - 2 * spatial, spatial, spatial)
        self.grid, self.theta = grid, theta

    def angles(self, start_frame: int, frames: int, device=None) -> torch.Tensor:
        """[frames * grid^2, head_dim / 2] float64 angles for frames start_frame .. start_frame + frames - 1."""
        g = self.grid
        token = torch.arange(frames * g * g, device=device)
        positions = (start_frame + token // (g * g), token % (g * g) // g, token % g)
        out = []
        for pos, dim in zip(positions, self.parts, strict=True):
            freqs = self.theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim)
            out.append(pos.double()[:, None] * freqs[None])
        return torch.cat(out, dim=1)


def rotation(angles: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE's (cos, signed sin) [N, d] for angles [N, d/2], each repeated over its interleaved pair (the sin as
    (-sin, sin)), in `dtype`, made once per forward for every block."""
    sin = angles.sin()
    signed_sin = rearrange(torch.stack([-sin, sin], dim=-1), "n k two -> n (k two)")
    return repeat(angles.cos(), "n k -> n (k two)", two=2).to(dtype), signed_sin.to(dtype)


def rotate(x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Apply RoPE to x [..., N, d] with `rotation`'s (cos, signed sin) [N, d]: each interleaved pair (x1, x2)
    becomes (x1 cos - x2 sin, x1 sin + x2 cos), as x * cos + (x2, x1) * (-sin, sin)."""
    cos, sin = (part.to(x.dtype) for part in cos_sin)
    swapped = rearrange(rearrange(x, "... (k two) -> ... k two", two=2).flip(-1), "... k two -> ... (k two)")
    return x * cos + swapped * sin


class RopeAttention(nn.Module):
    """Multi-head self-attention with a fused qkv, RoPE on q and k, optional cached K/V and a boolean mask."""

    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                past: tuple[torch.Tensor, torch.Tensor] | None):
        """-> (output [B, N, D], this input's RoPE'd keys and values [B, heads, N, d] for a cache). Under sequence
        parallelism x holds this rank's tokens, and the keys and values are the whole sequence's for this rank's
        share of the heads (what its cache holds)."""
        qkv = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        (q, k), v = rotate(qkv[:2], cos_sin).unbind(0), qkv[2]
        group = sequence_parallel.GROUP
        if group is None:
            out, k, v = attend(q, k, v, mask, past)
        else:
            held: list[torch.Tensor] = []

            def local(q, k, v, mask, past):
                out, *kv = attend(*(rearrange(t, "b n h d -> b h n d") for t in (q, k, v)), mask, past)
                held[:] = kv
                return rearrange(out, "b h n d -> b n h d")

            out = sequence_parallel.distributed_attention(
                local, *(rearrange(t, "b h n d -> b n h d") for t in (q, k, v)), group, mask, past)
            out, (k, v) = rearrange(out, "b n h d -> b h n d"), held
        return self.proj(rearrange(out, "b h n d -> b n (h d)")), k, v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           past: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention of q over the cached keys and values and k, v ([B, heads, N, d]); returns (out, k, v)."""
    keys, values = (k, v) if past is None else (torch.cat([past[0].to(k.dtype), k], dim=2),
                                                 torch.cat([past[1].to(v.dtype), v], dim=2))
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask), k, v


class VideoDiTBlock(nn.Module):
    """DiT block with adaLN-Zero conditioning per frame."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.attn = RopeAttention(hidden, heads)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden, int(hidden * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, past: tuple[torch.Tensor, torch.Tensor] | None):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        attended, k, v = self.attn(modulate(self.norm1(x), shift_msa, scale_msa), cos_sin, mask, past)
        x = x + gated(attended, gate_msa)
        return x + gated(self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)), gate_mlp), k, v


class VideoFinalLayer(nn.Module):
    """adaLN-modulated (per frame) norm and a linear map of each token to `out_features` values (its patch)."""

    def __init__(self, hidden: int, out_features: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class VideoDiT(AdaLNZeroBackbone):
    """Backbone call: `model(x [B, C, F, H, W], c_noise [B] or [B, F], cond, features=None, cache=None,
    write=False)`. `causal`, `chunk_frames`, `window_frames` and `sink_frames` are plain attributes (a causal
    student copies a bidirectional teacher and sets them); `causal` changes only the mask, never the weights.

    With a `cache` (causal only), `x` holds the next frames, starting at absolute frame `cache.next_frame`:
    they attend to the cached frames the cache policy's window allows plus their own chunk; `write=True` then
    appends their K/V and advances the cache. Without one, the whole clip runs at once (masked when causal).
    Under sequence parallelism (core/sequence_parallel.py) each rank runs its share of the frames and the output
    is gathered whole, so its parameters' gradients on a rank are its frames' part (`splits_sequence`)."""

    splits_sequence = True

    def __init__(self, options: VideoDiTOptions) -> None:
        super().__init__()
        o = self.options = options
        if o.input_size is None:
            raise ValueError("backbone.input_size: set the frame size (train-teacher fills a null from its data)")
        self.grid = -(-o.input_size // o.patch_size)      # frames are zero-padded up to whole patches
        self.x_embedder = PatchEmbed(self.grid * o.patch_size, o.patch_size, o.in_channels, o.hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(o.hidden_size)
        self.y_embedder = LabelEmbedder(o.num_classes, o.hidden_size, o.class_dropout_prob) if o.num_classes else None
        self.text_embedder = nn.Linear(o.text_dim, o.hidden_size) if o.text_dim else None
        self.rope = Rope3D(o.hidden_size // o.num_heads, self.grid, o.rope_theta)
        self.blocks = nn.ModuleList(VideoDiTBlock(o.hidden_size, o.num_heads, o.mlp_ratio) for _ in range(o.depth))
        self.final_layer = VideoFinalLayer(o.hidden_size, o.patch_size**2 * o.in_channels)
        self.causal = o.causal
        self.chunk_frames = o.chunk_frames
        self.window_frames: int | None = None    # the masked forward's window and sinks (set by the rollout)
        self.sink_frames = 0
        self.activation_checkpointing = False    # recompute each block in backward (train.activation_checkpointing)
        self._initialize()

    @property
    def tokens_per_frame(self) -> int:
        return self.grid * self.grid

    def new_cache(self, batch: int, policy: CachePolicy, device=None, dtype=None, start_frame: int = 0) -> KVCache:
        """An empty KV cache for streaming `batch` clips under `policy`, K/V stored on `device` in `dtype`."""
        return KVCache(policy, len(self.blocks), self.tokens_per_frame, batch, device, dtype, start_frame)

    def frame_embedding(self, c_noise: torch.Tensor, cond, batch: int, frames: int) -> torch.Tensor:
        """[B, F, D]: each frame's noise embedding plus the clip's condition embedding."""
        c_noise = torch.as_tensor(c_noise, device=self.t_embedder.mlp[0].weight.device)
        if c_noise.ndim == 0:
            c_noise = c_noise.expand(batch)
        if c_noise.ndim == 1:
            c_noise = c_noise[:, None].expand(batch, frames)
        if c_noise.shape != (batch, frames):
            raise ValueError(f"video_dit: c_noise must be [B] or [B, F] = [{batch}, {frames}], got "
                             f"{list(c_noise.shape)}")
        t = rearrange(self.t_embedder(c_noise.reshape(-1)), "(b f) d -> b f d", b=batch)
        c = self.embed_condition(cond)
        return t + c[:, None] if torch.is_tensor(c) else t

    def attention_mask(self, frames: int, cache: KVCache | None, device) -> torch.Tensor | None:
        """The boolean token mask of this forward (None: attend to everything given)."""
        t = self.tokens_per_frame
        if cache is None:
            if not self.causal:
                return None
            mask = block_causal_mask(frames, t, self.chunk_frames, self.window_frames, self.sink_frames, device)
        else:
            policy = cache.policy
            check_window(self.chunk_frames, policy.window_frames)
            start = cache.next_frame
            kv_frames = torch.cat([cache.visible_frames(device), torch.arange(start, start + frames, device=device)])
            ends = chunk_ends(start, frames, self.chunk_frames, device)
            allowed = frame_mask(ends, kv_frames, policy.window_frames, policy.sink_frames, cache.start_frame)
            mask = expand_to_tokens(allowed, t)
        return None if bool(mask.all()) else mask

    def _check(self, x: torch.Tensor, cache: KVCache | None, write: bool) -> None:
        frames = x.shape[2]
        if self.causal and self.chunk_frames < 1:
            raise ValueError(f"generator.chunk_frames: must be >= 1, got {self.chunk_frames}")
        if self.causal and frames % self.chunk_frames:
            raise ValueError(f"generator.chunk_frames: a causal forward needs a frame count divisible by "
                             f"chunk_frames = {self.chunk_frames}, got {frames} frames")
        if cache is None:
            if write:
                raise ValueError("video_dit: write=True needs a cache")
            return
        if not self.causal:
            raise ValueError("video_dit: streaming with a KV cache needs a causal backbone (set causal = True)")
        if cache.batch != x.shape[0]:
            raise ValueError(f"video_dit: the cache was made for batch {cache.batch}, got {x.shape[0]} clips "
                             "(classifier-free guidance doubles the batch and cannot stream)")
        if write:
            cache.check_room(frames)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None, features: list[int] | None = None, *,
                cache: KVCache | None = None, write: bool = False):
        self._check(x, cache, write)
        batch, frames, height, width = x.shape[0], x.shape[2], x.shape[3], x.shape[4]
        start = cache.next_frame if cache is not None else 0
        group = sequence_parallel.GROUP
        own = group.frames(frames) if group is not None else slice(0, frames)     # this rank's frames
        side = self.grid * self.options.patch_size
        x = F.pad(x[:, :, own], (0, side - width, 0, side - height))
        tokens = rearrange(self.x_embedder(rearrange(x, "b c f h w -> (b f) c h w")), "(b f) t d -> b (f t) d",
                           b=batch)
        c = self.frame_embedding(c_noise, cond, batch, frames)[:, own]
        cos_sin = rotation(self.rope.angles(start + own.start, own.stop - own.start, x.device), tokens.dtype)
        mask = self.attention_mask(frames, cache, x.device)
        recompute = self.activation_checkpointing and torch.is_grad_enabled()
        activations, keys, values = [], [], []
        for i, block in enumerate(self.blocks):
            past = cache.layer(i) if cache is not None else None
            args = (tokens, c, cos_sin, mask, past)
            tokens, k, v = checkpoint(block, *args, use_reentrant=False) if recompute else block(*args)
            activations.append(tokens)
            if write:
                keys.append(k)
                values.append(v)
        if write:
            cache.append(keys, values, frames, self.chunk_frames)
        out = self.final_layer(tokens, c)
        p = self.options.patch_size
        out = rearrange(out, "b (f h w) (p q c) -> b c f (h p) (w q)", f=own.stop - own.start, h=self.grid, p=p, q=p)
        out = out[..., :height, :width]
        picked = [activations[i] for i in features] if features is not None else []
        if group is not None:
            out = sequence_parallel.gather_along(out, 2, group)
            picked = [sequence_parallel.gather_along(a, 1, group) for a in picked]
        return out if features is None else (out, picked)


BACKBONES.register("video_dit", VideoDiTOptions)(VideoDiT)
