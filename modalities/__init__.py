"""Modality adapters; importing this package registers them with the core's registries."""

from potstill.modalities import image, vector

__all__ = ["image", "vector"]
