"""The memory benchmark's live-tensor count (benchmarks/live_tensors.py): new storages count until freed; views and
in-place results do not count again."""

import torch

from tests_support import load_benchmark

live_tensors = load_benchmark("live_tensors")


def test_counts_new_storages_until_freed_and_not_views_or_in_place_results():
    held = torch.ones(1000)
    mode = live_tensors.LiveTensorBytes()
    with mode:
        first = torch.ones(2**18)              # 1 MiB: named by its site
        view = first.t()
        first.add_(1)
        held.mul_(2)
        second = first * 2                     # another 1 MiB
        del first, view
        third = torch.zeros(10)                # an op after the free: the count drops
    assert mode.peak == 2 * 2**20
    assert mode.now == 2**20 + 40
    sizes = sorted(size for size, _, _ in mode.largest_at_peak())
    assert sizes == [2**20, 2**20]
    assert any("test_live_tensors.py" in site for _, _, site in mode.largest_at_peak())
    del second, third
