"""The main-process side of a webdataset stream: DataLoader workers run `ShardStream`, and this class
hands out batches in a fixed worker order (0, 1, 2, ... whatever order they finish in), encodes
captions, counts and reports what was skipped, and keeps the per-worker positions that make a
checkpointed run resume on exactly the same stream."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader

from potstill.core.parallel import take_rows
from potstill.core.real_data import RealData
from potstill.data.bad_samples import BadEvent
from potstill.data.sample_decoder import SampleDecoder
from potstill.data.shard_stream import Position, ShardStream, StreamLayout

LOG = logging.getLogger("potstill.data")
RECENT_EVENTS = 20

CaptionEncoder = Callable[[list[str]], torch.Tensor]


def join_rows(parts: list[tuple[torch.Tensor, Any]]) -> tuple[torch.Tensor, Any]:
    """One batch from several: conditions are tensors, caption lists or None."""
    x = torch.cat([p[0] for p in parts])
    conds = [p[1] for p in parts]
    if conds[0] is None:
        return x, None
    return x, ([row for cond in conds for row in cond] if isinstance(conds[0], list) else torch.cat(conds))


def cut_rows(rows: tuple[torch.Tensor, Any], part: slice) -> tuple[torch.Tensor, Any]:
    x, cond = rows
    return x[part], (cond[part] if isinstance(cond, list) else take_rows(cond, part))


class WebDatasetStream(RealData):
    """Batches of `batch_rows` from this rank's shards; `next(n)` cuts them to any n."""

    splits_by_rank = True

    def __init__(self, layout: StreamLayout, decoder: SampleDecoder, batch_rows: int, workers: int,
                 encode_captions: CaptionEncoder | None = None, epochs: int | None = None) -> None:
        layout.check_enough_shards(workers, "real_data.shards")
        self.layout, self.decoder, self.batch_rows, self.workers = layout, decoder, batch_rows, workers
        self.encode_captions, self.epochs = encode_captions, epochs
        self.positions: dict[int, Position] = {}
        self.next_worker = 0
        self.finished: set[int] = set()
        self.leftover: tuple[torch.Tensor, Any] | None = None
        self.counters: Counter[str] = Counter()
        self.recent: deque[dict] = deque(maxlen=RECENT_EVENTS)
        self.wait_seconds = 0.0
        self._batches: Iterator[dict] | None = None
        self._waiting: dict[int, deque[dict]] = {}

    # ---- reading ------------------------------------------------------------------------------

    def _loader(self) -> Iterator[dict]:
        dataset = ShardStream(self.layout, self.decoder, self.batch_rows, self.epochs, self.positions)
        own_seed = torch.Generator().manual_seed(self.layout.seed)     # leaves the global RNG to the training loop
        return iter(DataLoader(dataset, batch_size=None, num_workers=self.workers, generator=own_seed))

    def _take(self, batch: dict) -> None:
        for event in batch["events"]:
            self._record(event)
        self.positions[batch["worker"]] = batch["position"]
        if batch["done"]:
            self.finished.add(batch["worker"])

    def _record(self, event: BadEvent) -> None:
        self.counters["bad_shards" if event.is_shard else "skipped"] += 1
        self.counters[f"skipped_{event.reason}"] += 1
        self.recent.append(event.to_dict())
        LOG.warning("rank %d: %s", self.layout.rank, event.describe())

    def _next_in_order(self) -> dict:
        """The next batch of the worker whose turn it is; batches of other workers wait their turn."""
        consumers = max(self.workers, 1)
        while True:
            if len(self.finished) == consumers:
                raise StopIteration
            if self.next_worker in self.finished:
                self.next_worker = (self.next_worker + 1) % consumers
                continue
            queue = self._waiting.setdefault(self.next_worker, deque())
            if not queue:
                if self._batches is None:
                    self._batches = self._loader()
                batch = next(self._batches)
                self._waiting.setdefault(batch["worker"], deque()).append(batch)
                continue
            batch = queue.popleft()
            self._take(batch)
            if not batch["done"]:
                self.next_worker = (self.next_worker + 1) % consumers
                return batch

    def batches(self) -> Iterator[dict]:
        """Whole batches in stream order (for inspection and tests): x, cond, keys."""
        while True:
            try:
                batch = self._next_in_order()
            except StopIteration:
                return
            self.counters["samples"] += len(batch["keys"])
            yield batch

    def _next_rows(self) -> tuple[torch.Tensor, Any]:
        batch = self._next_in_order()
        self.counters["samples"] += len(batch["keys"])
        return batch["x"], batch["cond"]

    def next(self, n: int) -> tuple[torch.Tensor, Any]:
        """n rows, captions encoded: once per call, so a text encoder split across ranks, which every rank must
        run together, is called once per draw on each rank however many batches each one's draw takes."""
        start = time.perf_counter()
        parts, have = [], 0
        if self.leftover is not None:
            parts.append(self.leftover)
            have = len(self.leftover[0])
        while have < n:
            parts.append(self._next_rows())
            have += len(parts[-1][0])
        rows = join_rows(parts)
        self.leftover = cut_rows(rows, slice(n, None)) if have > n else None
        x, cond = cut_rows(rows, slice(0, n))
        if self.decoder.condition == "caption":
            cond = self.encode_captions(cond)
        self.wait_seconds += time.perf_counter() - start
        return x, cond

    # ---- state and counters -------------------------------------------------------------------

    def _layout_facts(self) -> dict:
        """What fixes this stream's order; a checkpoint only continues a stream that agrees on all of it."""
        listing = hashlib.sha1("\n".join(self.layout.shards).encode()).hexdigest()[:12]
        return {"shards": f"{len(self.layout.shards)} shards, sha1 {listing}", "seed": self.layout.seed,
                "rank": self.layout.rank, "world_size": self.layout.world_size, "workers": self.workers,
                "resampled": self.layout.resampled, "shuffle_buffer": self.layout.shuffle_buffer,
                "batch_rows": self.batch_rows}

    def state_dict(self) -> dict:
        return {"layout": self._layout_facts(),
                "positions": {w: (p.epoch, p.raw) for w, p in self.positions.items()},
                "next_worker": self.next_worker, "finished": sorted(self.finished), "leftover": self.leftover,
                "counters": dict(self.counters), "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        saved, now = state["layout"], self._layout_facts()
        changed = [key for key in now if saved.get(key) != now[key]]
        if changed:
            key = changed[0]
            raise ValueError(f"real_data: the checkpoint's stream had {key} = {saved.get(key)!r}, this run has "
                             f"{now[key]!r}; the stream cannot continue exactly, so set it back (or start a new run)")
        self.positions = {int(w): Position(*p) for w, p in state["positions"].items()}
        self.next_worker, self.finished = state["next_worker"], set(state["finished"])
        self.leftover = state["leftover"]
        self.counters = Counter(state["counters"])
        self.recent = deque(state["recent"], maxlen=RECENT_EVENTS)
        self._batches, self._waiting = None, {}

    def metrics(self) -> dict[str, float]:
        wait, self.wait_seconds = self.wait_seconds, 0.0
        return {"data_samples": float(self.counters["samples"]), "data_skipped": float(self.counters["skipped"]),
                "data_bad_shards": float(self.counters["bad_shards"]), "data_wait_sec": wait}

    def report(self) -> dict:
        return {"samples": self.counters["samples"], "skipped": self.counters["skipped"],
                "bad_shards": self.counters["bad_shards"],
                "by_reason": {k[len("skipped_"):]: v for k, v in self.counters.items() if k.startswith("skipped_")},
                "recent": list(self.recent)}
