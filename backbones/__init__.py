"""Networks the Denoisers wrap: an MLP for vectors and a DiT on timm layers for images."""

from potstill.backbones import digits_classifier, dit, mlp, text_encoders

__all__ = ["digits_classifier", "dit", "mlp", "text_encoders"]
