"""Tiny diffusers and transformers models with random weights, saved with `save_pretrained` into temp folders
(nothing downloads): a Stable-Diffusion-like pipeline folder on 8x8 grey images (an AutoencoderKL to 2x4x4
latents, a UNet2DConditionModel attending to a CLIP text model's tokens, a DDPM scheduler), and the CLIP and T5
encoders with their tokenizers that SD3-style text conditioning joins."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CHARACTERS = list(string.ascii_lowercase + string.digits)
TOKENS = 32          # the tiny text models' context: a digit caption is 24 character tokens with its start and end
WIDTH = 16           # the CLIP model's token width, which the UNet attends to


def perturb(model: torch.nn.Module, scale: float = 0.02) -> torch.nn.Module:
    """Random weights past diffusers' zero-initialised output layers, so every input matters."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return model


def clip_tokenizer(folder: Path):
    """A CLIP BPE tokenizer whose vocabulary is single characters (no merges)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):
        vocab |= {c + suffix: len(vocab) + i for i, c in enumerate(CHARACTERS)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=TOKENS)
    tokenizer.save_pretrained(folder)
    return tokenizer


def t5_tokenizer(folder: Path):
    """A fast word-level tokenizer over single characters, as T5's folders hold a tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {c: i + 3 for i, c in enumerate(CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                        model_max_length=12)
    tokenizer.save_pretrained(folder)
    return tokenizer


def clip_text_model(width: int = WIDTH, projection: int | None = None, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=2 + 2 * len(CHARACTERS), hidden_size=width, intermediate_size=2 * width,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=TOKENS,
                            projection_dim=projection or width, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def t5_text_model(width: int = 24, umt5: bool = False):
    """A T5 encoder (UMT5's, as Wan's, with `umt5`)."""
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    torch.manual_seed(2)
    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    return model_class(config_class(vocab_size=3 + len(CHARACTERS), d_model=width, d_kv=8, d_ff=2 * width,
                                    num_layers=1, num_heads=2))


def tiny_unet(prediction_channels: int = 2, cross_attention_dim: int = WIDTH):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return perturb(UNet2DConditionModel(
        sample_size=4, in_channels=2, out_channels=prediction_channels, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cross_attention_dim,
        attention_head_dim=4, norm_num_groups=8))


def tiny_vae(shift_factor: float | None = None):
    """StableDiffusionPipeline decodes with the scaling factor only, so the pipeline folder's VAE has no shift."""
    from diffusers import AutoencoderKL

    torch.manual_seed(3)
    return AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=2,
                         norm_num_groups=8, sample_size=8, scaling_factor=0.7, shift_factor=shift_factor)


def save_sd_like(folder: Path, prediction: str = "v_prediction") -> Path:
    """A StableDiffusionPipeline folder (model_index.json and its parts) of tiny random models."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type=prediction,
                              clip_sample=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(vae=tiny_vae(), text_encoder=clip_text_model(),
                                       tokenizer=clip_tokenizer(folder / "tokenizer"), unet=tiny_unet(),
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipeline.save_pretrained(folder)
    return folder


def save_sd3_text_encoders(folder: Path) -> Path:
    """Two CLIPs with projections (widths 16 and 8, projections 12 and 10) and a T5 (width 32), as SD3 holds them."""
    clip_text_model(16, projection=12, seed=0).save_pretrained(folder / "text_encoder")
    clip_text_model(8, projection=10, seed=1).save_pretrained(folder / "text_encoder_2")
    t5_text_model(32).save_pretrained(folder / "text_encoder_3")
    clip_tokenizer(folder / "tokenizer")
    clip_tokenizer(folder / "tokenizer_2")
    t5_tokenizer(folder / "tokenizer_3")
    return folder


def save_sd3_like(folder: Path, shift: float = 3.0) -> Path:
    """An SD3 folder's denoising parts: a joint-attention transformer on 2x4x4 latents reading 32-wide tokens and a
    22-wide pooled vector, and a flow-matching scheduler with a static shift."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(0)
    perturb(SD3Transformer2DModel(sample_size=4, patch_size=2, in_channels=2, num_layers=2, attention_head_dim=8,
                                  num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                  pooled_projection_dim=22, out_channels=2, pos_embed_max_size=8)
            ).save_pretrained(folder / "transformer")
    FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(folder / "scheduler")
    return save_sd3_text_encoders(folder)


