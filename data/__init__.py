"""Data sources: the embedded 8x8 digits, and webdataset streams of real images, video, audio and
tensors with their labels, captions or embeddings (`digits` and `webdataset_source` register them)."""
