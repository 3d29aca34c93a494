"""The files a run's config names, found again when its checkpoint is used from another directory.

A checkpoint records each path of its config twice (``paths``): as given, often relative to the
directory training ran in, and made absolute. Loading looks for the file, in order:

1. at its original absolute location;
2. in the moved project: when the checkpoint lies in ``.../X/OUTPUT_DIR/`` and ``OUTPUT_DIR`` was given
   relative, at ``.../X/GIVEN`` (the run's folder moved together with its data);
3. beside the checkpoint: ``CHECKPOINT_DIR/GIVEN``;
4. relative to the current directory.

The first that exists wins. A path found nowhere keeps its original absolute form, so the error of
whatever then opens it names the full path.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Config keys that name files or folders the run reads (data_root "" is the directory training ran in).
PATH_KEYS = ("data.train_list", "data.val_list", "data.data_root", "data.label_names", "data.tokenizer",
             "model.pretrained")


def _get(cfg: Any, key: str) -> Any:
    group, name = key.split(".")
    return getattr(getattr(cfg, group), name)


def record_paths(cfg: Any) -> dict[str, dict[str, str]]:
    """``{key: {"given": ..., "absolute": ...}}`` for every path the config sets."""
    out = {}
    for key in PATH_KEYS:
        value = _get(cfg, key)
        if value is not None:
            out[key] = {"given": str(value), "absolute": os.path.abspath(value or ".")}
    return out


def candidates(given: str, absolute: str | None, checkpoint: str | Path, output_dir: str | None) -> list[Path]:
    """Where to look for a recorded path, best first, without duplicates (see the module docstring)."""
    given_path = Path(given or ".")
    if given_path.is_absolute():
        return [given_path]
    ckpt_dir = Path(checkpoint).resolve().parent
    places = [Path(absolute)] if absolute else []
    out = Path(os.path.normpath(output_dir)).parts if output_dir and not os.path.isabs(output_dir) else ()
    if out and ".." not in out and ckpt_dir.parts[-len(out):] == out:  # the project moved with the run
        places.append(ckpt_dir.parents[len(out) - 1] / given_path)
    places += [ckpt_dir / given_path, Path.cwd() / given_path]
    return list(dict.fromkeys(p.resolve() for p in places))


def resolve_paths(cfg: Any, recorded: Mapping[str, Mapping[str, str]] | None, checkpoint: str | Path) -> Any:
    """``cfg`` with each path replaced by where it exists now (see the module docstring). ``recorded``: the
    checkpoint's ``paths``; without it (older checkpoints) the paths are looked up as given."""
    recorded = recorded or {key: {"given": str(_get(cfg, key))} for key in PATH_KEYS if _get(cfg, key)}
    groups: dict[str, dict[str, str]] = {}
    for key, entry in recorded.items():
        places = candidates(entry["given"], entry.get("absolute"), checkpoint, cfg.run.output_dir)
        hit = next((p for p in places if p.exists()), places[0])
        group, name = key.split(".")
        groups.setdefault(group, {})[name] = str(hit)
    return dataclasses.replace(cfg, **{g: dataclasses.replace(getattr(cfg, g), **v) for g, v in groups.items()})
