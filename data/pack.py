"""`potstill data pack`: a folder of media files (images, video, audio, stored tensors) with same-stem
captions (`.txt`), labels (`.cls`) or JSON, or a metadata CSV/JSONL, written as webdataset tar shards.
Shards are written into a hidden folder and renamed into place at the end, so a half-written pack never
looks complete."""

from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import webdataset as wds

from potstill.data.decode_audio import AUDIO_FIELDS
from potstill.data.decode_image import IMAGE_FIELDS
from potstill.data.decode_video import VIDEO_FIELDS
from potstill.data.fields import TENSOR_FIELDS

MEDIA_EXTENSIONS = frozenset(IMAGE_FIELDS + VIDEO_FIELDS + AUDIO_FIELDS + TENSOR_FIELDS)
SIDECAR_EXTENSIONS = ("txt", "cls", "json")
METADATA_FILE_COLUMNS = ("file", "file_name", "path")
CAPTION_COLUMNS = ("caption", "text", "prompt")
LABEL_COLUMNS = ("label", "class", "cls")
# Plain tar headers (GNU long-name records only where a name needs them) and a fixed time: no pax header per
# file, so shards are smaller and faster to read, and the same folder packs to the same bytes.
TAR_OPTIONS = {"format": "GNU_FORMAT", "mtime": 0}
SHARD_INDEX = re.compile(r"%(0\d+)?d")    # %d or %06d: what ShardWriter fills in and brace_pattern can span
HIDDEN_SHOWN = 5


@dataclass
class PackSummary:
    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    bytes: int = 0
    fields: Counter = field(default_factory=Counter)
    pattern: str = ""
    classes: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)

    def describe(self) -> str:
        fields = ", ".join(f"{name} {count}" for name, count in sorted(self.fields.items()))
        lines = [f"wrote {self.samples} samples in {len(self.shards)} shards ({self.bytes / 2**20:.1f} MiB)",
                 f"fields: {fields}", f"shards: {self.pattern}"]
        if self.classes:
            lines.append(f"classes (cls = index): {', '.join(self.classes)}")
        if self.hidden:
            lines.append(describe_hidden(self.hidden))
        return "\n".join(lines)


def describe_hidden(hidden: list[str]) -> str:
    """`skipped 2 hidden files (...): ._a.png, .b.jpg`, the first few named."""
    more = f" and {len(hidden) - HIDDEN_SHOWN} more" if len(hidden) > HIDDEN_SHOWN else ""
    return (f"skipped {len(hidden)} hidden files (names starting with '.'): "
            f"{', '.join(hidden[:HIDDEN_SHOWN])}{more}")


def shard_format(pattern: str) -> re.Match:
    """The one `%06d`-style index in an output pattern's file name; any other pattern is an error naming it,
    since webdataset would fail on it halfway or write shards that overwrite one another."""
    if not pattern.endswith(".tar"):
        raise ValueError(f"OUT_PATTERN {pattern!r}: shard names must end in .tar, e.g. out/train-%06d.tar")
    if pattern.count("%") != 1 or SHARD_INDEX.search(Path(pattern).name) is None:
        raise ValueError(f"OUT_PATTERN {pattern!r}: name the shards with exactly one index, %d or %0Nd, in the "
                         "file name and no other '%', e.g. out/train-%06d.tar")
    return SHARD_INDEX.search(pattern)


def check_output_folder(pattern: str) -> Path:
    """The shards' folder; a file standing where it or a folder above it should be is an error naming the
    pattern, found before anything is written."""
    folder = Path(pattern).parent
    existing = next(place for place in (folder, *folder.parents) if place.exists())
    if not existing.is_dir():
        raise FileExistsError(f"OUT_PATTERN {pattern!r}: {existing} is a file, not a folder")
    return folder


def check_limits(maxcount: int, maxsize: float) -> None:
    """Shard limits must be positive: with zero or less, webdataset writes an empty first shard."""
    if not maxcount > 0:
        raise ValueError(f"--maxcount {maxcount}: must be a positive number of samples per shard")
    if not maxsize > 0:
        raise ValueError(f"--maxsize {maxsize}: must be a positive number of bytes per shard")


def brace_pattern(pattern: str, count: int) -> str:
    """`out/train-%06d.tar` with 3 shards -> `out/train-{000000..000002}.tar`: what a config's `shards` takes."""
    if count == 1:
        return pattern % 0
    match = shard_format(pattern)
    width = int(match.group(1) or 0)
    span = "{" + f"{0:0{width}d}..{count - 1:0{width}d}" + "}"
    return pattern[: match.start()] + span + pattern[match.end():]


def sample_key(path: Path, root: Path) -> str:
    """The relative path without its extension; dots in names become '_' (webdataset splits keys at a dot)."""
    relative = path.relative_to(root).with_suffix("")
    return "/".join(part.replace(".", "_") for part in relative.parts)


