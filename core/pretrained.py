"""Loading diffusers and transformers models from local folders, refusing a partial load: both libraries fill any
weight a folder lacks with a fresh random one and only warn (a wrong `model_class` then gives a random teacher).
Under ZeRO-3 a diffusers teacher or a transformers text encoder is instead built empty and streamed into its
partitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from potstill.core.config import ConfigError
from potstill.core.zero_build import build_with_weights


def load_pretrained(model_class: type, folder: Path, subfolder: str | None, key: str) -> nn.Module:
    """`model_class.from_pretrained` on local files only; an unreadable folder, or weights missing, unexpected or
    of the wrong shape, is an error naming `key` and the folder."""
    where = folder / (subfolder or "")
    try:
        model, info = model_class.from_pretrained(folder, subfolder=subfolder or "", local_files_only=True,
                                                  output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{key}: no {model_class.__name__} in {where} ({str(error).splitlines()[0][:200]})") from None
    wrong = {kind: sorted(info.get(kind) or ()) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(wrong.values()):
        found = "; ".join(f"{kind.replace('_', ' ')}: {', '.join(map(str, names[:3]))}"
                          for kind, names in wrong.items() if names)
        raise ConfigError(f"{key}: {where} does not hold a whole {model_class.__name__} ({found}); is it the "
                          "right folder and class?")
    return model


DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
TRANSFORMERS_WEIGHTS = "model.safetensors"


def weight_files(where: Path, key: str, name: str = DIFFUSERS_WEIGHTS) -> list[Path]:
    """A model folder's safetensors (diffusers' or transformers' `name`): one file, or the shards its index names."""
    if (where / name).is_file():
        return [where / name]
    index = where / f"{name}.index.json"
    if index.is_file():
        return [where / file for file in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    section = key.split(".")[0]
    raise ConfigError(f"{key}: {where} holds no {name} (or its index); a model split across ranks as it is read "
                      f"streams safetensors only (set {section}.shard: false for other formats)")


def load_pretrained_partitioned(model_class: type, folder: Path, subfolder: str | None, key: str, partition: Any,
                                dtype: torch.dtype, budget: int | None) -> nn.Module:
    """A diffusers or transformers `model_class` from a local folder's config, its weights streamed one tensor at a
    time into partitions across ranks (core/zero_build.py), so no rank holds it whole; weights missing, unexpected
    or of the wrong shape are an error naming `key` and the folder."""
    where = folder / (subfolder or "")
    diffusers_model = hasattr(model_class, "load_config")
    try:
        if diffusers_model:
            config = model_class.load_config(where, local_files_only=True)
        else:
            config = model_class.config_class.from_pretrained(where, local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"{key}: no {model_class.__name__} in {where} ({str(error).splitlines()[0][:200]})") from None
    factory = (lambda: model_class.from_config(config)) if diffusers_model else (lambda: model_class(config))
    files = weight_files(where, key, DIFFUSERS_WEIGHTS if diffusers_model else TRANSFORMERS_WEIGHTS)
    return build_with_weights(factory, files, key, str(where), model_class.__name__, partition, dtype, budget)
