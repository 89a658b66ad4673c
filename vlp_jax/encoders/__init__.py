"""Visual encoders: patch (ViT)."""
from vlp_jax.encoders.vit import VisionTransformer, vit_settings

__all__ = ["VisionTransformer", "vit_settings"]
