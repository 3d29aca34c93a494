"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never a mixture.

Each write goes to a fresh temporary file in the target's folder, created with ``O_CREAT | O_EXCL``
(``tempfile.mkstemp``: an unpredictable name, never an existing file or a planted symlink), is flushed
and ``fsync``-ed, then renamed over the target (``os.replace``: a symlink at the target is replaced, not
followed) and the folder is ``fsync``-ed so the rename itself survives a power cut. A process killed
mid-write leaves only its temporary file, named ``.<target>.<pid>.<random>.tmp``;
:func:`remove_stale_temps` deletes those whose process is gone, and runs at the start of every write
into a folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

_TEMP_RE = re.compile(r"^\..+\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of killed writes in ``folder`` (those whose writing process is gone).

    Returns the removed paths. Symlinks are removed as links, never followed."""
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            m = _TEMP_RE.match(entry.name)
            if m and not _pid_alive(int(m.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _fsync_dir(folder: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temp_beside(path: Path) -> tuple[Path, int, str]:
    """``path``'s folder (stale temporary files removed) and a new exclusive temporary file in it."""
    folder = path.parent if str(path.parent) else Path(".")
    remove_stale_temps(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=folder)
    return folder, fd, tmp


def _rename_over(tmp: str, path: Path, folder: Path, fill: Callable[[], Any]) -> None:
    """``fill()`` the temporary file ``tmp``, rename it over ``path`` and sync the folder; on any error the
    temporary file is removed."""
    try:
        fill()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a new temporary file beside ``path``, then atomically make it ``path``."""
    path = Path(path)
    folder, fd, tmp = _temp_beside(path)

    def fill() -> None:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    _rename_over(tmp, path, folder, fill)


def atomic_copy(src: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make ``path`` a copy of the finished file ``src`` atomically: a hard link to it when the filesystem
    allows (no bytes written: both names then share one file, which later atomic writes never modify in
    place), else a byte copy. Either way a new temporary name is renamed over ``path``."""
    path = Path(path)
    folder, fd, tmp = _temp_beside(path)
    os.close(fd)
    os.unlink(tmp)  # the unpredictable name is ours; the link takes it
    try:
        os.link(src, tmp, follow_symlinks=False)
    except OSError:  # no hard links here (or another filesystem): copy the bytes
        with open(src, "rb") as source:
            atomic_write(path, lambda f: shutil.copyfileobj(source, f))
        return
    _rename_over(tmp, path, folder, lambda: None)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically (see the module docstring)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


__all__ = ["atomic_copy", "atomic_save", "atomic_write", "atomic_write_text", "remove_stale_temps"]
