"""The worker side of ``rewards.worker``: runs in the child process that ``WorkerReward`` starts.

It imports the registry to look the reward up, so it lives apart from ``worker.py`` (which the registry imports).
"""

from __future__ import annotations

import os
import signal
import sys
from multiprocessing.connection import Connection

from mo_rl.errors import MoRLError
from mo_rl.rewards.registry import get_reward, load_reward_modules
from mo_rl.rewards.worker import Unscorable


def _plain(v):
    """A returned value as None, a float, or an Unscorable: never a user object."""
    if v is None:
        return None
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return Unscorable(_text_repr(v))


def _text_repr(v) -> str:
    try:
        return repr(v)[:200]
    except BaseException:  # noqa: BLE001 - a user object's __repr__ may raise anything
        return f"<{type(v).__name__}>"


def serve(rfd: int, wfd: int) -> None:
    """Import the reward named in the first message, then answer calls until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    parent = os.getppid()
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the main process
    if os.getppid() != parent:
        os._exit(1)
    inbox, outbox = Connection(rfd, writable=False), Connection(wfd, readable=False)
    init = inbox.recv()
    sys.path[:] = init["path"]
    try:
        load_reward_modules(list(init["modules"]))
        fn = get_reward(init["spec"], isolation="thread")
    except MoRLError as e:
        outbox.send(("error", str(e)))
        return
    except BaseException as e:  # noqa: BLE001 - SystemExit at import included
        outbox.send(("error", f"objective {init['spec']!r} does not import ({type(e).__name__}: {e})"))
        return
    outbox.send(("ready", None))
    while True:
        try:
            kwargs = inbox.recv()
        except EOFError:
            return
        try:
            outbox.send(("ok", [_plain(v) for v in fn(**kwargs)]))
        except BaseException as e:  # noqa: BLE001 - the main process records it, this worker goes on
            outbox.send(("raised", f"{type(e).__name__}: {e}"))
