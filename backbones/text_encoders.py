"""open_clip text towers for text-conditioned teachers: built offline from open_clip's model configs,
weights from a local checkpoint file (never a download), pooled prompt embeddings cached by prompt."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from potstill.core.config import load_component
from potstill.core.registry import TEXT_ENCODERS


@dataclass
class OpenClipTextOptions:
    """`model`: an open_clip model name (ViT-B-32, ViT-H-14, ...); `checkpoint`: that model's weights file
    (.bin, .pt, .safetensors), or null for a seeded random tower (tests); `model_overrides` replaces
    keys of the model's config (embed_dim, text_cfg) for small towers. Embeddings are the projected,
    pooled text features, unit length when `normalize`."""

    model: str = "ViT-B-32"
    checkpoint: str | None = None
    model_overrides: dict[str, Any] | None = None
    normalize: bool = True
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
        self.dim = int(self.clip.text_projection.shape[-1]) if self.clip.text_projection is not None else \
            int(self.clip.positional_embedding.shape[-1])
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def _compute(self, prompts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(prompts), self.options.batch_size):
            tokens = self.tokenizer(prompts[start : start + self.options.batch_size]).to(self.options.device)
            chunks.append(self.clip.encode_text(tokens, normalize=self.options.normalize).float().cpu())
        return torch.cat(chunks)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Pooled embeddings of the prompts, computing only those not in the cache."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self.cache))
        if missing:
            for prompt, row in zip(missing, self._compute(missing), strict=True):
                self.cache[prompt] = row
        rows = []
        for prompt in prompts:
            self.cache.move_to_end(prompt)
            rows.append(self.cache[prompt])
        while len(self.cache) > self.options.cache_size:
            self.cache.popitem(last=False)
        return torch.stack(rows) if rows else torch.zeros(0, self.dim)


TEXT_ENCODERS.register("open_clip", OpenClipTextOptions)(lambda options, context: OpenClipTextEncoder(options))


def text_encoder_from_section(raw: dict[str, Any]) -> nn.Module:
    """A registered text encoder from a raw `text_encoder` section (a config file's, or a teacher file's record)."""
    section = load_component("text_encoder", raw)
    return TEXT_ENCODERS.get(section.kind, "text_encoder.kind").builder(section.options, None)
