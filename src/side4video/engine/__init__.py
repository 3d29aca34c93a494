"""Training and evaluation engine: config, optimiser, checkpoints, DDP, the training loop, evaluation."""

from ..atomic import atomic_save
from .checkpoint import load_checkpoint, load_model_for_inference
from .config import ConfigError, TrainConfig, resolve_config
from .evaluate import classification_metrics, predict_views
from .optim import WarmupCosine, build_optimizer, build_scheduler, param_groups
from .train import NonFiniteLossError, train

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "TrainConfig",
    "WarmupCosine",
    "atomic_save",
    "build_optimizer",
    "build_scheduler",
    "classification_metrics",
    "load_checkpoint",
    "load_model_for_inference",
    "param_groups",
    "predict_views",
    "resolve_config",
    "train",
]
