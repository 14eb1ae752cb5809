"""Teachers from a local diffusers folder (`teacher: {kind: diffusers, path: DIR}`), loaded offline and whole
(core/pretrained.py): the model (MODEL_CLASSES: UNet2DModel, UNet2DConditionModel, DiT, PixArt, SD3 and Wan
transformers) answers the Denoiser's backbone call (class labels, or token-sequence text conditions with the empty
prompt's as the null one), its scheduler's config becomes the potstill schedule exactly (core/diffusers_schedule.py),
and its blocks (a UNet's down, mid and up blocks, a transformer's blocks) are the `features` the discriminator heads
read, so every objective and adversary runs on it unchanged. From the folder alone: the model's subfolder and class,
a pipeline's own text encoders (read as its pipeline class reads them) and its VAE as the codec."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from potstill.backbones.text_split import TextSplit, text_split
from potstill.backbones.transformers_text import (
    TextLayout,
    TextModelOptions,
    TransformersTextEncoder,
    TransformersTextOptions,
)
from potstill.core.config import ConfigError
from potstill.core.denoiser import Denoiser
from potstill.core.diffusers_schedule import load_scheduler_schedule
from potstill.core.diffusers_vae import config_class_name
from potstill.core.pretrained import load_pretrained, load_pretrained_partitioned
from potstill.core.registry import TEACHERS
from potstill.core.teacher_file import teacher_build_options


def unet_blocks(model: nn.Module) -> list[nn.Module]:
    return [*model.down_blocks, model.mid_block, *model.up_blocks]


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.transformer_blocks)


def wan_blocks(model: nn.Module) -> list[nn.Module]:
    return list(model.blocks)


def unet_classes(model: nn.Module) -> tuple[int, int | None]:
    """(classes, null class): a UNet2DModel's class embedding has no null row."""
    return model.config.num_class_embeds or 0, None


def dit_classes(model: nn.Module) -> tuple[int, int | None]:
    """(classes, null class): DiT's label table has one extra row, the null class, when it was trained with label
    dropout."""
    classes = model.config.num_embeds_ada_norm or 0
    table = model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table
    return classes, classes if table.num_embeddings > classes else None


def no_classes(model: nn.Module) -> tuple[int, int | None]:
    return 0, None


def cross_attention_inputs(states: torch.Tensor, pooled: torch.Tensor | None) -> dict:
    return {"encoder_hidden_states": states}


def sd3_inputs(states: torch.Tensor, pooled: torch.Tensor | None) -> dict:
    """SD3's joint attention reads the token states and its adaLN the pooled vector."""
    return {"encoder_hidden_states": states, "pooled_projections": pooled}


