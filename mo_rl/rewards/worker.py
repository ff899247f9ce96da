"""A user's reward function in a worker process of its own, killed when a call runs past its time limit.

A thread cannot stop a reward that holds the GIL (a catastrophic regex, a long C call): the whole process stalls,
the time limit and SIGTERM included. So a ``module:function`` reward (and any reward under
``objectives.isolation=process``) is imported and called in a child Python process. The main process waits for
the reply with ``poll(timeout)`` (a ``select``, which signals interrupt): at the limit it SIGKILLs the worker and
the call is a ``RewardTimeout``; a SIGTERM or Ctrl-C while it waits kills the worker and goes through. The next
call starts a fresh worker (the module is imported again). The module is imported in the worker only, within
``objectives.timeout_s`` but at least ``IMPORT_FLOOR_S`` (a Python start on a loaded machine takes seconds), so a
module that hangs, exits or crashes at import is a one-line error, not a hung run.

Inputs and outputs cross a pipe (pickle): values come back as ``None``, a float, or an ``Unscorable`` (the repr of
what could not be read as a number), so nothing of the user's module is ever unpickled in the main process. A
worker dies with its parent (``PR_SET_PDEATHSIG``) and is killed at exit. Cost: ``scripts/reward_worker_overhead.py``.
The worker's side of the pipe is ``rewards/serve.py`` (it imports the registry; the registry imports this module).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

from mo_rl.errors import MoRLError

IMPORT_FLOOR_S = 30.0  # the least time a worker gets to start and import the reward


class RewardTimeout(Exception):
    """A reward call ran past ``objectives.timeout_s``."""


class WorkerDied(Exception):
    """The worker process ended during a call (``os._exit``, a crash, the OOM killer)."""


class Unscorable:
    """A returned value that is not a number (its repr), sent back in place of the value itself."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


class WorkerReward:
    """Callable like a reward function; runs ``spec`` (a registered name or ``module:function``) in a worker.

    ``modules``: imported in the worker first (``objectives.modules``). ``timeout_s``: the limit of a direct call
    and of the import (0 or None: none); ``rewards.score`` passes its own limit to ``call``."""

    def __init__(self, spec: str, modules: tuple[str, ...] = (), timeout_s: float | None = 300.0):
        self.spec, self.modules, self.timeout_s = spec, tuple(modules), timeout_s
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()  # one call at a time per worker

    def __call__(self, prompts, completions, **columns) -> list:
        return self.call(dict(prompts=prompts, completions=completions, **columns), self.timeout_s)

    def call(self, kwargs: dict, timeout_s: float | None) -> list:
        with self.lock:
            if self.proc is None:
                self._start(timeout_s)
            try:
                self._send(kwargs)
            except OSError:  # the worker died between calls: once more with a fresh one
                self.close()
                self._start(timeout_s)
                self._send(kwargs)
            kind, payload = self._reply(timeout_s, "took longer than objectives.timeout_s={t:g} s (its worker "
                                                   "process was killed)")
        if kind == "ok":
            return payload
        raise _Raised(payload)

    def _send(self, kwargs: dict) -> None:
        self.to_worker.send(kwargs)

    def _start(self, timeout_s: float | None) -> None:
        """Start the worker and wait until it has imported the reward; MoRLError when it cannot."""
        ours_r, theirs_w = os.pipe()
        theirs_r, ours_w = os.pipe()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p or os.getcwd() for p in sys.path)}
        code = f"from mo_rl.rewards.serve import serve; serve({theirs_r}, {theirs_w})"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, env=env,
                                         pass_fds=(theirs_r, theirs_w))
        finally:
            os.close(theirs_r)
            os.close(theirs_w)
        self.from_worker, self.to_worker = Connection(ours_r, writable=False), Connection(ours_w, readable=False)
        _LIVE.add(self)
        try:
            self.to_worker.send({"path": list(sys.path), "modules": self.modules, "spec": self.spec})
            limit = max(timeout_s, IMPORT_FLOOR_S) if timeout_s else None
            kind, payload = self._reply(limit, "did not finish importing within {t:g} s (objectives.timeout_s, at "
                                               f"least {IMPORT_FLOOR_S:g} s)")
        except (RewardTimeout, WorkerDied, OSError) as e:  # OSError: it died before reading its first message
            self.close()
            raise MoRLError(f"objective {self.spec!r}: {e}") from None
        if kind != "ready":
            self.close()
            raise MoRLError(payload)

    def _reply(self, timeout_s: float | None, late: str):
        """The worker's next message, waited for at most ``timeout_s``; the worker is killed on a timeout, on its
        death and on any exception (SIGTERM, Ctrl-C) while waiting."""
        try:
            if not self.from_worker.poll(timeout_s or None):
                raise RewardTimeout(late.format(t=timeout_s))
            return self.from_worker.recv()
        except EOFError:
            code = self.proc.wait()
            raise WorkerDied(f"its worker process exited (exit status {code}) during the call") from None
        except BaseException:
            self.close()
            raise
        finally:
            if self.proc is not None and self.proc.poll() is not None:
                self.close()

    def close(self) -> None:
        """Kill the worker (if any); the next call starts a new one."""
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self.from_worker.close()
            self.to_worker.close()


class _Raised(Exception):
    """What the reward raised in the worker, as ``Type: message`` (``rewards.score`` keeps the text as is)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


_LIVE: set[WorkerReward] = set()
_CACHE: dict[tuple, WorkerReward] = {}
_CACHE_LOCK = threading.Lock()


def worker_reward(spec: str, modules=(), timeout_s: float | None = 300.0) -> WorkerReward:
    """The process's worker for ``spec`` (started, the reward imported), shared by validation and the run."""
    key = (spec, tuple(modules))
    with _CACHE_LOCK:
        if key not in _CACHE or _CACHE[key].proc is None:
            w = WorkerReward(spec, modules, timeout_s)
            with w.lock:
                w._start(timeout_s)
            _CACHE[key] = w
        return _CACHE[key]


@atexit.register
def _close_all() -> None:
    for w in list(_LIVE):
        w.close()
