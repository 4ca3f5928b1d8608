"""Atomic file writes (temp file in the same folder, fsync, rename): an interrupted write never leaves a
half-written checkpoint, annotation or report behind; the previous version stays intact."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def _file_mode() -> int:
    """The mode open() would give a new file (0666 less the umask): mkstemp's 0600 would hide results and
    checkpoints from other users (a TensorBoard server, a results collector)."""
    try:
        with open("/proc/self/status") as f:  # reads the umask without changing it (Linux)
            mask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable, binary: bool = False) -> None:
    """Call ``write(file)`` on a temp file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.chmod(tmp, _file_mode())
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_save(obj, path: str | Path) -> None:
    """torch.save, atomically."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")
