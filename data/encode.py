"""`potstill data encode PATTERN OUT_DIR --config RUN.yaml`: copy shards adding each sample's codec latents (the run's
`codec` section, or the VAE its diffusers teacher folder holds), decoded as the run's `real_data` decodes them; a
run then reads `real_data: {media: tensor, tensor: {fields: [latent.npy]}}` and never runs the encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from potstill.core.config import load_config
from potstill.core.distiller import BuildContext, build_frozen_parts
from potstill.core.engine import PlainEngine
from potstill.data.embed import AddedFieldSummary, FieldRecipe, add_field_to_shards, shard_targets
from potstill.data.fields import first_present
from potstill.data.webdataset_source import WebDatasetOptions, build_decoder


def run_codec_and_decoder(config_path: Path):
    """The run's codec and its real data's per-sample decoder, sized to the data the codec encodes."""
    config = load_config(config_path, ["engine=plain", "engine.device=cpu"])
    context = BuildContext(config, PlainEngine(config.engine.options, config.train))
    build_frozen_parts(context)
    if context.codec is None:
        raise ValueError(f"--config {config_path}: the run has no codec (a codec section, or a diffusers teacher "
                         "folder with a vae/) to encode with")
    real = config.real_data
    if real is None or not isinstance(real.options, WebDatasetOptions) or real.options.media == "tensor":
        raise ValueError(f"--config {config_path}: real_data must be a webdataset section of images, video or audio "
                         "(its decoding settings are the ones encoded)")
    return context.codec, build_decoder(real.options, context.data_shape)


def encode_shards(pattern: str, out_dir: Path, config_path: Path, out_field: str = "latent.npy",
                  batch: int = 32) -> AddedFieldSummary:
    """Each sample's latents under `out_field`; samples whose media cannot be decoded are copied and reported."""
    shard_targets(pattern, out_dir)        # a bad OUT_DIR fails before the models are loaded
    codec, decoder = run_codec_and_decoder(config_path)
    rng = np.random.default_rng(0)

    def read(sample: dict) -> torch.Tensor:
        return decoder.media(sample[first_present(sample, decoder.media_fields)], rng)

    @torch.no_grad()
    def compute(data: list[torch.Tensor]) -> torch.Tensor:
        return codec.encode(torch.stack(data)).cpu()

    recipe = FieldRecipe(read, compute, out_field, "undecodable", batch)
    return add_field_to_shards(pattern, out_dir, recipe, AddedFieldSummary("encoded", "media"))
