"""Data sources: the embedded 8x8 digits, and webdataset streams of real images, video, audio and
tensors with their labels, captions or embeddings; importing registers them."""

from potstill.data import digits, webdataset_source

__all__ = ["digits", "webdataset_source"]