def read_metadata(path: Path) -> dict[str, dict]:
    """Rows of a CSV or JSONL file keyed by their file column (a path relative to the source folder)."""
    if not path.is_file():
        raise FileNotFoundError(f"--metadata: {path} does not exist")
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    table = {}
    for number, row in enumerate(rows, start=1):
        column = next((c for c in METADATA_FILE_COLUMNS if c in row), None)
        if column is None:
            raise ValueError(f"--metadata: {path} row {number} has no {' / '.join(METADATA_FILE_COLUMNS)} column")
        table[str(Path(row[column]))] = {k: v for k, v in row.items() if k != column}
    return table


def metadata_fields(row: dict) -> dict[str, bytes]:
    """A metadata row as sample fields: txt from a caption column, cls from a label column, the rest as json."""
    fields = {"json": json.dumps(row).encode()}
    caption = next((row[c] for c in CAPTION_COLUMNS if c in row), None)
    if caption is not None:
        fields["txt"] = str(caption).encode()
    label = next((row[c] for c in LABEL_COLUMNS if c in row), None)
    if label is not None:
        fields["cls"] = str(int(label)).encode()
    return fields


def find_media(source: Path) -> tuple[list[Path], list[Path]]:
    """Media files under `source`, and the hidden ones left out (names starting with '.', e.g. macOS `._a.jpg`)."""
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix[1:].lower() in MEDIA_EXTENSIONS)
    return [p for p in files if not p.name.startswith(".")], [p for p in files if p.name.startswith(".")]


def folder_classes(media: list[Path], source: Path) -> list[str]:
    names = sorted({p.relative_to(source).parts[0] for p in media if len(p.relative_to(source).parts) > 1})
    if not names:
        raise ValueError(f"--labels-from-folders: {source} has no class sub-folders")
    return names


def samples_of(source: Path, media: list[Path], metadata: dict[str, dict], classes: list[str]):
    """One sample dict per media file, with its sidecar files, metadata row and folder label."""
    seen: dict[str, Path] = {}
    for path in media:
        key = sample_key(path, source)
        if key in seen:
            raise ValueError(f"{path} and {seen[key]} would share the sample key {key!r}; rename one")
        seen[key] = path
        sample = {"__key__": key, path.suffix[1:].lower(): path.read_bytes()}
        for extension in SIDECAR_EXTENSIONS:
            sidecar = path.with_suffix(f".{extension}")
            if sidecar.is_file():
                sample[extension] = sidecar.read_bytes()
        relative = str(path.relative_to(source))
        if relative in metadata:
            sample |= metadata_fields(metadata[relative])
        if classes:
            sample["cls"] = str(classes.index(path.relative_to(source).parts[0])).encode()
        yield sample


def pack(source: Path, pattern: str, maxcount: int = 10_000, maxsize: float = 1e9, metadata: Path | None = None,
         labels_from_folders: bool = False) -> PackSummary:
    """Write every media file under `source` into shards named by `pattern` (e.g. out/train-%06d.tar)."""
    check_limits(maxcount, maxsize)
    shard_format(pattern)
    out_dir = check_output_folder(pattern)
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"SRC_DIR: {source} is not a folder")
    media, hidden = find_media(source)
    hidden_names = [str(p.relative_to(source)) for p in hidden]
    if not media:
        skipped = f"; {describe_hidden(hidden_names)}" if hidden else ""
        raise ValueError(f"SRC_DIR: {source} holds no media file ({', '.join(sorted(MEDIA_EXTENSIONS))}){skipped}")
    table = read_metadata(Path(metadata)) if metadata is not None else {}
    classes = folder_classes(media, source) if labels_from_folders else []
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = PackSummary(classes=classes, hidden=hidden_names)
    staging = Path(tempfile.mkdtemp(prefix=".pack-", dir=out_dir))
    try:
        with wds.ShardWriter(str(staging / Path(pattern).name), maxcount=maxcount, maxsize=maxsize, verbose=0,
                            **TAR_OPTIONS) as w:
            for sample in samples_of(source, media, table, classes):
                w.write(sample)
                summary.samples += 1
                summary.fields.update(k for k in sample if not k.startswith("__"))
        written = sorted(staging.iterdir())
        clashes = [out_dir / p.name for p in written if (out_dir / p.name).exists()]
        if clashes:
            raise FileExistsError(f"OUT_PATTERN: {clashes[0]} exists already; remove the old shards or pick another "
                                  "pattern")
        for part in written:
            part.rename(out_dir / part.name)
            summary.shards.append(out_dir / part.name)
            summary.bytes += (out_dir / part.name).stat().st_size
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary.pattern = brace_pattern(pattern, len(summary.shards))
    return summary
