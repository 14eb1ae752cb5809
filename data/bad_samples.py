"""What the stream skipped and why: one event per bad sample or bad shard, named by shard and key."""

from __future__ import annotations

from dataclasses import asdict, dataclass

SHARD_REASONS = ("truncated_shard", "read_error")


@dataclass(frozen=True)
class BadEvent:
    """A skipped sample (`key` in `shard`) or a shard that could not be read to its end."""

    shard: str
    key: str
    reason: str
    detail: str

    @property
    def is_shard(self) -> bool:
        return self.reason in SHARD_REASONS

    def describe(self) -> str:
        what = f"shard {self.shard}" if self.is_shard else f"sample {self.key!r} in {self.shard}"
        return f"skipped {what}: {self.reason}: {self.detail}"

    def to_dict(self) -> dict:
        return asdict(self)


class ShardErrors:
    """webdataset's exception handler for one shard: keeps the first read error and goes on; after the
    shard, `event` makes one event of it and of a truncation found at the end."""

    def __init__(self, url: str) -> None:
        self.url, self.last_key, self.error = url, "", ""

    def __call__(self, error: Exception) -> bool:
        if not self.error:
            message = str(error.args[0]).split(" @ ")[0] if error.args else ""
            self.error = f"{type(error).__name__}: {message[:200]}"
        return True

    def event(self, truncated: str | None) -> BadEvent | None:
        if truncated is None and not self.error:
            return None
        lost = f"samples after {self.last_key!r} are lost" if self.last_key else "no sample could be read"
        details = [d for d in (truncated, self.error) if d]
        reason = "truncated_shard" if truncated else "read_error"
        return BadEvent(self.url, self.last_key, reason, f"{'; '.join(details)}; {lost}")