def save_pixart_like(folder: Path) -> Path:
    """A PixArt folder's parts: a transformer with learned variance on 2x4x4 latents attending to a T5's 24-wide
    tokens, and a DDPM-family scheduler (epsilon)."""
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel

    torch.manual_seed(0)
    perturb(PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=2, out_channels=4,
                                     num_layers=2, cross_attention_dim=16, sample_size=4, patch_size=2,
                                     caption_channels=24)).save_pretrained(folder / "transformer")
    DPMSolverMultistepScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                                prediction_type="epsilon").save_pretrained(folder / "scheduler")
    t5_text_model(24).save_pretrained(folder / "text_encoder")
    t5_tokenizer(folder / "tokenizer")
    return folder


def save_sd3_pipeline(folder: Path) -> Path:
    """A StableDiffusion3Pipeline folder (model_index.json) of the SD3-like parts and a VAE with a shift factor."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

    parts = save_sd3_like(folder / "parts")
    StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel.from_pretrained(parts, subfolder="transformer"),
        scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(parts, subfolder="scheduler"),
        vae=tiny_vae(shift_factor=0.1),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(parts, subfolder="text_encoder"),
        tokenizer=AutoTokenizer.from_pretrained(parts, subfolder="tokenizer"),
        text_encoder_2=CLIPTextModelWithProjection.from_pretrained(parts, subfolder="text_encoder_2"),
        tokenizer_2=AutoTokenizer.from_pretrained(parts, subfolder="tokenizer_2"),
        text_encoder_3=T5EncoderModel.from_pretrained(parts, subfolder="text_encoder_3"),
        tokenizer_3=AutoTokenizer.from_pretrained(parts, subfolder="tokenizer_3"),
    ).save_pretrained(folder / "pipeline")
    return folder / "pipeline"


def tiny_wan_transformer():
    """Wan's video transformer on 2x3x4x4 latents attending to 24-wide text tokens (its RoPE tables are buffers
    it computes as it is made)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    return perturb(WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                         in_channels=2, out_channels=2, text_dim=24, freq_dim=16, ffn_dim=32,
                                         num_layers=2, rope_max_seq_len=32))


def save_wan_like(folder: Path) -> Path:
    """A Wan folder's parts: a video transformer on 2x3x4x4 latents attending to a T5's 24-wide tokens, Wan's
    UniPC scheduler on flow sigmas with a flow shift, a Wan VAE from grey 5x8x8 clips to those latents, and UMT5."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler

    tiny_wan_transformer().save_pretrained(folder / "transformer")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
                            ).save_pretrained(folder / "scheduler")
    torch.manual_seed(4)
    AutoencoderKLWan(base_dim=8, z_dim=2, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[True],
                     latents_mean=[0.1, -0.2], latents_std=[2.0, 0.5], in_channels=1, out_channels=1
                     ).save_pretrained(folder / "vae")
    t5_text_model(24, umt5=True).save_pretrained(folder / "text_encoder")
    t5_tokenizer(folder / "tokenizer")
    return folder


def save_wan_pipeline(folder: Path) -> Path:
    """A WanPipeline folder (model_index.json) of the Wan-like parts, its scheduler FlowMatchEuler as Wan's own."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5EncoderModel

    parts = save_wan_like(folder / "parts")
    WanPipeline(
        tokenizer=AutoTokenizer.from_pretrained(parts, subfolder="tokenizer"),
        text_encoder=UMT5EncoderModel.from_pretrained(parts, subfolder="text_encoder"),
        transformer=WanTransformer3DModel.from_pretrained(parts, subfolder="transformer"),
        vae=AutoencoderKLWan.from_pretrained(parts, subfolder="vae"),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    ).save_pretrained(folder / "pipeline")
    return folder / "pipeline"
