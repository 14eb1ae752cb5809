"""Networks the Denoisers wrap: an MLP for vectors, a DiT on timm layers for images, a video DiT for clips and a
1-D DiT for audio."""

from potstill.backbones import digits_classifier, dit, dit1d, mlp, text_encoders, video_dit

__all__ = ["digits_classifier", "dit", "dit1d", "mlp", "text_encoders", "video_dit"]
