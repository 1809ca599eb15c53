"""Ctrl-C during training: remembered in a flag, so one that Python swallows still stops the run."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def interrupt_flag() -> Iterator[threading.Event | None]:
    """Remember a Ctrl-C (SIGINT) so that one that lands where Python swallows exceptions still stops.

    The usual ``KeyboardInterrupt`` is raised as before; if it arrives inside a finalizer (``__del__``
    of a loader iterator, say) Python only prints it, so the loop also checks the flag at epoch
    boundaries. Main thread only (where signal handlers live); elsewhere yields None.
    """
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    flag = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        flag.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def raise_if(flag: threading.Event | None) -> None:
    if flag is not None and flag.is_set():
        raise KeyboardInterrupt