def pixart_inputs(states: torch.Tensor, pooled: torch.Tensor | None) -> dict:
    """PixArt's micro-conditions (resolution, aspect ratio) are off below its 1024-pixel models."""
    return {"encoder_hidden_states": states, "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}


@dataclass(frozen=True)
class ModelReader:
    """How potstill reads one diffusers model class: its feature blocks and which output of a block is the image
    stream (SD3's joint blocks return the text stream first), its classes, and for a text model the arguments its
    conditions become, the config key of the token width it attends to and that of the pooled width it takes."""

    blocks: Callable[[nn.Module], list[nn.Module]]
    classes: Callable[[nn.Module], tuple[int, int | None]]
    text_inputs: Callable[[torch.Tensor, torch.Tensor | None], dict] | None = None
    text_width_key: str = ""
    pooled_width_key: str = ""
    image_stream: int = 0

    def block_output(self, output) -> torch.Tensor:
        """A block's image hidden states (a UNet's down blocks also return their skip tensors)."""
        return output[self.image_stream] if isinstance(output, tuple) else output


MODEL_CLASSES = {
    "UNet2DModel": ModelReader(unet_blocks, unet_classes),
    "UNet2DConditionModel": ModelReader(unet_blocks, no_classes, cross_attention_inputs, "cross_attention_dim"),
    "DiTTransformer2DModel": ModelReader(transformer_blocks, dit_classes),
    "PixArtTransformer2DModel": ModelReader(transformer_blocks, no_classes, pixart_inputs, "caption_channels"),
    "SD3Transformer2DModel": ModelReader(transformer_blocks, no_classes, sd3_inputs, "joint_attention_dim",
                                         "pooled_projection_dim", image_stream=1),
    "WanTransformer3DModel": ModelReader(wan_blocks, no_classes, cross_attention_inputs, "text_dim"),
}


@dataclass
class DiffusersTeacherOptions:
    """`path`: a local diffusers folder (a pipeline's, or a model's own); `subfolder`: the model's folder in it
    (null: `unet/` or `transformer/` when there, else the folder itself); `model_class`: the diffusers class that
    reads it (MODEL_CLASSES; null: the `_class_name` its config.json names);
    `scheduler_subfolder`: where the scheduler config lies (a DDPM-family scheduler: DDPM, DDIM, Euler, ...; or a
    flow-matching one); `sigma_data`: the data's std, for the objectives that read it; `sample_shape`: one sample's
    [C, H, W] or [C, F, H, W] (the model's latents), for models whose config has no `sample_size` (Wan's)."""

    path: str = ""
    subfolder: str | None = None
    model_class: str | None = None
    scheduler_subfolder: str = "scheduler"
    sigma_data: float = 0.5
    sample_shape: list[int] | None = None


class DiffusersBackbone(nn.Module):
    """`backbone(x, c_noise, cond, features)` for a diffusers model: c_noise is the scheduler's timestep, `cond`
    class labels when the model embeds classes, packed text conditions (backbones/transformers_text.py) when it
    reads text, whose null is `null_text` (the text encoder's empty prompt); the output keeps x's channels (a DiT's
    learned-variance channels are dropped); features are the blocks' outputs as [B, H, W, C] or [B, tokens, C]. The
    model never runs in training mode: a student copy conditions on every label (no label dropout) and has no dropout
    of its own."""

    def __init__(self, model: nn.Module, reader: ModelReader, null_class: int | None,
                 text: TextLayout | None = None, null_text: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model, self.reader, self.null_class, self.text = model, reader, null_class, text
        self.blocks = reader.blocks(model)
        self.text_dim = text.dim if text is not None else 0
        self.register_buffer("null_text", null_text, persistent=False)

    def train(self, mode: bool = True) -> DiffusersBackbone:
        super().train(mode)
        self.model.eval()
        return self

    def null_condition(self, cond):
        if self.text is not None:
            return self.null_text.to(cond).expand(len(cond), -1, -1)
        if self.null_class is None:
            raise ValueError(f"guidance: this diffusers {type(self.model).__name__} has no null class to guide "
                             "against; use guidance 1")
        return torch.full_like(cond, self.null_class)

    def condition_arguments(self, cond) -> dict:
        if self.text is None:
            return {"class_labels": cond}
        return self.reader.text_inputs(*self.text.split(cond))

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond=None, features: list[int] | None = None):
        captured: list[torch.Tensor] = []
        keep = self.reader.block_output
        hooks = ([block.register_forward_hook(lambda module, args, output: captured.append(keep(output)))
                  for block in self.blocks] if features is not None else [])
        try:
            out = self.model(x, timestep=c_noise, **self.condition_arguments(cond), return_dict=False)[0]
            out = out[:, : x.shape[1]]
        finally:
            for hook in hooks:
                hook.remove()
        if features is None:
            return out
        chosen = [captured[i] for i in features]
        return out, [rearrange(f, "b c h w -> b h w c") if f.ndim == 4 else f for f in chosen]


@dataclass(frozen=True)
class ModelLocation:
    """Where a teacher's model lies and which diffusers class reads it, with the defaults resolved."""

    folder: Path
    subfolder: str | None
    model_class: str


def locate_model(options: DiffusersTeacherOptions) -> ModelLocation:
    """The folder, subfolder and class of the options, null ones found from the folder (errors name the key)."""
    folder = Path(options.path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"teacher.path: {folder} is not a folder")
    subfolder = options.subfolder
    if subfolder is None:
        subfolder = next((name for name in ("unet", "transformer") if (folder / name / "config.json").is_file()), None)
    model_class = options.model_class or config_class_name(folder / (subfolder or ""), "teacher")
    if model_class not in MODEL_CLASSES:
        raise ConfigError(f"teacher.model_class: {model_class!r} is not supported yet; valid: "
                          f"{', '.join(MODEL_CLASSES)}")
    return ModelLocation(folder, subfolder, model_class)


@dataclass(frozen=True)
class PipelineTextRule:
    """How a pipeline class reads its text encoders: CLIP's layer, T5's padded length, whether T5's padding is
    masked (and its states zeroed)."""

    clip_layer: int | None = None
    t5_length: int | None = None
    t5_masked: bool = False


PIPELINE_TEXT_RULES = {          # pipeline class prefix: its rule
    "StableDiffusion3": PipelineTextRule(-2, 256),
    "StableDiffusionXL": PipelineTextRule(-2),
    "Wan": PipelineTextRule(t5_length=512, t5_masked=True),
}


def pipeline_text_encoder(folder: Path, split: TextSplit | None = None) -> TransformersTextEncoder:
    """The text encoders a pipeline folder holds (text_encoder/, text_encoder_2/, ... with their tokenizers), read as
    its pipeline class reads them: SD3 and SDXL take CLIP's penultimate layer, SD3 pads T5 to 256 tokens, Wan to 512
    with the padding masked; with `split`, partitioned across ranks."""
    names = [name for name in ("text_encoder", "text_encoder_2", "text_encoder_3")
             if (folder / name / "config.json").is_file()]
    if not names:
        raise ConfigError(f"text_encoder: the teacher reads token sequences and {folder} holds no text_encoder/; "
                          "set the run's text_encoder to kind transformers (its CLIP or T5 folders)")
    index = folder / "model_index.json"
    pipeline = json.loads(index.read_text()).get("_class_name", "") if index.is_file() else ""
    rule = next((rule for prefix, rule in PIPELINE_TEXT_RULES.items() if pipeline.startswith(prefix)),
                PipelineTextRule())
    encoders = []
    for name in names:
        model_type = json.loads((folder / name / "config.json").read_text()).get("model_type", "")
        t5 = model_type in ("t5", "umt5")
        encoders.append(TextModelOptions(name, name.replace("text_encoder", "tokenizer"),
                                         hidden_layer=rule.clip_layer if model_type.startswith("clip") else None,
                                         max_length=rule.t5_length if t5 else None,
                                         mask_padding=rule.t5_masked and t5))
    return TransformersTextEncoder(TransformersTextOptions(str(folder), encoders), split)


def text_conditioning(model: nn.Module, location: ModelLocation, reader: ModelReader, context
                      ) -> tuple[TextLayout, torch.Tensor]:
    """The run's token-sequence text encoder's layout and null condition, checked against the model's width. With
    no text_encoder section, the encoders in the teacher's own folder (split across ranks with the teacher), which
    then become the run's."""
    model_class = location.model_class
    encoder = getattr(context, "text_encoder", None)
    if encoder is None:
        teacher = getattr(getattr(context, "config", None), "teacher", None)
        encoder = context.text_encoder = pipeline_text_encoder(
            location.folder, text_split(context, teacher is not None and teacher.shard))
    layout = getattr(encoder, "layout", None)
    if layout is None:
        raise ConfigError(f"text_encoder: this {model_class} reads token sequences; set the run's text_encoder to "
                          "kind transformers (its CLIP or T5 folders)")
    if getattr(model.config, "addition_embed_type", None) is not None:
        raise ConfigError(f"teacher: this {model_class} adds a {model.config.addition_embed_type!r} embedding "
                          "(SDXL's micro-conditioning), which is not supported yet")
    width = getattr(model.config, reader.text_width_key)
    if layout.dim != width:
        raise ConfigError(f"text_encoder: its token states are {layout.dim} wide; this {model_class} attends to "
                          f"{width}")
    pooled = getattr(model.config, reader.pooled_width_key) if reader.pooled_width_key else None
    if pooled is not None and layout.pooled_dim != pooled:
        raise ConfigError(f"text_encoder: its pooled vectors are {layout.pooled_dim} wide; this {model_class} takes "
                          f"{pooled} (SD3's: the two CLIPs' projected embeddings side by side)")
    return layout, encoder.null


def sample_shape(model: nn.Module, options: DiffusersTeacherOptions, location: ModelLocation) -> tuple[int, ...]:
    """`teacher.sample_shape`, else [in_channels, size, size] from the model's config."""
    config = model.config
    if options.sample_shape is not None:
        if len(options.sample_shape) not in (3, 4) or options.sample_shape[0] != config.in_channels:
            raise ConfigError(f"teacher.sample_shape: {options.sample_shape} is not [{config.in_channels}, H, W] or "
                              f"[{config.in_channels}, F, H, W] (the model takes {config.in_channels} channels)")
        return tuple(options.sample_shape)
    size = getattr(config, "sample_size", None)
    if size is None:
        raise ConfigError(f"teacher.sample_shape: this {location.model_class}'s config has no sample_size; set one "
                          f"sample's latent shape, e.g. [{config.in_channels}, 21, 60, 104]")
    size = size if isinstance(size, int) else size[0]
    return config.in_channels, size, size


@TEACHERS.register("diffusers", DiffusersTeacherOptions)
def build_diffusers_teacher(options: DiffusersTeacherOptions, context) -> Denoiser:
    """The teacher; a folder with a vae/ records it as the codec (`codec: null` then decodes through it)."""
    import diffusers

    location = locate_model(options)
    folder = location.folder
    model_class = getattr(diffusers, location.model_class)
    split = teacher_build_options(context)
    if split.get("partition") is not None:
        model = load_pretrained_partitioned(model_class, folder, location.subfolder, "teacher.path", **split)
    else:
        model = load_pretrained(model_class, folder, location.subfolder, "teacher.path")
    schedule, prediction = load_scheduler_schedule(folder, options.scheduler_subfolder)
    reader = MODEL_CLASSES[location.model_class]
    num_classes, null_class = reader.classes(model)
    text, null_text = (text_conditioning(model, location, reader, context) if reader.text_inputs is not None
                       else (None, None))
    backbone = DiffusersBackbone(model, reader, null_class, text, null_text)
    teacher = Denoiser(backbone, schedule, prediction, options.sigma_data, sample_shape(model, options, location),
                       num_classes)
    if (folder / "vae" / "config.json").is_file():
        teacher.metadata = {"codec": {"kind": "diffusers_vae", "path": str(folder)}}
    return teacher
