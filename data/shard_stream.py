"""The worker side of a webdataset stream: for each epoch, the shard list is shuffled with the seed
(the same on every rank), split by rank (webdataset's split_by_node, with the engine's rank) and by
DataLoader worker, read with webdataset's tar reader, shuffled in a seeded buffer, decoded and batched.

Everything is a function of (seed, epoch, rank, worker), so the stream is the same on every run, and a
worker told its position (epoch, raw samples already passed on) continues exactly where it stopped:
it replays that many samples through the shuffle buffer without decoding them."""

from __future__ import annotations

import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

import numpy as np
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from potstill.data.bad_samples import BadEvent, ShardErrors
from potstill.data.fields import BadSample, RefusedSample
from potstill.data.sample_decoder import SampleDecoder, collate
from potstill.data.shards import truncation


@dataclass(frozen=True)
class Position:
    """Where a worker is: its epoch, and how many shuffled raw samples of that epoch it has passed on."""

    epoch: int = 0
    raw: int = 0


def derived_seed(*parts: int) -> int:
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def sample_rng(seed: int, epoch: int, sample: dict) -> np.random.Generator:
    """Random crops and clip starts depend on the sample and the epoch, not on which worker reads it."""
    name = f"{sample.get('__url__', '')}/{sample['__key__']}".encode()
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, zlib.crc32(name)])


def worker_place() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


@dataclass
class StreamLayout:
    """What fixes the order of a stream: the shards, the seed and the place of this rank."""

    shards: list[str]
    seed: int
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 1000
    shuffle_shards: bool = True
    resampled: bool = False

    def shards_for(self, epoch: int, worker: int, workers: int) -> list[str]:
        """This rank's and worker's shards in `epoch`: a disjoint share of the seeded shard order, or, when
        resampled, its share's worth drawn with replacement from all shards."""
        if self.resampled:
            rng = random.Random(derived_seed(self.seed, epoch, self.rank, worker))
            count = math.ceil(len(self.shards) / (self.world_size * workers))
            return [rng.choice(self.shards) for _ in range(count)]
        order = list(self.shards)
        if self.shuffle_shards:
            random.Random(derived_seed(self.seed, epoch)).shuffle(order)
        return list(islice(islice(order, self.rank, None, self.world_size), worker, None, workers))

    def check_enough_shards(self, workers: int, key: str) -> None:
        consumers = self.world_size * max(workers, 1)
        if not self.resampled and len(self.shards) < consumers:
            raise ValueError(f"{key}: {len(self.shards)} shards cannot give each of {self.world_size} ranks x "
                             f"{max(workers, 1)} workers a shard of its own; pack more, smaller shards "
                             "(potstill data pack --maxcount), use fewer workers, or set resampled: true")


def read_shards(shards: list[str], events: list[BadEvent]) -> Iterator[dict]:
    """Raw samples of the shards in order; read errors and truncated shards become events."""
    for url in shards:
        errors = ShardErrors(url)
        for sample in wds.tarfile_samples([{"url": url}], handler=errors):
            errors.last_key = sample["__key__"]
            yield sample
        event = errors.event(truncation(url))
        if event is not None:
            events.append(event)


class ShardStream(IterableDataset):
    """Yields batches as dicts: x, cond, keys, worker, position (after the batch's last row), events (what
    was skipped since the previous batch). `epochs=None` streams forever; a finite stream ends each worker
    with a batch marked `done`."""

    def __init__(self, layout: StreamLayout, decoder: SampleDecoder, batch_rows: int, epochs: int | None = None,
                 start: dict[int, Position] | None = None) -> None:
        super().__init__()
        self.layout, self.decoder, self.batch_rows, self.epochs = layout, decoder, batch_rows, epochs
        self.start = dict(start or {})

    def __iter__(self) -> Iterator[dict]:
        worker, workers = worker_place()
        position = self.start.get(worker, Position())
        events: list[BadEvent] = []
        rows: list = []
        keys: list[str] = []
        epoch, skip = position.epoch, position.raw
        while self.epochs is None or epoch < self.epochs:
            shards = self.layout.shards_for(epoch, worker, workers)
            raw = read_shards(shards, events)
            rng = random.Random(derived_seed(self.layout.seed, epoch, self.layout.rank, worker))
            shuffled = wds.shuffle(self.layout.shuffle_buffer, rng=rng)(raw) if self.layout.shuffle_buffer > 1 else raw
            good = 0
            for index, sample in enumerate(shuffled):
                if index < skip:
                    if index == skip - 1:
                        events.clear()      # what happened up to here was reported before the checkpoint
                    continue
                try:
                    rows.append(self.decoder(sample, sample_rng(self.layout.seed, epoch, sample)))
                except BadSample as bad:
                    events.append(BadEvent(sample["__url__"], sample["__key__"], bad.reason, bad.detail))
                    continue
                except RefusedSample as refused:
                    raise ValueError(f"{sample['__url__']}, sample {sample['__key__']!r}: {refused}") from None
                except Exception as error:      # a decoder failing on bad bytes in its own way: skip it too
                    message = str(error).splitlines()[0][:200] if str(error) else ""
                    events.append(BadEvent(sample["__url__"], sample["__key__"], "undecodable",
                                           f"{type(error).__name__}: {message}"))
                    continue
                good += 1
                keys.append(sample["__key__"])
                if len(rows) == self.batch_rows:
                    yield self._batch(rows, keys, worker, Position(epoch, index + 1), events)
                    rows, keys = [], []
                    events.clear()      # the reader appends to this very list
            if good == 0 and skip == 0 and self.epochs is None:
                raise RuntimeError(f"rank {self.layout.rank} worker {worker}: epoch {epoch} of shards {shards[:3]} "
                                   f"gave no usable sample ({len(events)} skipped); check the shards and "
                                   "real_data's media and condition settings")
            epoch, skip = epoch + 1, 0
        if rows:
            yield self._batch(rows, keys, worker, Position(epoch, 0), events)
            events.clear()
        yield {"worker": worker, "done": True, "events": list(events), "position": Position(epoch, 0)}

    def _batch(self, rows: list, keys: list[str], worker: int, position: Position, events: list[BadEvent]) -> dict:
        x, cond = collate(rows, self.decoder.condition)
        return {"x": x, "cond": cond, "keys": keys, "worker": worker, "position": position, "events": list(events),
                "done": False}
