"""Causal video attention (CausVid / Self-Forcing, reference §9): the block-causal mask a causal backbone
trains under, and the KV cache it streams with, so that chunk-by-chunk generation equals the masked forward.

Frames are grouped in chunks of `chunk_frames`; a query in the chunk ending (exclusively) at frame `end`
may attend to frame `kv` when `kv < end` and, with a window, `kv >= end - window_frames` or `kv` is one of
the first `sink_frames` frames. The cache holds per-layer K/V (already RoPE'd with absolute frame
positions, never re-indexed) of the frames written so far and keeps only what a later chunk can still see.

KVCache API (the rollout generator's side):
- `next_frame`: absolute index of the first frame not yet written (the RoPE offset of the next chunk);
  `start_frame`: where the cache was (re)started; `frames_held`: how many frames it holds; `held`: which.
- `is_full(after_frames)`: True when writing `after_frames` more frames would exceed `max_frames`
  (modes none and segment; never for rolling). Mode segment: the caller then `reset()`s and prefills.
- `reset(start_frame=0)`: drop everything; the next chunk starts at absolute frame `start_frame`.
- `nbytes`: memory held by the cached keys and values.
The backbone's side: `layer(i)` (cached K/V of layer i), `visible_frames()`, `check_room(frames)` and
`append(keys, values, frames, chunk_frames)`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from einops import repeat

CacheMode = Literal["none", "rolling", "segment"]


@dataclass
class CachePolicy:
    """How much past a streaming chunk attends to. `window_frames` None: everything so far.
    mode 'rolling': keep the newest window plus the first `sink_frames` frames (Self-Forcing);
    'segment': the rollout restarts with its last chunk prefilled when the cache is full;
    'none': exceeding `max_frames` is an error."""

    window_frames: int | None = None
    sink_frames: int = 0
    mode: CacheMode = "none"
    max_frames: int | None = None          # capacity for mode none/segment (None = unlimited)

    def __post_init__(self) -> None:
        if self.mode not in ("none", "rolling", "segment"):
            raise ValueError(f"generator.cache.mode: unknown mode {self.mode!r}; valid: none, rolling, segment")
        if self.window_frames is not None and self.window_frames < 1:
            raise ValueError(f"generator.cache.window_frames: must be >= 1 or null, got {self.window_frames}")
        if self.sink_frames < 0:
            raise ValueError(f"generator.cache.sink_frames: must be >= 0, got {self.sink_frames}")
        if self.mode == "rolling" and self.window_frames is None:
            raise ValueError("generator.cache.window_frames: mode rolling needs a window (the frames it keeps)")
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"generator.cache.max_frames: must be >= 1 or null, got {self.max_frames}")


def check_window(chunk_frames: int, window_frames: int | None) -> None:
    """A window shorter than a chunk would hide part of a query's own chunk; that is a misconfiguration."""
    if window_frames is not None and window_frames < chunk_frames:
        raise ValueError(f"generator.cache.window_frames: {window_frames} is shorter than chunk_frames "
                         f"{chunk_frames}; a chunk must see all of itself")


def frame_mask(query_ends: torch.Tensor, kv_frames: torch.Tensor, window_frames: int | None = None,
               sink_frames: int = 0, first_frame: int = 0) -> torch.Tensor:
    """bool [Fq, Fk]: may a query whose chunk ends (exclusively) at `query_ends` attend to frame `kv_frames`.
    Sinks are the `sink_frames` frames from `first_frame` on (where the clip or the cache started)."""
    ends, kv = query_ends[:, None], kv_frames[None, :]
    allowed = kv < ends
    if window_frames is not None:
        allowed &= (kv >= ends - window_frames) | (kv < first_frame + sink_frames)
    return allowed


