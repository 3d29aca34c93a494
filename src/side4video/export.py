"""Export a trained model with its adapters merged, after checking the merge numerically.

``export_merged`` reads a training checkpoint (or an export directory such as ``side4video import``
writes), rebuilds the model, calls its ``reparameterize()``
and compares merged and unmerged outputs on random clips in float32 / eval mode. Only if they agree
within ``atol`` does it write an export directory (``engine.checkpoint.write_export``), which
``load_model`` / ``load_exported`` read back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .engine.checkpoint import MODEL_KEYS, load_checkpoint, model_from_checkpoint, read_export, write_export
from .models import get_preset


@torch.no_grad()
def max_output_difference(a: nn.Module, b: nn.Module, clips: torch.Tensor) -> float:
    """Largest absolute difference between two frame-mean classifiers' features and logits."""
    fa, fb = a.forward_features(clips), b.forward_features(clips)
    return max((fa - fb).abs().max().item(), (a.head(fa) - b.head(fb)).abs().max().item())


def export_merged(
    checkpoint_path: str | Path,
    out_dir: str | Path,
    atol: float = 1e-5,
    pretrained: str | Path | None = None,
    num_clips: int = 2,
    seed: int = 0,
) -> Path:
    """Merge the adapters of a checkpoint's model, verify, and write ``out_dir``; returns ``out_dir``.

    ``pretrained`` (default: the run's) is needed only for a checkpoint saved without its frozen
    weights. Raises ``ValueError`` (and writes nothing) when merged and unmerged outputs differ by
    more than ``atol`` on ``num_clips`` random clips.
    """
    checkpoint_path = Path(checkpoint_path)
    model = None
    if checkpoint_path.is_dir():  # an export directory, e.g. an imported official checkpoint
        model, ckpt = read_export(checkpoint_path)
        ckpt["epoch"] = ckpt.get("source_epoch")
    else:
        ckpt = load_checkpoint(checkpoint_path, keys=MODEL_KEYS)
    name = ckpt["model_name"]
    if not hasattr(get_preset(name).build, "reparameterize"):  # refused before any weight is read
        raise ValueError(f"{checkpoint_path}: {name} has no adapters to merge (export is for ZeroI2V checkpoints)")
    if model is None:
        model = model_from_checkpoint(ckpt, checkpoint_path, pretrained)
    model = model.float()
    merged = model.reparameterize().eval()

    size = model.backbone.cfg.image_size
    clips = torch.randn(num_clips, 3, model.cfg.num_frames, size, size, generator=torch.Generator().manual_seed(seed))
    diff = max_output_difference(model, merged, clips)
    if not diff <= atol:  # also refuses NaN
        raise ValueError(
            f"{checkpoint_path}: merged {name} differs from the unmerged model by {diff:.3e} "
            f"(> atol {atol:.1e}); nothing written to {out_dir}"
        )
    return write_export(
        merged, name, out_dir, merge_max_abs_diff=diff, merge_atol=atol, source_checkpoint=str(checkpoint_path),
        source_epoch=ckpt.get("epoch"), train_config=ckpt.get("train_config"),  # views, image size for eval
    )


def load_exported(directory: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model of an export directory, in eval mode on ``device`` (see ``side4video.load_model``)."""
    return read_export(directory, device)[0]
