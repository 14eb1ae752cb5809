"""open_clip text towers for text-conditioned teachers: built offline from open_clip's model configs,
weights from a local checkpoint file (never a download), pooled prompt embeddings cached by prompt."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from potstill.backbones.prompt_cache import PromptCache
from potstill.backbones.text_split import TextSplit, text_split
from potstill.backbones.transformers_text import TextLayout
from potstill.core.config import ConfigError, load_component
from potstill.core.registry import TEXT_ENCODERS
from potstill.core.zero_build import build_with_weights, copy_module, full_shape


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


def clip_checkpoint(options: OpenClipTextOptions) -> Path | None:
    """The local weights file `text_encoder.checkpoint` names (checked), or None for a seeded random tower."""
    import open_clip

    if open_clip.get_model_config(options.model) is None:
        raise ValueError(f"text_encoder.model: open_clip has no model {options.model!r}; e.g. ViT-B-32, ViT-L-14")
    if options.checkpoint is None:
        return None
    checkpoint = Path(options.checkpoint).expanduser()
    if not checkpoint.is_file():
        raise FileNotFoundError(f"text_encoder.checkpoint: {checkpoint} does not exist (weights are only "
                                "read from local files)")
    return checkpoint


def create_clip(options: OpenClipTextOptions, checkpoint: Path | None) -> nn.Module:
    """open_clip's model from its config, seeded, with the weights of `checkpoint` when given."""
    import open_clip

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)          # open_clip warns on purpose about the random init we ask for
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.init_seed)
            return open_clip.create_model(options.model, pretrained=str(checkpoint) if checkpoint else None,
                                          pretrained_text=False, **(options.model_overrides or {}))
    except RuntimeError as error:
        raise ValueError(f"text_encoder.checkpoint: {checkpoint} does not fit open_clip's {options.model} "
                         f"({str(error).splitlines()[0][:200]})") from None
    finally:
        quiet.setLevel(level)


def build_clip(options: OpenClipTextOptions, keep_visual: bool = False) -> nn.Module:
    """The open_clip model with its text tower only (the image tower is dropped once weights are in, unless
    `keep_visual`: the CLIP score reads both)."""
    model = create_clip(options, clip_checkpoint(options))
    return model if keep_visual else text_only(model)


NOT_TEXT = ("visual.", "logit_scale", "logit_bias")     # the image tower and the contrastive temperature


