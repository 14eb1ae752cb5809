"""Token-sequence text conditioning from local transformers folders (CLIP, T5, ...), as diffusers teachers read it:
each encoder gives its token states (the last layer, or `hidden_layer` as SDXL and SD3 take the penultimate) and,
when it is a CLIP with a projection, its projected text embedding as the pooled vector. CLIP encoders join along
features (SDXL's two CLIPs), the others along tokens after zero-padding every part to the widest (SD3 adds T5 that
way), and the pooled vectors are concatenated (SDXL's one, SD3's two). One condition is one tensor
[tokens + pooled rows, width]: the pooled vector rides in trailing rows, zero-padded, so conditions batch, index and
double for guidance as any tensor does; `TextLayout.split` takes it apart."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from potstill.backbones.prompt_cache import PromptCache
from potstill.backbones.text_split import TextSplit, text_split
from potstill.core.config import AT_LEAST_1, RULES, ConfigError, Rule
from potstill.core.pretrained import load_pretrained, load_pretrained_partitioned
from potstill.core.registry import TEXT_ENCODERS


@dataclass
class TextModelOptions:
    """One encoder of a `transformers` text encoder: its model and tokenizer folders under `path`, the transformers
    class (null: the folder config's `architectures`), the layer whose states it gives (null: the last hidden state;
    -2: the penultimate, as SDXL and SD3 read CLIP), the tokens it pads or cuts prompts to, and whether its pooled
    vector (CLIP's projected or pooled output; T5 has none) joins the condition."""

    subfolder: str | None = "text_encoder"
    tokenizer_subfolder: str | None = "tokenizer"
    model_class: str | None = None
    hidden_layer: int | None = None
    max_length: int | None = None
    pooled: bool = True
    mask_padding: bool = False


@dataclass
class TransformersTextOptions:
    """`path`: a local folder (a diffusers pipeline's, or one encoder's own with subfolders null); `encoders`: one
    entry per text encoder, in the pipeline's order; `null`: the unconditional condition guidance uses, the
    encoding of the empty prompt (SD 1.x, SD3) or zeros (SDXL's `force_zeros_for_empty_prompt`)."""

    path: str = ""
    encoders: list[TextModelOptions] = field(default_factory=lambda: [TextModelOptions()])
    null: Literal["empty_prompt", "zeros"] = "empty_prompt"
    device: str = "cpu"
    batch_size: int = 64
    cache_size: int = 100_000


RULES[TextModelOptions] = {"max_length": Rule(lambda v: v is None or v >= 1, "at least 1")}
RULES[TransformersTextOptions] = {"batch_size": AT_LEAST_1, "cache_size": AT_LEAST_1}


def load_text_model(folder: Path, options: TextModelOptions, key: str, split: TextSplit | None = None
                    ) -> tuple[nn.Module, object]:
    """The frozen model and its tokenizer, from local files only (with `split`, streamed into partitions); errors
    name the key and the folder."""
    import transformers

    where = folder / (options.subfolder or "")
    if not (where / "config.json").is_file():
        raise ConfigError(f"{key}.subfolder: no config.json in {where}")
    name = options.model_class
    if name is None:
        name = (transformers.AutoConfig.from_pretrained(where, local_files_only=True).architectures or [None])[0]
        if name is None:
            raise ConfigError(f"{key}.model_class: {where}/config.json names no architecture; set the class")
    model_class = getattr(transformers, name, None)
    if model_class is None:
        raise ConfigError(f"{key}.model_class: transformers has no class {name!r}")
    model = (load_pretrained(model_class, folder, options.subfolder, key) if split is None else
             load_pretrained_partitioned(model_class, folder, options.subfolder, key, split.partition, torch.float32,
                                         split.budget))
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, subfolder=options.tokenizer_subfolder or "",
                                                               local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}.tokenizer_subfolder: no tokenizer in {folder / (options.tokenizer_subfolder or '')} "
                          f"({str(error).splitlines()[0][:200]})") from None
    if options.max_length is None and tokenizer.model_max_length > 100_000:
        raise ConfigError(f"{key}.max_length: the tokenizer in {folder / (options.tokenizer_subfolder or '')} sets no "
                          "length of its own (T5's do not); set the tokens prompts are padded to")
    return model.eval().requires_grad_(False), tokenizer


def is_clip(output) -> bool:
    """A CLIP text model's output (with its pooled end-token state or projected embedding); T5's has neither."""
    return getattr(output, "pooler_output", None) is not None or getattr(output, "text_embeds", None) is not None


def gather_whole_units(models: nn.ModuleList) -> None:
    """Under ZeRO-3, gather each unit a transformers model declares unsplittable (`_no_split_modules`: a CLIP layer,
    a T5 block, CLIP's embeddings, whose forward reads its position table's size) whole as it runs: ZeRO-3 gathers
    a module's own parameters only, and these read their children's outside the children's forwards."""
    from deepspeed.utils import set_z3_leaf_modules

    for model in models:
        set_z3_leaf_modules(model, list(getattr(model, "_no_split_modules", None) or []), raise_if_not_found=False)


