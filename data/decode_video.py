"""Video clips (mp4, webm, mkv, avi, mov) decoded from the shard's bytes with decord, without temporary
files, to [C, T, H, W] tensors in [-1, 1]: `frames` frames, every `stride`-th source frame or sampled
at `fps`, from a random, first or middle start, resized and cropped like images."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Literal

import decord
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from potstill.data.decode_image import Crop, Resize, crop_offsets, resized_shape, to_unit_range
from potstill.data.fields import BadSample

VIDEO_FIELDS = ["mp4", "webm", "mkv", "avi", "mov"]
Start = Literal["random", "first", "middle"]


@dataclass
class VideoDecodeOptions:
    """`fps`, when set, samples frames at that rate from the source's own rate instead of by `stride`."""

    frames: int = 16
    stride: int = 1
    fps: float | None = None
    start: Start = "random"
    size: list[int] | int | None = None
    channels: int = 3
    resize: Resize = "shorter_side"
    crop: Crop = "center"
    fields: list[str] = field(default_factory=lambda: list(VIDEO_FIELDS))


def clip_start(spare: int, start: Start, rng: np.random.Generator) -> int:
    """First position of a window with `spare` positions to spare."""
    if start == "random":
        return int(rng.integers(spare + 1))
    return spare // 2 if start == "middle" else 0


def frame_indices(total: int, source_fps: float, frames: int, stride: int, fps: float | None, start: Start,
                  rng: np.random.Generator) -> list[int]:
    """Source frame numbers of one clip; a source too short for it makes the sample bad."""
    step = source_fps / fps if fps else float(stride)
    span = (frames - 1) * step
    if total < 1 or span > total - 1:
        raise BadSample("too_short", f"video has {total} frames, a clip needs {math.floor(span) + 1}")
    first = clip_start(int(total - 1 - span), start, rng)
    return [first + round(i * step) for i in range(frames)]


def unpadded(frame: np.ndarray) -> np.ndarray:
    """decord 0.6 reports some narrow frames (e.g. 16, 24 or 48 pixels wide) as [H, W, k>3] with each row
    padded; the first 3W bytes of each row are the RGB pixels."""
    height, width = frame.shape[:2]
    return frame.reshape(height, -1)[:, : width * 3].reshape(height, width, 3)


def read_frames(reader: decord.VideoReader, indices: list[int]) -> np.ndarray:
    """[T, H, W, 3] uint8 frames; frame by frame where decord's batch copy trips over padded rows."""
    try:
        frames = reader.get_batch(indices).asnumpy()
        if frames.shape[-1] == 3:
            return frames
    except decord.DECORDError:
        pass
    return np.stack([unpadded(reader[i].asnumpy()) for i in indices])


@dataclass
class VideoDecoder:
    """Bytes of one video -> [channels, frames, H, W] in [-1, 1]; size and channels resolved from the options."""

    options: VideoDecodeOptions
    size: tuple[int, int]
    channels: int

    def __call__(self, data: bytes, rng: np.random.Generator) -> torch.Tensor:
        try:
            reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
            o = self.options
            indices = frame_indices(len(reader), reader.get_avg_fps(), o.frames, o.stride, o.fps, o.start, rng)
            pixels = read_frames(reader, indices)
        except (decord.DECORDError, RuntimeError) as error:
            raise BadSample("undecodable", f"video: {str(error).splitlines()[0][:200]}") from None
        clip = to_unit_range(torch.from_numpy(pixels))
        clip = rearrange(clip, "t h w c -> t c h w")
        height, width = resized_shape(clip.shape[2], clip.shape[3], self.size, self.options.resize)
        if (height, width) != tuple(clip.shape[2:]):
            clip = F.interpolate(clip, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        top, left = crop_offsets(height, width, self.size, self.options.crop, rng)
        clip = clip[:, :, top : top + self.size[0], left : left + self.size[1]]
        if self.channels == 1:
            clip = clip.mean(dim=1, keepdim=True)
        return rearrange(clip, "t c h w -> c t h w").clamp(-1, 1)
