"""Stop signals: SIGTERM (what SLURM, Kubernetes and ``kill`` send) and SIGHUP (a closed terminal or SSH session)
raise ``Terminated``, a ``KeyboardInterrupt``, so a run stops exactly as on Ctrl-C (the step in flight is dropped,
status ``interrupted``), and the CLI exits 128 + the signal's number (143, 129). Ctrl-C (SIGINT) is noted as it
arrives, so a ``KeyboardInterrupt`` that no signal caused (reward code raising it) can be told apart
(``pipeline/rollout_score.py``). Imports nothing from mo-rl.
"""

from __future__ import annotations

import signal
import threading


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like SIGINT's KeyboardInterrupt."""

    exit_code = 128 + signal.SIGTERM

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum, self.exit_code = signum, 128 + signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_SIGINT = {"watching": False, "seen": False}  # set by ``on_sigterm``'s SIGINT handler


def signalled() -> bool | None:
    """Whether Ctrl-C (SIGINT) reached this process while a run watched for it; None when no run watches."""
    return _SIGINT["seen"] if _SIGINT["watching"] else None


def on_sigterm():
    """Make SIGTERM and SIGHUP raise ``Terminated`` in the main thread (a second one while stopping is ignored), and
    note a Ctrl-C (``signalled``) before raising its KeyboardInterrupt as usual.
    -> a function that restores the previous handlers (a no-op outside the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        for s in STOP_SIGNALS:
            if s in previous:
                signal.signal(s, signal.SIG_IGN)  # let the first one finish writing the summary
        raise Terminated(f"stopped by {signal.Signals(signum).name}", signum)

    def on_sigint(signum, frame):
        _SIGINT["seen"] = True
        raise KeyboardInterrupt

    previous = {}
    for s, h in ((signal.SIGTERM, handler), (signal.SIGHUP, handler), (signal.SIGINT, on_sigint)):
        if s == signal.SIGTERM or signal.getsignal(s) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
            previous[s] = signal.signal(s, h)
    # watching either way: on_sigint notes a Ctrl-C, or SIGINT is ignored (a job started in the background,
    # `nohup cmd &`) and none can arrive, so a KeyboardInterrupt is certainly not one
    _SIGINT.update(watching=True, seen=False)

    def restore():
        _SIGINT["watching"] = False
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)

    return restore
