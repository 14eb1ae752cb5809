"""open_clip text towers for text-conditioned teachers: built offline from open_clip's model configs,
weights from a local checkpoint file (never a download), pooled prompt embeddings cached by prompt."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from potstill.backbones.prompt_cache import PromptCache
from potstill.backbones.transformers_text import TextLayout
from potstill.core.config import load_component
from potstill.core.registry import TEXT_ENCODERS


@dataclass
class OpenClipTextOptions:
    """`model`: an open_clip model name (ViT-B-32, ViT-H-14, ...); `checkpoint`: that model's weights file
    (.bin, .pt, .safetensors), or null for a seeded random tower (tests); `model_overrides` replaces
    keys of the model's config (embed_dim, text_cfg) for small towers. Embeddings are the projected,
    pooled text features, unit length when `normalize`; with `tokens`, the final layer's token states with that
    pooled vector packed after them (backbones/transformers_text.py's layout), for teachers that attend to tokens."""

    model: str = "ViT-B-32"
    checkpoint: str | None = None
    model_overrides: dict[str, Any] | None = None
    normalize: bool = True
    tokens: bool = False
    init_seed: int = 0
    cache_size: int = 100_000
    batch_size: int = 256
    device: str = "cpu"


def build_clip(options: OpenClipTextOptions, keep_visual: bool = False) -> nn.Module:
    """The open_clip model with its text tower only (the image tower is dropped once weights are in, unless
    `keep_visual`: the CLIP score reads both)."""
    import open_clip

    if open_clip.get_model_config(options.model) is None:
        raise ValueError(f"text_encoder.model: open_clip has no model {options.model!r}; e.g. ViT-B-32, ViT-L-14")
    checkpoint = None
    if options.checkpoint is not None:
        checkpoint = Path(options.checkpoint).expanduser()
        if not checkpoint.is_file():
            raise FileNotFoundError(f"text_encoder.checkpoint: {checkpoint} does not exist (weights are only "
                                    "read from local files)")
    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)          # open_clip warns on purpose about the random init we ask for
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.init_seed)
            model = open_clip.create_model(options.model, pretrained=str(checkpoint) if checkpoint else None,
                                           pretrained_text=False, **(options.model_overrides or {}))
    except RuntimeError as error:
        raise ValueError(f"text_encoder.checkpoint: {checkpoint} does not fit open_clip's {options.model} "
                         f"({str(error).splitlines()[0][:200]})") from None
    finally:
        quiet.setLevel(level)
    if not keep_visual:
        model.visual = None
    return model


class OpenClipTextEncoder(nn.Module):
    """Frozen text tower: `encode(prompts) -> [n, dim]` float32 on the CPU, cached (least recently used)."""

    def __init__(self, options: OpenClipTextOptions) -> None:
        super().__init__()
        import open_clip

        self.options = options
        self.clip = build_clip(options).to(options.device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(options.model,
                                                 context_length=self.clip.positional_embedding.shape[0])
        pooled_dim = int(self.clip.text_projection.shape[-1]) if self.clip.text_projection is not None else \
            int(self.clip.positional_embedding.shape[-1])
        self.cache = PromptCache(options.cache_size)
        self.layout = None
        self.dim = pooled_dim
        if options.tokens:
            context, width = self.clip.positional_embedding.shape
            self.layout = TextLayout(int(context), int(width), pooled_dim)
            self.dim = self.layout.dim
            self.register_buffer("null", self._compute([""]), persistent=False)

    def _tokens_and_pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """The final layer's token states and the pooled, projected vector, packed (open_clip's encode_text, with
        its states kept)."""
        from open_clip.transformer import text_global_pool

        clip = self.clip
        x = clip.token_embedding(tokens) + clip.positional_embedding
        states = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        pooled = text_global_pool(states, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
        if clip.text_projection is not None:
            pooled = clip.text_projection(pooled) if isinstance(clip.text_projection, nn.Linear) \
                else pooled @ clip.text_projection
        pooled = F.normalize(pooled, dim=-1) if self.options.normalize else pooled
        return self.layout.pack(states, pooled)

    @torch.no_grad()
    def _compute(self, prompts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(prompts), self.options.batch_size):
            tokens = self.tokenizer(prompts[start : start + self.options.batch_size]).to(self.options.device)
            encoded = (self._tokens_and_pooled(tokens) if self.layout is not None
                       else self.clip.encode_text(tokens, normalize=self.options.normalize))
            chunks.append(encoded.float().cpu())
        return torch.cat(chunks)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Pooled embeddings of the prompts (packed token states with `tokens`), computing only those not cached."""
        row_shape = tuple(self.null.shape[1:]) if self.layout is not None else (self.dim,)
        return self.cache.rows(prompts, self._compute, row_shape)


TEXT_ENCODERS.register("open_clip", OpenClipTextOptions)(lambda options, context: OpenClipTextEncoder(options))


def text_encoder_from_section(raw: dict[str, Any]) -> nn.Module:
    """A registered text encoder from a raw `text_encoder` section (a config file's, or a teacher file's record)."""
    section = load_component("text_encoder", raw)
    return TEXT_ENCODERS.get(section.kind, "text_encoder.kind").builder(section.options, None)
