"""Data sources: the embedded 8x8 digits and their real-sample stream; importing registers them."""

from potstill.data import digits

__all__ = ["digits"]
