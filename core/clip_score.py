"""CLIP score (Hessel et al. 2021) of a text-conditioned image student: for each of the run's prompts, samples
conditioned on it, scored 100 max(cos(E_image(x), E_text(prompt)), 0) and averaged, by the open_clip model of the
run's text encoder with both towers (from its local weights file; a run with a seeded random text tower gets the
seeded random model). Images go from the data range to [0, 1], grey to RGB, then open_clip's preprocessing on
tensors: bicubic resize to the model's input size, its mean and std."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import repeat

from potstill.backbones.text_encoders import OpenClipTextOptions, build_clip
from potstill.core.modality import read_prompts


def clip_inputs(images: torch.Tensor, data_range: tuple[float, float], visual) -> torch.Tensor:
    """[N, 1 or 3, H, W] images in `data_range` as the image tower's normalised input."""
    low, high = data_range
    x = (images.float().clamp(low, high) - low) / (high - low)
    x = repeat(x, "n 1 h w -> n c h w", c=3) if x.shape[1] == 1 else x
    x = F.interpolate(x, size=tuple(visual.image_size), mode="bicubic", align_corners=False, antialias=True)
    mean = torch.tensor(visual.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(visual.image_std).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def clip_score_of(clip, tokenizer, images: torch.Tensor, prompts: list[str], data_range: tuple[float, float]
                  ) -> float:
    """Mean of 100 max(cos, 0) between each image and its prompt."""
    image = F.normalize(clip.encode_image(clip_inputs(images, data_range, clip.visual)).float(), dim=-1)
    text = F.normalize(clip.encode_text(tokenizer(prompts)).float(), dim=-1)
    return float((100 * (image * text).sum(-1)).clamp(min=0).mean())


@torch.no_grad()
def run_clip_score(distiller, n: int, batch: int) -> dict:
    """The `clip_score` section of a run's report: about n samples spread evenly over the run's prompts."""
    import open_clip

    config, modality = distiller.config, distiller.modality
    prompts = getattr(getattr(modality, "options", None), "prompts", None)
    if prompts is None or config.text_encoder is None or config.text_encoder.kind != "open_clip":
        raise ValueError("--clip-score: scores a text-conditioned image run (modality.prompts and an open_clip "
                         "text_encoder)")
    options: OpenClipTextOptions = config.text_encoder.options
    clip = build_clip(options, keep_visual=True).eval()
    tokenizer = open_clip.get_tokenizer(options.model, context_length=clip.positional_embedding.shape[0])
    prompts = read_prompts(prompts)
    per_prompt = max(1, math.ceil(n / len(prompts)))
    embeddings = distiller.text_encoder.encode(prompts)
    generator = torch.Generator().manual_seed(0)
    device = distiller.engine.device
    images, texts = [], []
    for prompt, embedding in zip(prompts, embeddings, strict=True):
        for start in range(0, per_prompt, batch):
            rows = min(batch, per_prompt - start)
            noise = torch.randn(rows, *modality.sample_shape, generator=generator).to(device)
            cond = embedding.expand(rows, -1).clone().to(device)
            images.append(distiller.ema.model.sample(noise, cond).float().cpu())
            texts += [prompt] * rows
    x = modality.to_data_range(torch.cat(images))
    return {"value": clip_score_of(clip, tokenizer, x, texts, modality.data_range), "n": len(texts),
            "prompts": len(prompts), "model": options.model}
