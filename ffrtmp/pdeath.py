"""Parent-death signals (Linux ``prctl(PR_SET_PDEATHSIG)``): a process that must never outlive
its parent asks the kernel to kill it when the parent goes. Only the standard library is
imported here, so a slot can call this before anything else."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
# The C library this process already has loaded, looked up once at import: never in the child
# between fork and exec (where set_pdeathsig runs), and never with ctypes.util.find_library,
# which runs ldconfig (tens of milliseconds per FFmpeg start).
try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def set_pdeathsig(sig: int = signal.SIGKILL) -> bool:
    """Have the kernel send ``sig`` to this process when its parent dies. False off Linux."""
    return _prctl is not None and _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def die_with(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Set the parent-death signal, then make sure the parent is still ``parent_pid``: if it
    died before the signal was set, nobody would ever send it, so exit now."""
    set_pdeathsig(sig)
    if os.getppid() != parent_pid:
        os._exit(0)
