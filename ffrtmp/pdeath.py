"""Parent-death signals (Linux ``prctl(PR_SET_PDEATHSIG)``): a process that must never outlive
its parent asks the kernel to kill it when the parent goes. Only the standard library is
imported here, so a slot can call this before anything else."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal

PR_SET_PDEATHSIG = 1
_libc: ctypes.CDLL | None = None


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies. False off Linux."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def die_with(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Set the parent-death signal, then make sure the parent is still ``parent_pid``: if it
    died before the signal was set, nobody would ever send it, so exit now."""
    set_pdeathsig(sig)
    if os.getppid() != parent_pid:
        os._exit(0)
