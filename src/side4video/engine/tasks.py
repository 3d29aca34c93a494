"""What differs between tasks, as one object per task that the engine asks for it.

A preset names its task object (``models.Preset.task``); the training loop, evaluation, the
profiler and the CLI call these methods and never compare task names. The two tasks are
``engine/recognition.py`` (``RECOGNITION``) and ``engine/retrieval.py`` (``RETRIEVAL``).

    model_kwargs(cfg)                      what ``create_model`` needs from the run's config
    build_dataset(cfg, model_cfg, train)   the training or validation dataset
    make_loader(dataset, cfg, info, train) its loader, sharded over ranks
    loss(model, batch, device, cfg)        (mean loss, number of clips) of a training batch
    example_batch(model, batch, device)    a batch of the right shapes, for the profiler
    encode(model, clip)                    the inference forward pass whose FLOPs are reported
    evaluate(model, data, cfg, info)       (metrics, results) over every rank's shard
    describe(metrics)                      one line of the metrics, for logs and the CLI
    summary(metrics, cfg)                  what was evaluated, one line (``eval``)
    eval_settings(cfg)                     evaluation settings reported beside the metrics
    save_results(results, cfg, out_dir)    the task's files after an evaluation (confusion matrix)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..typed_config import ConfigError

if TYPE_CHECKING:
    from .config import TrainConfig


class NonFiniteError(RuntimeError):
    """A model's weights or outputs (or the loss) are NaN or infinite: the model has diverged."""


class NoReadableVideoError(ValueError):
    """Evaluation found no readable video; ``bad`` holds the ``BadSample`` reports."""

    def __init__(self, bad: list) -> None:
        shown = ", ".join(b.path for b in bad[:3]) + (f", ... ({len(bad)} in all)" if len(bad) > 3 else "")
        super().__init__(f"no video of the validation set could be read; unreadable: {shown or 'none listed'}")
        self.bad = bad


class Task:
    """Shared parts of the tasks; ``name`` and ``metric`` (higher is better, picks ``best.pt``)."""

    name: str
    metric: str

    def check_config(self, cfg: TrainConfig, source: str) -> None:
        """Options that do not apply to this task, and a ``model.task`` that names another task."""
        if cfg.model.task is not None and cfg.model.task != self.name:
            raise ConfigError(f"{source}: task: {cfg.model.task!r} does not match model {cfg.model.name!r}, "
                              f"a {self.name} preset")

    def model_kwargs(self, cfg: TrainConfig) -> dict[str, Any]:
        return {}

    def eval_settings(self, cfg: TrainConfig) -> dict[str, Any]:
        return {}

    def save_results(self, results: Any, cfg: TrainConfig, out_dir: Path) -> None:
        """Files written after an evaluation (nothing by default)."""

    def __repr__(self) -> str:
        return f"<{self.name} task>"
