"""How much memory a rank can give a model before it is read, so that a teacher too large for one rank stops the
run with the sizes and the remedy, not with the kernel's out-of-memory kill halfway through loading."""

from __future__ import annotations

import resource
from pathlib import Path

import torch

GIB = 2**30


def _first_number(path: Path, key: str | None = None) -> int | None:
    """An integer from a /proc or /sys file (the line starting with `key`, in kB, when given), or None."""
    try:
        text = path.read_text()
    except OSError:
        return None
    if key is None:
        value = text.split()[0] if text.split() else "max"
        return None if value == "max" else int(value)
    line = next((line for line in text.splitlines() if line.startswith(key)), None)
    return int(line.split()[1]) * 1024 if line is not None else None


def process_memory(field: str) -> int:
    """A memory figure of this process in bytes, from /proc/self/status: VmRSS (resident now), VmHWM (peak
    resident since start or since 5 was written to /proc/self/clear_refs), VmSize (address space)."""
    value = _first_number(Path("/proc/self/status"), f"{field}:")
    if value is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return value


def free_memory(device: torch.device) -> int | None:
    """Bytes this process can still allocate on `device`: a GPU's free memory; on a CPU, the least of the
    machine's available memory, its cgroup's limit less its usage, and `ulimit -v` less the address space in use
    (None when none of them is known)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    limits = [_first_number(Path("/proc/meminfo"), "MemAvailable:")]
    cgroup_limit = _first_number(Path("/sys/fs/cgroup/memory.max"))
    cgroup_used = _first_number(Path("/sys/fs/cgroup/memory.current"))
    if cgroup_limit is not None and cgroup_used is not None:
        limits.append(cgroup_limit - cgroup_used)
    address_space = resource.getrlimit(resource.RLIMIT_AS)[0]
    in_use = _first_number(Path("/proc/self/status"), "VmSize:")
    if address_space != resource.RLIM_INFINITY and in_use is not None:
        limits.append(address_space - in_use)
    known = [limit for limit in limits if limit is not None]
    return min(known) if known else None


def check_fits(needed: int, budget: int | None, key: str, ranks: int, partitioned: bool) -> None:
    """Refuse, before reading it, a model whose share on this rank (`needed` bytes) exceeds `budget`."""
    if budget is None or needed <= budget:
        return
    remedy = ("run on more ranks: it is split across them" if partitioned else
              "split it across ranks: engine.kind deepspeed with teacher.shard: true, launched on enough ranks")
    raise MemoryError(f"{key}: its parameters need {needed / GIB:.2f} GiB on this rank ({ranks} rank"
                      f"{'s' if ranks > 1 else ''}) but {budget / GIB:.2f} GiB is available (train.memory_per_rank_gib "
                      f"or what is free); {remedy}")
