"""Directory steps that must survive a crash at any point: fsync a directory, swap a finished directory into place.

A directory (a step checkpoint, ``checkpoints/final``) is built under a temporary name and then swapped in by
``replace_dir``: the old copy is renamed aside to ``.<name>.old``, the new one renamed in, the parent fsynced, and
only then is the aside copy deleted. A crash at any moment leaves the old copy or the new one: under its own name,
or under the aside name, which ``recover_dir`` (called by whoever next writes there) puts back, and which
``current_dir`` finds for a reader. A single file is replaced the same way by ``atomic_write``. Imports nothing
from mo-rl.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """A rename is durable only once the directory holding it is fsynced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and the directories holding them (a tree written by a library that does
    not, such as ``save_pretrained``), so that a swap never puts in a copy whose data is still only in memory."""
    for d, _, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(d))


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary name in the same directory, fsync, then rename over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a signal: no half-written .tmp is left behind, ``path`` is untouched
        tmp.unlink(missing_ok=True)
        raise


def aside(path: Path) -> Path:
    """Where ``replace_dir`` keeps the old copy of ``path`` while the new one is renamed in."""
    path = Path(path)
    return path.with_name(f".{path.name}.old")


def replace_dir(tmp: Path, path: Path) -> Path:
    """Rename the finished directory ``tmp`` to ``path``, replacing the directory there (if any) without a moment
    where neither exists: the old one goes aside, the new one in, the parent is fsynced, then the old one is
    deleted. ``tmp`` and ``path`` must be in the same directory (a rename, not a copy)."""
    tmp, path = Path(tmp), Path(path)
    old = aside(path)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)  # left by a crash after an earlier swap had put its new copy in
        path.rename(old)
    tmp.rename(path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)
    return path


def recover_dir(path: Path) -> bool:
    """Undo a swap a crash interrupted: the aside copy goes back under ``path`` when ``path`` is missing, and is
    deleted when ``path`` is there (the swap had finished but for the deletion). -> whether a copy was put back.
    Only a process that may write ``path`` (one holding the run's lock) calls this."""
    path, old = Path(path), aside(path)
    if not old.is_dir():
        return False
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        return False
    old.rename(path)
    fsync_dir(path.parent)
    return True


def current_dir(path: Path) -> Path:
    """``path``, or its aside copy when a crash during a swap left only that (for readers: nothing is moved)."""
    path, old = Path(path), aside(path)
    return old if not path.exists() and old.is_dir() else path
