"""Is some process still writing this file? Asked the kernel, not guessed from timing.

Linux refuses a read lease (F_SETLEASE, F_RDLCK) with EAGAIN while any process holds the
file open for writing. Taking and dropping the lease at once answers the question
without blocking anyone for long. A lease break would send SIGIO, whose default action
kills the process, so leases are only used once `ignore_sigio()` ran in the main thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal

_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)


def ignore_sigio() -> None:
    """Call once from the main thread at start-up."""
    if hasattr(signal, "SIGIO"):
        signal.signal(signal.SIGIO, signal.SIG_IGN)


def being_written(path: str) -> bool:
    """True when another process holds `path` open for writing. False when it does not,
    or when leases are unavailable here (then timing alone decides)."""
    if not hasattr(signal, "SIGIO") or signal.getsignal(signal.SIGIO) is not signal.SIG_IGN:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return exc.errno == errno.EAGAIN
    else:
        fcntl.fcntl(fd, _F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)
