"""Shard lists: brace patterns expanded by webdataset, local shards checked at start-up, the
end-of-archive check that tells a truncated local shard from a complete one, and which sample its
damage cut into."""

from __future__ import annotations

import contextlib
import os
import tarfile
from pathlib import Path

from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "gs://", "s3://")
TAR_BLOCK = 512
END_OF_ARCHIVE = 2 * TAR_BLOCK    # a tar ends with two zero blocks (then zero padding to its record size)


def is_local(url: str) -> bool:
    return not url.startswith(REMOTE_PREFIXES)


def local_path(url: str) -> str:
    return url[len("file:"):] if url.startswith("file:") else url


def expand_shards(patterns: str | list[str], key: str = "real_data.shards") -> list[str]:
    """Every shard named by brace patterns (`data-{000000..000009}.tar`), `::`-joined lists or a list of
    them; local shards must exist. Remote ones (`pipe:`, http, s3, gs) are passed to webdataset as they are."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    if not any(patterns):
        raise ValueError(f"{key}: required; name the tar shards, e.g. data/train-{{000000..000009}}.tar")
    urls = [url for pattern in patterns for url in expand_urls(pattern)]
    if not urls:
        raise ValueError(f"{key}: the pattern {patterns!r} names no shard")
    missing = [url for url in urls if is_local(url) and not os.path.isfile(local_path(url))]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise FileNotFoundError(f"{key}: shard {missing[0]} does not exist{more}")
    return urls


def truncation(url: str) -> str | None:
    """Why a local tar shard is incomplete, or None when it ends as a tar archive must (whole blocks, two
    zero blocks at the end). Remote shards cannot be checked this way; their read errors still count."""
    if not is_local(url):
        return None
    path = Path(local_path(url))
    size = path.stat().st_size
    if size % TAR_BLOCK:
        return f"size {size} is not a whole number of {TAR_BLOCK}-byte tar blocks"
    if size < END_OF_ARCHIVE:
        return f"size {size} is too short for a tar archive"
    with open(path, "rb") as f:
        f.seek(size - END_OF_ARCHIVE)
        if any(f.read(END_OF_ARCHIVE)):
            return "no end-of-archive marker"
    return None


def last_key(url: str) -> str | None:
    """The key of the last sample a local shard holds a file header of (None for remote shards). In a damaged
    shard that sample ran into the damage, so its files cannot be told complete."""
    if not is_local(url):
        return None
    name = None
    with contextlib.suppress(tarfile.TarError, OSError), tarfile.open(local_path(url), "r:") as archive:
        for member in archive:
            name = member.name
    return base_plus_ext(name)[0] if name else None
