"""`potstill data embed`: copy shards, adding each caption's text embedding as a field, so training reads
`condition: embedding` and needs no text encoder. One output shard per input shard, same name, written
to a temporary file and renamed when complete."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import webdataset as wds

from potstill.data.bad_samples import BadEvent
from potstill.data.fields import BadSample, read_text
from potstill.data.pack import TAR_OPTIONS
from potstill.data.shard_stream import read_shards
from potstill.data.shards import expand_shards, is_local, local_path


@dataclass
class EmbedSummary:
    shards: int = 0
    samples: int = 0
    embedded: int = 0
    events: list[BadEvent] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"embedded {self.embedded} of {self.samples} samples' captions into {self.shards} shards"]
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


def embed_shards(pattern: str, out_dir: Path, encode, caption_field: str = "txt",
                 out_field: str = "text_emb.npy", batch: int = 256) -> EmbedSummary:
    """Every sample of every shard copied to `out_dir` with `out_field` = encode(caption) as float32 npy;
    samples without a caption are copied as they are and reported."""
    targets = shard_targets(pattern, out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    summary = EmbedSummary()
    for url, target in targets:
        partial = target.with_name(f".{target.name}.tmp")
        with wds.TarWriter(str(partial), **TAR_OPTIONS) as writer:
            pending: list[tuple[dict, str | None]] = []
            for sample in read_shards([url], summary.events):
                summary.samples += 1
                try:
                    caption = read_text(sample, caption_field)
                except BadSample as bad:
                    summary.events.append(BadEvent(url, sample["__key__"], "no_caption", bad.detail))
                    caption = None
                pending.append((sample, caption))
                if len(pending) == batch:
                    summary.embedded += write_embedded(writer, pending, encode, out_field)
                    pending = []
            summary.embedded += write_embedded(writer, pending, encode, out_field)
        partial.rename(target)
        summary.shards += 1
    return summary


def write_embedded(writer: wds.TarWriter, pending: list[tuple[dict, str | None]], encode, out_field: str) -> int:
    """Write the pending samples in order, those with a caption with its embedding; returns how many had one."""
    captions = [caption for _, caption in pending if caption is not None]
    rows = iter(encode(captions).float().numpy()) if captions else iter(())
    for sample, caption in pending:
        extra = {out_field: npy_bytes(next(rows))} if caption is not None else {}
        writer.write(sample | extra)
    return len(captions)
