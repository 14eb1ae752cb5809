"""`potstill data embed` and `data encode`: copy shards, adding a field computed from each sample (a caption's text
embedding, so training reads `condition: embedding` and needs no text encoder; an image's codec latents, so training
reads `media: tensor` and never runs the encoder). One output shard per input shard, same name, written to a
temporary file and renamed when complete."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds

from potstill.data.bad_samples import BadEvent
from potstill.data.fields import BadSample, read_text
from potstill.data.pack import TAR_OPTIONS
from potstill.data.shard_stream import read_shards
from potstill.data.shards import expand_shards, is_local, local_path


@dataclass
class AddedFieldSummary:
    """What was added to how many samples; `verb` and `source` word its sentence ("embedded ... captions")."""

    verb: str
    source: str
    shards: int = 0
    samples: int = 0
    added: int = 0
    events: list[BadEvent] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{self.verb} {self.added} of {self.samples} samples' {self.source} into {self.shards} shards"]
        lines += [event.describe() for event in self.events]
        return "\n".join(lines)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def shard_targets(pattern: str, out_dir: Path) -> list[tuple[str, Path]]:
    """Each input shard's output in `out_dir` (same name). An output that would replace an input shard (and
    hide its damage) or another output is an error naming the folder, raised before anything is written."""
    urls = expand_shards(pattern, "PATTERN")
    targets = [(url, Path(out_dir) / Path(local_path(url)).name) for url in urls]
    inputs = {Path(local_path(url)).resolve(): url for url in urls if is_local(url)}
    replaced = next((target for _, target in targets if target.resolve() in inputs), None)
    if replaced is not None:
        raise ValueError(f"OUT_DIR {out_dir}: {replaced} would replace the input shard "
                         f"{inputs[replaced.resolve()]}; write the embedded shards to another folder")
    names = Counter(target.name for _, target in targets)
    shared = next((name for name, count in names.items() if count > 1), None)
    if shared is not None:
        raise ValueError(f"PATTERN {pattern!r}: {names[shared]} input shards are named {shared}, and OUT_DIR "
                         f"{out_dir} takes one output of that name")
    return targets


@dataclass
class FieldRecipe:
    """How to add one field: `read` takes a sample's input (raising BadSample when it has none, reported as
    `missing`), `compute` maps a batch of inputs to one row each, written as float32 npy under `out_field`."""

    read: Callable[[dict], Any]
    compute: Callable[[list], torch.Tensor]
    out_field: str
    missing: str
    batch: int


def add_field_to_shards(pattern: str, out_dir: Path, recipe: FieldRecipe, summary: AddedFieldSummary
                        ) -> AddedFieldSummary:
    """Every sample of every shard copied to `out_dir`, with the recipe's field where its input could be read;
    samples without one are copied as they are and reported."""
    targets = shard_targets(pattern, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    for url, target in targets:
        partial = target.with_name(f".{target.name}.tmp")
        with wds.TarWriter(str(partial), **TAR_OPTIONS) as writer:
            pending: list[tuple[dict, Any]] = []
            for sample in read_shards([url], summary.events):
                summary.samples += 1
                try:
                    value = recipe.read(sample)
                except BadSample as bad:
                    summary.events.append(BadEvent(url, sample["__key__"], recipe.missing, bad.detail))
                    value = None
                pending.append((sample, value))
                if len(pending) == recipe.batch:
                    summary.added += write_pending(writer, pending, recipe)
                    pending = []
            summary.added += write_pending(writer, pending, recipe)
        partial.rename(target)
        summary.shards += 1
    return summary


def write_pending(writer: wds.TarWriter, pending: list[tuple[dict, Any]], recipe: FieldRecipe) -> int:
    """Write the pending samples in order, those with an input with its computed row; returns how many had one."""
    inputs = [value for _, value in pending if value is not None]
    rows = iter(recipe.compute(inputs).float().numpy()) if inputs else iter(())
    for sample, value in pending:
        extra = {recipe.out_field: npy_bytes(next(rows))} if value is not None else {}
        writer.write(sample | extra)
    return len(inputs)


def embed_shards(pattern: str, out_dir: Path, encode, caption_field: str = "txt",
                 out_field: str = "text_emb.npy", batch: int = 256) -> AddedFieldSummary:
    """Each caption's text embedding (`encode(captions)`) added as `out_field`."""
    recipe = FieldRecipe(lambda sample: read_text(sample, caption_field), encode, out_field, "no_caption", batch)
    return add_field_to_shards(pattern, out_dir, recipe, AddedFieldSummary("embedded", "captions"))