def text_only(model: nn.Module) -> nn.Module:
    """The CLIP without what text encoding does not read (ZeRO-3 could not split the scalar temperature either)."""
    model.visual = None
    for name in ("logit_scale", "logit_bias"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    return model


def clip_architecture(options: OpenClipTextOptions) -> nn.Module:
    """open_clip's CLIP as `create_model` makes it (its config, then `model_overrides` replacing keys), without the
    move to a device that a model on the meta device cannot make."""
    import open_clip

    config = copy.deepcopy(open_clip.get_model_config(options.model))
    if config.pop("custom_text", False) or "hf_model_name" in config.get("text_cfg", {}):
        raise ConfigError(f"text_encoder.model: {options.model}'s text tower is not open_clip's own transformer; "
                          "open_clip encoders read that one")
    return open_clip.CLIP(**(config | (options.model_overrides or {})))


def build_clip_split(options: OpenClipTextOptions, split: TextSplit) -> nn.Module:
    """The text tower partitioned across ranks: streamed from a safetensors checkpoint one tensor at a time (the
    image tower's weights and the temperature passed over), or, for a seeded random tower (tests), made whole and
    split."""
    checkpoint = clip_checkpoint(options)
    if checkpoint is None:
        return copy_module(text_only(create_clip(options, None)), split.partition, torch.float32)
    return build_with_weights(lambda: text_only(clip_architecture(options)), checkpoint, "text_encoder.checkpoint",
                              str(checkpoint), f"open_clip {options.model} text tower", split.partition,
                              torch.float32, split.budget, skip=lambda name: name.startswith(NOT_TEXT))


class ClipTextTower(nn.Module):
    """open_clip's text path as one forward, so that ZeRO-3, which gathers a module's own parameters as it runs,
    gathers the CLIP's top-level ones (positional embedding, projection) with it: `forward(tokens)` gives the
    projected, pooled features, or with `layout` the final token states with that vector packed after them."""

    def __init__(self, clip: nn.Module, normalize: bool, layout: TextLayout | None) -> None:
        super().__init__()
        self.clip, self.normalize, self.layout = clip, normalize, layout

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.layout is None:
            return self.clip.encode_text(tokens, normalize=self.normalize)
        return self._tokens_and_pooled(tokens)

    def _tokens_and_pooled(self, tokens: torch.Tensor) -> torch.Tensor:
        """open_clip's encode_text, with its states kept."""
        from open_clip.transformer import text_global_pool

        clip = self.clip
        x = clip.token_embedding(tokens) + clip.positional_embedding
        states = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        pooled = text_global_pool(states, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
        if clip.text_projection is not None:
            pooled = clip.text_projection(pooled) if isinstance(clip.text_projection, nn.Linear) \
                else pooled @ clip.text_projection
        pooled = F.normalize(pooled, dim=-1) if self.normalize else pooled
        return self.layout.pack(states, pooled)


def gather_with_the_tower(tower: ClipTextTower) -> None:
    """Under ZeRO-3, the CLIP's top-level parameters are gathered when the tower runs (they belong to no layer)."""
    import deepspeed

    for parameter in tower.clip._parameters.values():
        if parameter is not None:
            deepspeed.zero.register_external_parameter(tower, parameter)


class OpenClipTextEncoder(nn.Module):
    """Frozen text tower: `encode(prompts) -> [n, dim]` float32 on the CPU, cached (least recently used). With
    `split` the tower is partitioned across ranks and every rank encodes together."""

    def __init__(self, options: OpenClipTextOptions, split: TextSplit | None = None) -> None:
        super().__init__()
        import open_clip

        self.options = options
        clip = build_clip(options) if split is None else build_clip_split(options, split)
        clip = clip.eval().requires_grad_(False)
        context, width = full_shape(clip.positional_embedding)
        self.tokenizer = open_clip.get_tokenizer(options.model, context_length=int(context))
        projection = clip.text_projection
        pooled_dim = int(width) if projection is None else int(
            projection.out_features if isinstance(projection, nn.Linear) else full_shape(projection)[-1])
        self.layout = TextLayout(int(context), int(width), pooled_dim) if options.tokens else None
        self.dim = self.layout.dim if self.layout is not None else pooled_dim
        self.device = torch.device(options.device) if split is None else split.device
        tower = ClipTextTower(clip, options.normalize, self.layout)
        if split is None:
            self.tower = tower.to(self.device)
        else:
            self.tower = split.prepare(tower)
            gather_with_the_tower(self.tower)
        self.cache = PromptCache(options.cache_size, split.exchange if split is not None else None)
        if options.tokens:
            self.register_buffer("null", self._compute([""]), persistent=False)

    @property
    def clip(self) -> nn.Module:
        return self.tower.clip

    @torch.no_grad()
    def _compute(self, prompts: list[str]) -> torch.Tensor:
        chunks = []
        for start in range(0, len(prompts), self.options.batch_size):
            tokens = self.tokenizer(prompts[start : start + self.options.batch_size]).to(self.device)
            chunks.append(self.tower(tokens).float().cpu())
        return torch.cat(chunks)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Pooled embeddings of the prompts (packed token states with `tokens`), computing only those not cached."""
        row_shape = tuple(self.null.shape[1:]) if self.layout is not None else (self.dim,)
        return self.cache.rows(prompts, self._compute, row_shape)


TEXT_ENCODERS.register("open_clip", OpenClipTextOptions)(
    lambda options, context: OpenClipTextEncoder(options, text_split(context)))


def text_encoder_from_section(raw: dict[str, Any]) -> nn.Module:
    """A registered text encoder from a raw `text_encoder` section (a config file's, or a teacher file's record)."""
    section = load_component("text_encoder", raw)
    return TEXT_ENCODERS.get(section.kind, "text_encoder.kind").builder(section.options, None)