def chunk_ends(start_frame: int, frames: int, chunk_frames: int, device=None) -> torch.Tensor:
    """[frames]: the exclusive end frame of each frame's chunk, chunks counted from `start_frame`."""
    local = torch.arange(frames, device=device)
    return start_frame + (local // chunk_frames + 1) * chunk_frames


def expand_to_tokens(mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """A frame-level [Fq, Fk] mask as the token-level [Fq*T, Fk*T] one (tokens frame-major)."""
    return repeat(mask, "q k -> (q s) (k t)", s=tokens_per_frame, t=tokens_per_frame)


def block_causal_mask(frames: int, tokens_per_frame: int, chunk_frames: int, window_frames: int | None = None,
                      sink_frames: int = 0, device=None) -> torch.Tensor:
    """bool [N, N], True = may attend, N = frames * tokens_per_frame: the mask a causal backbone trains under."""
    check_window(chunk_frames, window_frames)
    ends = chunk_ends(0, frames, chunk_frames, device)
    mask = frame_mask(ends, torch.arange(frames, device=device), window_frames, sink_frames)
    return expand_to_tokens(mask, tokens_per_frame)


class KVCache:
    """Per-layer keys and values [B, heads, frames_held * T, head_dim] of the frames written so far, with
    their absolute frame indices; frames no later chunk can attend to are dropped when a chunk is written.
    K/V are stored as given: write under `torch.no_grad()` for Self-Forcing's gradient truncation."""

    def __init__(self, policy: CachePolicy, layers: int, tokens_per_frame: int, batch: int,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                 start_frame: int = 0) -> None:
        self.policy = policy
        self.layers = layers
        self.tokens_per_frame = tokens_per_frame
        self.batch = batch
        self.device, self.dtype = device, dtype     # where and how K/V are stored (None: as written)
        self.reset(start_frame)

    def reset(self, start_frame: int = 0) -> None:
        """Drop every cached frame; the next chunk starts at absolute frame `start_frame`."""
        self.start_frame = self.next_frame = start_frame
        self.held: list[int] = []
        self._keys: list[torch.Tensor | None] = [None] * self.layers
        self._values: list[torch.Tensor | None] = [None] * self.layers

    @property
    def frames_held(self) -> int:
        return len(self.held)

    @property
    def frames_written(self) -> int:
        """Frames written since the last reset (what `max_frames` limits)."""
        return self.next_frame - self.start_frame

    @property
    def nbytes(self) -> int:
        tensors = [t for t in self._keys + self._values if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def is_full(self, after_frames: int) -> bool:
        """Would writing `after_frames` more frames exceed the capacity (modes none and segment)?"""
        p = self.policy
        if p.mode == "rolling" or p.max_frames is None:
            return False
        return self.frames_written + after_frames > p.max_frames

    def check_room(self, frames: int) -> None:
        """Raise before a write that would exceed `max_frames`."""
        if not self.is_full(frames):
            return
        p = self.policy
        hint = ("use generator.cache.mode rolling (a window plus sinks) or segment (restart with the last chunk)"
                if p.mode == "none" else "a segment rollout must reset() the cache when is_full()")
        raise ValueError(f"generator.cache: writing frames {self.next_frame}..{self.next_frame + frames - 1} "
                         f"exceeds max_frames = {p.max_frames} (mode {p.mode}); {hint}")

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Cached (keys, values) of layer `index`, or None while nothing is held."""
        if self._keys[index] is None:
            return None
        return self._keys[index], self._values[index]

    def visible_frames(self, device=None) -> torch.Tensor:
        """[frames_held] absolute frame index of each cached frame (in the cached order)."""
        return torch.tensor(self.held, dtype=torch.long, device=device or self.device)

    def append(self, keys: list[torch.Tensor], values: list[torch.Tensor], frames: int, chunk_frames: int) -> None:
        """Add one written chunk's per-layer K/V ([B, heads, frames * T, head_dim]), advance `next_frame`, then
        keep only the frames the next chunk (of `chunk_frames`) may attend to: the sinks and the window."""
        self.check_room(frames)
        new = list(range(self.next_frame, self.next_frame + frames))
        self.next_frame += frames
        keep = self._kept(self.held + new, chunk_frames)
        everything = len(keep) == len(self.held) + frames
        t = self.tokens_per_frame
        index = torch.tensor([i * t + j for i in keep for j in range(t)], dtype=torch.long)
        for layer in range(self.layers):
            self._keys[layer] = self._joined(self._keys[layer], keys[layer], None if everything else index)
            self._values[layer] = self._joined(self._values[layer], values[layer], None if everything else index)
        self.held = [(self.held + new)[i] for i in keep]

    def _joined(self, old: torch.Tensor | None, new: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        new = new.to(device=self.device, dtype=self.dtype)
        joined = new if old is None else torch.cat([old, new], dim=2)
        return joined if index is None else joined.index_select(2, index.to(joined.device))

    def _kept(self, frames: list[int], chunk_frames: int) -> list[int]:
        """Positions in `frames` that the next chunk [next_frame, next_frame + chunk_frames) can see."""
        p = self.policy
        if p.window_frames is None:
            return list(range(len(frames)))
        end = self.next_frame + chunk_frames
        kv = torch.tensor(frames, dtype=torch.long)
        allowed = frame_mask(torch.tensor([end]), kv, p.window_frames, p.sink_frames, self.start_frame)[0]
        return allowed.nonzero().flatten().tolist()


class CausalBackbone(Protocol):
    """A video backbone that trains under `block_causal_mask` and streams chunk by chunk with a KVCache."""

    causal: bool
    chunk_frames: int
    window_frames: int | None
    sink_frames: int

    def new_cache(self, batch: int, policy: CachePolicy, device=None, dtype=None) -> KVCache: ...

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None, features: list[int] | None = None, *,
                cache: KVCache | None = None, write: bool = False): ...
