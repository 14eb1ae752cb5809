"""`potstill data inspect`: what shards hold (samples, bytes, fields, a few samples shown), and, given a
media kind, one epoch decoded through the training pipeline as R ranks x W workers would read it, with
every skipped sample named."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

from potstill.data.bad_samples import BadEvent
from potstill.data.fields import media_fields
from potstill.data.shard_stream import read_shards
from potstill.data.shards import expand_shards, is_local, last_key, local_path
from potstill.data.webdataset_source import WebDatasetOptions, open_stream


@dataclass
class ShardContents:
    """What one shard holds: its intact samples, and the sample its damage cut short (`cut`, not counted)."""

    url: str
    samples: int = 0
    bytes: int = 0
    fields: Counter = field(default_factory=Counter)
    shown: list[str] = field(default_factory=list)
    events: list[BadEvent] = field(default_factory=list)
    cut: str = ""

    @property
    def damaged(self) -> bool:
        return bool(self.events)

    def count(self, sample: dict, show: int) -> None:
        self.samples += 1
        self.fields.update(media_fields(sample))
        if len(self.shown) < show:
            self.shown.append(describe_sample(sample))

    def describe(self) -> str:
        lines = [f"{self.url}: {self.samples} samples, {self.bytes / 2**20:.2f} MiB"]
        lines += [f"  {row}" for row in self.shown]
        if self.cut:
            lines.append(f"  not counted, the damage cut into it: {self.cut}")
        return "\n".join(lines)


def describe_sample(sample: dict) -> str:
    """`key: txt 'a cat', cls 3, jpg 10.2 KiB`."""
    parts = []
    for name in media_fields(sample):
        value = sample[name]
        if name in ("txt", "cls"):
            text = value.decode("utf-8", "replace").strip()
            parts.append(f"{name} {text[:60]!r}")
        else:
            parts.append(f"{name} {len(value) / 1024:.1f} KiB")
    return f"{sample['__key__']}: {', '.join(parts)}"


def shard_contents(url: str, show: int) -> ShardContents:
    """Count a shard's samples; in a damaged shard the last one read ran into the damage and is not counted."""
    contents = ShardContents(url, bytes=os.path.getsize(local_path(url)) if is_local(url) else 0)
    last = None
    for sample in read_shards([url], contents.events):
        if last is not None:
            contents.count(last, show)
        last = sample
    if last is not None and contents.damaged and last["__key__"] == last_key(url):
        contents.cut = describe_sample(last)
    elif last is not None:
        contents.count(last, show)
    return contents


@dataclass
class InspectReport:
    """Every shard's contents; `damaged` names the truncated or unreadable ones."""

    shards: list[ShardContents]

    @property
    def damaged(self) -> list[ShardContents]:
        return [contents for contents in self.shards if contents.damaged]

    def describe(self) -> str:
        lines = [contents.describe() for contents in self.shards]
        fields = sum((contents.fields for contents in self.shards), Counter())
        lines.append(f"total: {len(self.shards)} shards, {sum(c.samples for c in self.shards)} samples, "
                     f"{sum(c.bytes for c in self.shards) / 2**20:.2f} MiB")
        lines.append("fields: " + ", ".join(f"{name} {count}" for name, count in sorted(fields.items())))
        lines += [event.describe() for contents in self.shards for event in contents.events]
        if self.damaged:
            lines.append(f"{len(self.damaged)} of {len(self.shards)} shards damaged: "
                         f"{', '.join(contents.url for contents in self.damaged)}")
        return "\n".join(lines)


def inspect_shards(pattern: str, show: int = 3) -> InspectReport:
    """Each shard's samples, bytes and fields (a few samples of the first shown); damaged shards are named."""
    urls = expand_shards(pattern, "PATTERN")
    return InspectReport([shard_contents(url, show if index == 0 else 0) for index, url in enumerate(urls)])


@dataclass
class EpochCheck:
    """One epoch as each rank reads it: keys delivered, what was skipped, the decoded shape."""

    keys: list[list[str]]
    reports: list[dict]
    shape: tuple[int, ...] | None

    @property
    def duplicates(self) -> int:
        every = [key for rank in self.keys for key in rank]
        return len(every) - len(set(every))

    def describe(self) -> str:
        lines = [f"rank {rank}: {len(keys)} samples, {report['skipped']} skipped samples, "
                 f"{report['bad_shards']} bad shards" for rank, (keys, report) in enumerate(zip(self.keys, self.reports,
                                                                                                strict=True))]
        total = sum(len(k) for k in self.keys)
        lines.append(f"one epoch over {len(self.keys)} ranks: {total} samples, {self.duplicates} delivered twice, "
                     f"decoded shape {self.shape}")
        lines += [f"rank {rank}: {BadEvent(**event).describe()}"
                  for rank, report in enumerate(self.reports) for event in report["recent"]]
        return "\n".join(lines)


def check_epoch(options: WebDatasetOptions, ranks: int = 1, batch_rows: int = 16, seed: int = 0) -> EpochCheck:
    """Read one epoch through the training pipeline as each of `ranks` ranks (with `options.workers` workers)."""
    keys, reports, shape = [], [], None
    for rank in range(ranks):
        stream = open_stream(options, batch_rows, seed, rank=rank, world_size=ranks, epochs=1)
        rank_keys = []
        for batch in stream.batches():
            rank_keys += batch["keys"]
            shape = tuple(batch["x"].shape[1:])
        keys.append(rank_keys)
        reports.append(stream.report())
    return EpochCheck(keys, reports, shape)
