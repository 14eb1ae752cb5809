"""Networks the Denoisers wrap: an MLP for vectors, a DiT on timm layers for images, a video DiT for clips, a
1-D DiT for audio, a view-conditioned DiT for text-to-3D teachers, and the 3-D fields text-to-3D optimises; and
the text encoders that condition them (open_clip, transformers token sequences)."""

from potstill.backbones import (
    digits_classifier,
    dit,
    dit1d,
    fields,
    mlp,
    text_encoders,
    transformers_text,
    video_dit,
    view_dit,
)

__all__ = ["digits_classifier", "dit", "dit1d", "fields", "mlp", "text_encoders", "transformers_text", "video_dit",
           "view_dit"]
