"""Networks the Denoisers wrap: an MLP for vectors, a DiT on timm layers for images and a video DiT for clips."""

from potstill.backbones import digits_classifier, dit, mlp, text_encoders, video_dit

__all__ = ["digits_classifier", "dit", "mlp", "text_encoders", "video_dit"]
