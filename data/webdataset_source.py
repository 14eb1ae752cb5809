"""`real_data: {kind: webdataset, ...}`: real images, video clips, audio clips or stored tensors with
their labels, captions or text embeddings, streamed from tar shards split over ranks and workers."""

from __future__ import annotations

from dataclasses import dataclass, field

from potstill.core import parallel
from potstill.core.registry import DATASETS
from potstill.data.decode_audio import AudioDecodeOptions, AudioDecoder
from potstill.data.decode_image import ImageDecodeOptions, ImageDecoder, as_hw
from potstill.data.decode_video import VideoDecodeOptions, VideoDecoder
from potstill.data.sample_decoder import Condition, Media, SampleDecoder, TensorDecodeOptions, TensorDecoder
from potstill.data.shard_stream import StreamLayout
from potstill.data.shards import expand_shards
from potstill.data.webdataset_stream import CaptionEncoder, WebDatasetStream


@dataclass
class WebDatasetOptions:
    """`shards`: brace patterns (`data/train-{000000..000099}.tar`), `::`-joined lists or a list of them.
    `condition` reads `label_field` (an integer, e.g. `cls` or `json:label`), `caption_field` (text,
    encoded by the run's text_encoder) or `embedding_field` (a stored vector, e.g. from `potstill data
    embed`). `resampled` draws shards with replacement instead of visiting each once per epoch."""

    shards: str | list[str] = ""
    media: Media = "image"
    image: ImageDecodeOptions = field(default_factory=ImageDecodeOptions)
    video: VideoDecodeOptions = field(default_factory=VideoDecodeOptions)
    audio: AudioDecodeOptions = field(default_factory=AudioDecodeOptions)
    tensor: TensorDecodeOptions = field(default_factory=TensorDecodeOptions)
    condition: Condition = "none"
    label_field: str = "cls"
    caption_field: str = "txt"
    embedding_field: str = "text_emb.npy"
    workers: int = 2
    shuffle_buffer: int = 1000
    shuffle_shards: bool = True
    resampled: bool = False
    seed: int | None = None


def spatial_defaults(size, channels, sample_shape: tuple[int, ...] | None, key: str) -> tuple[tuple[int, int], int]:
    """Size and channels from the options, or else from the modality's [C, H, W] (or [C, T, H, W]) samples."""
    if size is None or channels is None:
        if sample_shape is None or len(sample_shape) < 3:
            raise ValueError(f"{key}.size: set size and channels (the modality's samples are not images)")
        size = size if size is not None else list(sample_shape[-2:])
        channels = channels if channels is not None else sample_shape[0]
    if channels not in (1, 3):
        raise ValueError(f"{key}.channels: 1 (grey) or 3 (RGB), got {channels}")
    return as_hw(size, f"{key}.size"), channels


def build_decoder(o: WebDatasetOptions, sample_shape: tuple[int, ...] | None = None,
                  sample_rate: int | None = None) -> SampleDecoder:
    """The per-sample decoder the options describe (sizes, channels, lengths and rates default to the run's)."""
    if o.media == "image":
        size, channels = spatial_defaults(o.image.size, o.image.channels, sample_shape, "real_data.image")
        media, fields = ImageDecoder(o.image, size, channels), o.image.fields
    elif o.media == "video":
        size, channels = spatial_defaults(o.video.size, o.video.channels, sample_shape, "real_data.video")
        media, fields = VideoDecoder(o.video, size, channels), o.video.fields
    elif o.media == "audio":
        media, fields = AudioDecoder(o.audio.for_samples(sample_shape, sample_rate)), o.audio.fields
    else:
        media, fields = TensorDecoder(o.tensor.tensor_name), o.tensor.fields
    condition_field = {"label": o.label_field, "caption": o.caption_field, "embedding": o.embedding_field}
    return SampleDecoder(media, list(fields), o.condition, condition_field.get(o.condition, ""))


def open_stream(o: WebDatasetOptions, batch_rows: int, seed: int, sample_shape: tuple[int, ...] | None = None,
                encode_captions: CaptionEncoder | None = None, rank: int = 0, world_size: int = 1,
                epochs: int | None = None, sample_rate: int | None = None) -> WebDatasetStream:
    """A stream of this rank's batches; `epochs=None` for training (endless), a number to read and stop."""
    if batch_rows < 1:
        raise ValueError(f"batch rows must be positive, got {batch_rows}")
    if o.workers < 0:
        raise ValueError(f"real_data.workers: must be 0 (read in the main process) or more, got {o.workers}")
    layout = StreamLayout(expand_shards(o.shards), seed, rank, world_size, o.shuffle_buffer, o.shuffle_shards,
                          o.resampled)
    return WebDatasetStream(layout, build_decoder(o, sample_shape, sample_rate), batch_rows, o.workers,
                            encode_captions, epochs)


@DATASETS.register("webdataset", WebDatasetOptions)
def build_webdataset_stream(options: WebDatasetOptions, context) -> WebDatasetStream:
    seed = options.seed if options.seed is not None else context.config.train.seed + 1
    modality = context.modality
    encoder = context.text_encoder.encode if context.text_encoder is not None else None
    if options.condition == "caption" and encoder is None:
        raise ValueError("real_data.condition: captions need a text encoder; set the run's text_encoder section")
    stream = open_stream(options, context.engine.micro_batch, seed, getattr(modality, "data_shape", None), encoder,
                         parallel.PLACE.rank, parallel.PLACE.world_size,
                         sample_rate=getattr(modality, "sample_rate", None))
    stream.in_codec_space = options.media == "tensor"      # stored tensors are the teacher's samples (latents)
    return stream