@dataclass(frozen=True)
class TextLayout:
    """Where the parts of a packed condition [n, tokens + pooled_rows, dim] lie."""

    tokens: int
    dim: int
    pooled_dim: int

    @property
    def pooled_rows(self) -> int:
        return math.ceil(self.pooled_dim / self.dim)

    def pack(self, states: torch.Tensor, pooled: torch.Tensor | None) -> torch.Tensor:
        if pooled is None:
            return states
        rows = F.pad(pooled, (0, self.pooled_rows * self.dim - pooled.shape[-1]))
        return torch.cat([states, rearrange(rows, "n (r d) -> n r d", d=self.dim)], dim=1)

    def split(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token states [n, tokens, dim] and pooled vectors [n, pooled_dim] (None when there are none)."""
        if cond.ndim != 3 or tuple(cond.shape[1:]) != (self.tokens + self.pooled_rows, self.dim):
            raise ValueError(f"text condition: expected [n, {self.tokens + self.pooled_rows}, {self.dim}] from this "
                             f"text encoder, got {list(cond.shape)}")
        if not self.pooled_rows:
            return cond, None
        return cond[:, : self.tokens], rearrange(cond[:, self.tokens :], "n r d -> n (r d)")[:, : self.pooled_dim]


class TransformersTextEncoder(nn.Module):
    """`encode(prompts) -> [n, tokens + pooled_rows, dim]` float32 on the CPU, cached by prompt; `layout` takes
    such conditions apart; `null` [1, ...] is the unconditional one. With `split` the models are partitioned across
    ranks and every rank encodes together."""

    def __init__(self, options: TransformersTextOptions, split: TextSplit | None = None) -> None:
        super().__init__()
        if not options.encoders:
            raise ConfigError("text_encoder.encoders: name at least one encoder")
        folder = Path(options.path).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"text_encoder.path: {folder} is not a folder")
        self.options = options
        loaded = [load_text_model(folder, o, f"text_encoder.encoders[{i}]", split)
                  for i, o in enumerate(options.encoders)]
        models = nn.ModuleList([model for model, _ in loaded])
        self.device = torch.device(options.device) if split is None else split.device
        if split is not None:
            gather_whole_units(models)
        self.models = models.to(self.device) if split is None else split.prepare(models)
        self.tokenizers = [tokenizer for _, tokenizer in loaded]
        self.cache = PromptCache(options.cache_size, split.exchange if split is not None else None)
        states, pooled = self._encode_batch([""])
        self.layout = TextLayout(states.shape[1], states.shape[2], 0 if pooled is None else pooled.shape[1])
        self.dim = self.layout.dim
        empty = self.layout.pack(states, pooled)
        self.register_buffer("null", empty if options.null == "empty_prompt" else torch.zeros_like(empty),
                             persistent=False)

    @torch.no_grad()
    def _encode_batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        joined_features, joined_tokens, pooled = [], [], []
        for model, tokenizer, options in zip(self.models, self.tokenizers, self.options.encoders, strict=True):
            length = options.max_length or tokenizer.model_max_length
            tokens = tokenizer(prompts, padding="max_length", max_length=length, truncation=True,
                               return_tensors="pt").to(self.device)
            mask = tokens.attention_mask if options.mask_padding else None
            output = model(tokens.input_ids, attention_mask=mask, output_hidden_states=options.hidden_layer is not None)
            states = (output.last_hidden_state if options.hidden_layer is None
                      else output.hidden_states[options.hidden_layer])
            if mask is not None:
                states = states * mask[..., None].to(states)
            vector = getattr(output, "text_embeds", None)
            if vector is not None and options.pooled:
                pooled.append(vector)
            (joined_features if is_clip(output) else joined_tokens).append(states)
        parts = ([torch.cat(joined_features, dim=-1)] if joined_features else []) + joined_tokens
        width = max(p.shape[-1] for p in parts)
        states = torch.cat([F.pad(p, (0, width - p.shape[-1])) for p in parts], dim=1)
        return states.float().cpu(), torch.cat(pooled, dim=-1).float().cpu() if pooled else None

    def _compute(self, prompts: list[str]) -> torch.Tensor:
        chunks = [self.layout.pack(*self._encode_batch(prompts[start : start + self.options.batch_size]))
                  for start in range(0, len(prompts), self.options.batch_size)]
        return torch.cat(chunks)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Packed conditions of the prompts, computing only those not in the cache."""
        return self.cache.rows(prompts, self._compute, tuple(self.null.shape[1:]))


TEXT_ENCODERS.register("transformers", TransformersTextOptions)(
    lambda options, context: TransformersTextEncoder(options, text_split(context)))
