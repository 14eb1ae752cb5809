"""Bytes of live tensors op by op: every storage an op creates (not a view or an in-place result) is held by a weak
reference until it is freed, so the peak is what tensors needed, apart from what an allocator keeps (a
resident-memory peak includes both). Storages made outside the mode's thread (gloo's own buffers) are not seen."""

from __future__ import annotations

import collections
import traceback

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

SITE_BYTES = 2**20      # storages at least this large are named by the code that made them


def allocation_site(op: object) -> str:
    """The op and the last few frames outside torch's dispatch machinery that led to it."""
    frames = [f for f in traceback.extract_stack()[:-2] if "/torch/" not in f.filename]
    return f"{op} at " + " < ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in frames[-3:][::-1])


class LiveTensorBytes(TorchDispatchMode):
    """Inside the mode: `peak` bytes of the storages ops created and still alive, and what was alive then."""

    def __init__(self) -> None:
        super().__init__()
        self.alive: list[tuple[StorageWeakRef, int, int, str]] = []
        self.pointers: set[int] = set()
        self.now = 0
        self.restart()

    def restart(self) -> None:
        self.peak, self.at_peak = self.now, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor) and not t.is_meta}
        out = func(*args, **(kwargs or {}))
        kept = []
        for ref, pointer, size, site in self.alive:
            if ref.expired():
                self.now -= size
                self.pointers.discard(pointer)
            else:
                kept.append((ref, pointer, size, site))
        self.alive = kept
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor) or tensor.is_meta:
                continue
            storage = tensor.untyped_storage()
            pointer, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or pointer in self.pointers or pointer in inputs:     # in place, or a view
                continue
            site = allocation_site(func) if size >= SITE_BYTES else str(func)
            self.alive.append((StorageWeakRef(storage), pointer, size, site))
            self.pointers.add(pointer)
            self.now += size
        if self.now > self.peak:
            self.peak, self.at_peak = self.now, [(size, site) for _, _, size, site in self.alive]
        return out

    def largest_at_peak(self, count: int = 5) -> list[tuple[int, int, str]]:
        """(bytes, storages, site) of the sites holding most at the peak."""
        total, number = collections.Counter(), collections.Counter()
        for size, site in self.at_peak:
            total[site] += size
            number[site] += 1
        return [(size, number[site], site) for site, size in total.most_common(count)]
