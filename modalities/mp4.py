"""MP4 files through PyAV (an optional dependency): the video grids and the 3-D turntables."""

from __future__ import annotations

from pathlib import Path

import torch


def write_mp4(frames: torch.Tensor, path: Path, fps: int) -> None:
    """Encode uint8 RGB frames [F, H, W, 3] with libx264 (mpeg4 where this PyAV lacks it)."""
    try:
        import av
    except ImportError:
        raise ValueError("writing .mp4 needs PyAV: pip install av") from None
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "15"}
        else:
            stream.bit_rate = 4_000_000
        for frame in frames.numpy():
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
