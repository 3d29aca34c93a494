"""side4video: memory-efficient image-to-video transfer learning on frozen CLIP / EVA-CLIP ViTs."""

from .backbones.loading import load_backbone
from .backbones.vit import VisionConfig, VisionTransformer, build_vit, freeze
from .models import create_model, list_models

__all__ = [
    "VisionConfig", "VisionTransformer", "build_vit", "create_model", "freeze", "list_models", "load_backbone"
]
__version__ = "0.1.0"
