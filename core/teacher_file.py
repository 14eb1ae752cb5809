"""The teacher file `potstill train-teacher` writes: a backbone's weights as safetensors with metadata key
`potstill` (JSON: backbone and its options, schedule and its options, prediction, sigma_data, sample_shape,
num_classes, the data section, trained_steps), and the teacher kind `trained` that builds a Denoiser from any
such file through the registries."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from potstill.core import registry as reg
from potstill.core.checkpoint import fsync_path
from potstill.core.config import ConfigError, from_dict
from potstill.core.denoiser import Denoiser
from potstill.core.engine import DTYPES
from potstill.core.schedules import build_schedule
from potstill.core.weights import read_metadata, resolve_weights
from potstill.core.zero_build import build_with_weights

TEACHER_FILE = "teacher.safetensors"
METADATA_KEY = "potstill"
REQUIRED = ("backbone", "backbone_options", "schedule", "schedule_options", "prediction", "sigma_data",
            "sample_shape", "num_classes")
PREDICTIONS = ("x0", "eps", "v", "flow", "edm")


def teacher_data(teacher, kind: str) -> dict | None:
    """The `data` section of a trained teacher's file (its `kind` key removed) when that data was `kind`, else None
    (another dataset, or a teacher without a file)."""
    return metadata_data(getattr(teacher, "metadata", None) or {}, kind)


def metadata_data(metadata: dict, kind: str) -> dict | None:
    """`teacher_data` of a teacher file's metadata as read, before any teacher is built."""
    data = metadata.get("data") or {}
    return {k: v for k, v in data.items() if k != "kind"} if data.get("kind") == kind else None


def write_teacher_file(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write the weights and metadata so that a reader sees the old file or the new one, never a part."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(metadata)})
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)
    return path


def read_teacher_file(checkpoint: str, key: str = "teacher.checkpoint") -> tuple[Path, dict]:
    """The path and metadata of a teacher file (a path or `embedded:NAME`), its tensors left unread; any other
    file is an error naming `key`."""
    path = resolve_weights(checkpoint, key)
    meta = read_metadata(path, key)
    missing = [name for name in REQUIRED if name not in meta]
    if missing:
        raise ValueError(f"{key}: {path} is not a potstill teacher file (its `{METADATA_KEY}` metadata lacks "
                         f"{', '.join(missing)}); write one with `potstill train-teacher`, or use teacher.kind dit "
                         "for other DiT weights")
    if meta["prediction"] not in PREDICTIONS:
        raise ValueError(f"{key}: {path} records prediction {meta['prediction']!r}; valid: {', '.join(PREDICTIONS)}")
    return path, meta


def build_backbone(meta: dict, key: str, source: str) -> torch.nn.Module:
    """The backbone the metadata records, built through the BACKBONES registry; errors name `key`."""
    try:
        entry = reg.BACKBONES.get(meta["backbone"])
        return entry.builder(from_dict(entry.options, meta["backbone_options"], "backbone_options"))
    except (ConfigError, reg.UnknownNameError) as error:
        raise ValueError(f"{key}: {source}: its metadata does not describe a backbone this version builds "
                         f"({error})") from None


def build_trained_denoiser(checkpoint: str, key: str = "teacher.checkpoint", partition: Any | None = None,
                           dtype: torch.dtype | None = None, budget: int | None = None) -> Denoiser:
    """A Denoiser from a teacher file, its weights checked against the recorded architecture and streamed in tensor
    by tensor; with `partition` (an engine's, under ZeRO-3) split across ranks as they arrive, in `dtype`; refused
    before it is read when its share exceeds `budget` bytes. `.metadata` holds the file's metadata for modalities
    to read (the data section, for one)."""
    path, meta = read_teacher_file(checkpoint, key)
    backbone = build_with_weights(lambda: build_backbone(meta, key, checkpoint), path, key, checkpoint,
                                  meta["backbone"], partition, dtype, budget)
    try:
        schedule = build_schedule(meta["schedule"], meta["schedule_options"], "schedule")
    except (ConfigError, reg.UnknownNameError) as error:
        raise ValueError(f"{key}: {checkpoint}: its metadata does not describe a schedule this version builds "
                         f"({error})") from None
    denoiser = Denoiser(backbone, schedule, meta["prediction"], float(meta["sigma_data"]),
                        tuple(meta["sample_shape"]), int(meta["num_classes"]))
    denoiser.metadata = meta
    return denoiser


@dataclass
class TrainedTeacherOptions:
    """`checkpoint`: a teacher file written by `potstill train-teacher` (or `embedded:NAME`)."""

    checkpoint: str


def teacher_build_options(context) -> dict[str, Any]:
    """How a run's engine builds its teacher: `partition`, `dtype` and memory `budget` for `build_with_weights`
    (split across ranks under ZeRO-3 with `teacher.shard`, in `train.teacher_dtype`); none for a teacher built
    outside a run's engine."""
    if getattr(context, "engine", None) is None:
        return {}
    dtype = DTYPES[context.config.train.teacher_dtype]
    return {"partition": context.engine.partition_for(context.config.teacher.shard, dtype), "dtype": dtype,
            "budget": context.engine.memory_budget()}


reg.TEACHERS.register("trained", TrainedTeacherOptions)(
    lambda options, context: build_trained_denoiser(options.checkpoint, "teacher.checkpoint",
                                                    **teacher_build_options(context)))
