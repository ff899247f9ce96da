"""An OS-level lock on a run directory, so two processes never write the same run.

``<run_dir>/.lock`` is opened and ``fcntl.flock``-ed (exclusive, non-blocking) for the whole run. The kernel drops
the lock when the file descriptor closes, which happens on every exit, SIGKILL and crashes included, so a lock left
by a dead process never blocks: only a live holder does. The file keeps the holder's pid and host for the message.
It stays for the life of the run, and tells readers whether the run's process is alive (``reader.lock_state``).
A start that fails before writing anything (a bad model path, a missing data file) ``discard``s the directories
it created, lock included, so no empty run is left behind; a lock taken on a file that
was unlinked meanwhile is taken again on the new one (the inode check), so deleting it never lets two holders in.
flock is advisory and per host on most network file systems: two machines sharing an NFS results directory are
not protected from each other.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from mo_rl.errors import MoRLError

LOCK_NAME = ".lock"


class RunLock:
    """Hold the lock of ``run_dir`` (created if missing) until ``release`` or process exit."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.created = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        for _ in range(5):
            self._open()
            if not self._flock():
                holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "unknown"
                self.release()
                raise MoRLError(f"run dir {str(self.path.parent)!r} is in use by another mo-rl process ({holder}); "
                                "wait for it to end, or choose another run_name") from None
            if self._current():
                break
            self.release()  # a failed start discarded the file between our open and our flock: lock the new one
        else:
            raise MoRLError(f"run dir {str(self.path.parent)!r} keeps being removed while it is locked; "
                            "choose another run_name")
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError:  # a full disk: the lock holds all the same, only the message loses the pid
            pass

    def _flock(self, tries: int = 20) -> bool:
        """Take the lock; False if a live process holds it. A reader testing liveness (``reader.lock_state``)
        holds it shared for an instant, so a few tries 10 ms apart come before a refusal."""
        for i in range(tries):
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if i + 1 < tries:
                    time.sleep(0.01)
        return False

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise MoRLError(f"output directory {str(self.path.parent)!r} is not writable ({e.strerror}); "
                            "set output_dir=<a writable directory>") from e

    def _current(self) -> bool:
        try:
            return os.fstat(self.fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def discard(self) -> None:
        """Remove what this lock created, if the run directory holds nothing else (a start that failed before
        writing), then release; a directory that already existed or holds anything else is kept, lock file too."""
        if self.fd >= 0 and self.path.parent in self.created and \
                [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]:
            self.path.unlink()  # unlinked while held: a process that opened it meanwhile retries on a new file
            for d in self.created:
                try:
                    d.rmdir()
                except OSError:  # another run's directory appeared in it meanwhile
                    break
        self.release()

    def release(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)  # closing drops the flock
            self.fd = -1

    __del__ = release  # a run object dropped without release (an error before its try block) frees the lock too
