"""Media the repository has never seen, made on the fly: images, mp4 clips (PyAV, libx264) and audio
(soundfile), with known pixels and samples, packed into shards; and a way to truncate a shard."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import av
import numpy as np
import soundfile
from PIL import Image

from potstill.data.pack import pack


def pattern_frames(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """[T, H, W, 3] uint8 smooth gradients that move from frame to frame (they survive lossy codecs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, 3)
    frames = [np.stack([(xx * 4 + base[0] + 9 * t) % 256, (yy * 5 + base[1]) % 256,
                        np.full((height, width), (base[2] + 11 * t) % 256)], axis=-1) for t in range(count)]
    return np.stack(frames).astype(np.uint8)


def mp4_bytes(frames: np.ndarray, fps: int = 10) -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def tone(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    """[L, C] float32 sines at a per-file frequency (one octave apart per channel)."""
    frequency = 220 + 40 * (seed % 10)
    t = np.arange(int(seconds * rate)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * frequency * (c + 1) * t) for c in range(channels)], axis=1).astype(
        np.float32)


def audio_bytes(wave: np.ndarray, rate: int, extension: str) -> bytes:
    buffer = io.BytesIO()
    formats = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
               "ogg": ("OGG", "VORBIS")}
    soundfile.write(buffer, wave, rate, format=formats[extension][0], subtype=formats[extension][1])
    return buffer.getvalue()


def image_bytes(pixels: np.ndarray, extension: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[extension],
                                 **({"quality": 95} if extension == "jpg" else {}))
    return buffer.getvalue()


def write_media_folder(folder: Path, media: str, count: int) -> dict[str, np.ndarray]:
    """`count` files of one media kind, each with a caption and a label; returns the source arrays by key."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = {}
    for index in range(count):
        key = f"item-{index:03d}"
        if media == "image":
            array = pattern_frames(1, 20, 28, index)[0]
            data, extension = image_bytes(array, ("png", "jpg", "webp")[index % 3]), ("png", "jpg", "webp")[index % 3]
        elif media == "video":
            array = pattern_frames(12, 32, 48, index)
            data, extension = mp4_bytes(array), "mp4"
        else:
            array = tone(0.5, 16000, 1, index)
            data, extension = audio_bytes(array, 16000, ("wav", "flac")[index % 2]), ("wav", "flac")[index % 2]
        (folder / f"{key}.{extension}").write_bytes(data)
        (folder / f"{key}.txt").write_text(f"caption of {key}")
        (folder / f"{key}.cls").write_text(str(index % 4))
        sources[key] = array
    return sources


def corrupt(folder: Path, key: str) -> None:
    """Replace a media file's bytes with garbage, keeping its name and sidecars."""
    path = next(p for p in folder.glob(f"{key}.*") if p.suffix not in (".txt", ".cls"))
    path.write_bytes(b"definitely not media " * 20)


def pack_folder(folder: Path, out: Path, maxcount: int) -> list[Path]:
    return pack(folder, str(out / "part-%06d.tar"), maxcount=maxcount).shards


def truncate_inside(shard: Path, member_index: int) -> list[str]:
    """Cut the shard in the middle of its `member_index`-th file's data; returns the keys (in order) whose
    files all lie before the cut."""
    with tarfile.open(shard) as archive:
        members = archive.getmembers()
    cut = members[member_index].offset_data + members[member_index].size // 2
    whole: dict[str, bool] = {}
    for member in members:
        key = member.name.split(".", 1)[0]
        whole[key] = whole.get(key, True) and member.offset_data + member.size <= cut
    shard.write_bytes(shard.read_bytes()[:cut])
    return sorted(key for key, fits in whole.items() if fits)
