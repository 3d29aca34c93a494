"""side4video: memory-efficient image-to-video transfer learning on frozen CLIP / EVA-CLIP ViTs."""

from .backbones.loading import load_backbone, load_clip, load_text_tower
from .backbones.text import TextTransformer
from .backbones.tokenizer import ClipTokenizer, load_tokenizer
from .backbones.vit import VisionConfig, VisionTransformer, build_vit, freeze
from .engine.checkpoint import load_model
from .export import export_merged, load_exported
from .metrics import classification_metrics, retrieval_metrics
from .models import create_model, list_models
from .official import load_official
from .profiler import profile_model

__all__ = [
    "ClipTokenizer",
    "TextTransformer",
    "VisionConfig",
    "VisionTransformer",
    "build_vit",
    "classification_metrics",
    "create_model",
    "export_merged",
    "freeze",
    "list_models",
    "load_backbone",
    "load_clip",
    "load_exported",
    "load_model",
    "load_official",
    "load_text_tower",
    "load_tokenizer",
    "profile_model",
    "retrieval_metrics",
]
__version__ = "0.1.0"
